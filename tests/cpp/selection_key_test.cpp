// selection_key (csrc/matching.h) must order (score, index) pairs exactly as is_better does, so that the
// CUDA global kernel's atomicMin merge picks the same winner as a sequential scan. Exits 1 on a mismatch.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "matching.h"

int main() {
  using cfbi::is_better;
  using cfbi::selection_key;
  const float inf = std::numeric_limits<float>::infinity();
  const float tiny = std::numeric_limits<float>::denorm_min();
  std::vector<float> scores = {0.0f, -0.0f, tiny, -tiny, 1.0f, -1.0f, 1.5f, -1.5f, 3e38f, -3e38f, inf, -inf,
                               std::nextafter(1.0f, 2.0f), std::nextafter(1.0f, 0.0f), 1e-30f, -1e-30f};
  std::vector<int64_t> indices = {0, 1, 2, 7, 1000, 2147483646, 2147483647};
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-10.0f, 10.0f);
  std::uniform_int_distribution<int64_t> any_index(0, 2147483647);
  for (int i = 0; i < 200; ++i) scores.push_back(uniform(rng));
  for (int i = 0; i < 20; ++i) indices.push_back(any_index(rng));

  long checks = 0, failures = 0;
  for (float s1 : scores)
    for (float s2 : scores)
      for (int64_t i1 : indices)
        for (int64_t i2 : indices) {
          const bool by_rule = is_better(s1, i1, s2, i2);
          const bool by_key = selection_key(s1, i1) < selection_key(s2, i2);
          ++checks;
          if (by_rule != by_key && ++failures <= 10) {
            std::printf("mismatch: (%g, %lld) vs (%g, %lld): rule %d key %d\n", s1, static_cast<long long>(i1), s2,
                        static_cast<long long>(i2), by_rule, by_key);
          }
          if (cfbi::selection_key_index(selection_key(s1, i1)) != i1) ++failures;
          if (!(selection_key(s1, i1) < cfbi::kNoSelectionKey)) ++failures;
        }
  std::printf("%ld checks, %ld failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
