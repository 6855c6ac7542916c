// The rounding bound of the float32 dot-product selection (csrc/matching.h): selection_error_bound must bound the
// error of ||q'||^2 + ||r'||^2 - 2 q'.r' (centred as the kernels centre, summed in float as they sum) against the
// exact ||q - r||^2, for every candidate that could take the winner's place, over embeddings with offsets and
// outliers, and selection_error_bound_fast must be at least it; selection_key_score must invert selection_key;
// selection_is_certain must refuse non-finite values.
// Exits 1 on a failure.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "matching.h"

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  long checks = 0, failures = 0;
  auto fail = [&](const char* what, double a, double b) {
    if (++failures <= 10) std::printf("%s: %g vs %g\n", what, a, b);
  };

  // selection_key_score inverts selection_key (-0 folds into +0, a NaN stays a NaN).
  for (float s : {0.0f, -0.0f, 1.0f, -1.0f, 3e38f, -3e38f, inf, -inf, 1e-30f, -1e-30f, 0.1f, -7.25f}) {
    const float back = cfbi::selection_key_score(cfbi::selection_key(s, 5));
    ++checks;
    if (!(back == s)) fail("selection_key_score", back, s);
  }
  ++checks;
  if (!std::isnan(cfbi::selection_key_score(cfbi::selection_key(nan, 3)))) fail("NaN key", 0, 0);
  ++checks;  // no second candidate: the gap is infinite
  if (!(cfbi::selection_key_score(cfbi::kNoSelectionKey) == inf)) fail("kNoSelectionKey", 0, 0);

  // selection_is_certain: a gap above two bounds, finite values only (a missing second candidate is +inf).
  const bool certain[] = {cfbi::selection_is_certain(1.0f, 1.5f, 0.2f), cfbi::selection_is_certain(1.0f, inf, 0.2f),
                          !cfbi::selection_is_certain(1.0f, 1.3f, 0.2f), !cfbi::selection_is_certain(1.0f, inf, inf),
                          !cfbi::selection_is_certain(nan, 2.0f, 0.1f), !cfbi::selection_is_certain(1.0f, nan, 0.1f),
                          !cfbi::selection_is_certain(1.0f, 2.0f, nan), !cfbi::selection_is_certain(inf, inf, 0.0f),
                          !cfbi::selection_is_certain(1.0f, 1.0f, 0.0f)};
  for (bool ok : certain) {
    ++checks;
    if (!ok) fail("selection_is_certain", 0, 0);
  }

  // The bound, per candidate: |computed - exact| <= selection_error_bound(||q'||^2, d, c, ||r'||^2) with d the
  // candidate's own exact distance (any candidate that could win has d <= d*, and the bound grows with d).
  std::mt19937 rng(0);
  std::normal_distribution<double> normal(0.0, 1.0);
  double worst = 0.0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int channels = 1 + trial % 130;
    const double sigma = std::pow(10.0, -3 + trial % 5), offset = (trial % 3) * std::pow(10.0, trial % 4);
    const int count = 40;
    std::vector<float> values((count + 1) * channels);
    for (float& v : values) v = static_cast<float>(offset + sigma * normal(rng));
    if (trial % 4 == 0) values[1 + (trial * 7919) % (count * channels)] = static_cast<float>(std::pow(10.0, trial % 31));
    const float* q = values.data();
    // The centre of the kernels: from the candidates' sums in double.
    std::vector<float> centre(channels);
    for (int c = 0; c < channels; ++c) {
      double sum = 0, sum_squares = 0;
      for (int k = 1; k <= count; ++k) {
        sum += values[k * channels + c];
        sum_squares += double(values[k * channels + c]) * values[k * channels + c];
      }
      centre[c] = cfbi::selection_centre(sum, sum_squares, count);
    }
    float query_norm = 0.0f;
    for (int c = 0; c < channels; ++c) query_norm += (q[c] - centre[c]) * (q[c] - centre[c]);
    for (int k = 1; k <= count; ++k) {
      const float* r = values.data() + k * channels;
      float norm = 0.0f, dot = 0.0f;
      double exact = 0.0;
      for (int c = 0; c < channels; ++c) {
        const float rc = r[c] - centre[c], qc = q[c] - centre[c];
        norm += rc * rc;
        dot += qc * rc;
        exact += (double(q[c]) - r[c]) * (double(q[c]) - r[c]);
      }
      const float computed = (norm + query_norm) - 2.0f * dot;
      const float bound = cfbi::selection_error_bound(query_norm, static_cast<float>(exact), channels, norm);
      if (!std::isfinite(computed) || !std::isfinite(bound)) continue;  // never certain: the exact scan decides
      const float fast = cfbi::selection_error_bound_fast(query_norm, static_cast<float>(exact), channels, norm);
      checks += 2;
      if (!(fast >= bound)) fail("fast bound below the bound", fast, bound);
      const double error = std::fabs(double(computed) - exact);
      if (error > bound) fail("bound", error, bound);
      if (bound > 0) worst = std::max(worst, error / bound);
    }
  }
  std::printf("%ld checks, %ld failures (largest error / bound %.3g)\n", checks, failures, worst);
  return failures == 0 ? 0 : 1;
}
