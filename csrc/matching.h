// Arithmetic shared by the CPU and CUDA kernels of cfbi_ops.
//
// Everything here is a small inline function usable from host and device code, so that the
// CPU tests exercise exactly the arithmetic the CUDA kernels run.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CFBI_HD __host__ __device__ __forceinline__
#else
#define CFBI_HD inline
#endif

namespace cfbi {

// Accumulation type: float for float / half / bfloat16 inputs, double for double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

// Index stored for "no candidate of this label in this window".
constexpr int32_t kNoCandidate = -1;

CFBI_HD float exp_(float x) { return expf(x); }
CFBI_HD double exp_(double x) { return exp(x); }

// Eq. (1) after the min: D = 1 - 2 / (1 + exp(d + b)) = 2 sigmoid(d + b) - 1.
template <typename A>
CFBI_HD A distance_to_score(A min_distance, A bias) {
  return A(1) - A(2) / (A(1) + exp_(min_distance + bias));
}

// d score / d (min_distance + bias), written with the score itself: 2 s (1 - s) with s = (score + 1) / 2.
template <typename A>
CFBI_HD A score_grad(A score) {
  return (A(1) + score) * (A(1) - score) * A(0.5);
}

// Score of a label that has no candidate: exactly 1 and no gradient.
template <typename A>
CFBI_HD A empty_score() { return A(1); }

// Label 0 (background) uses bg_bias, every other label fg_bias.
template <typename A>
CFBI_HD A label_bias(int64_t label, A fg_bias, A bg_bias) {
  return label == 0 ? bg_bias : fg_bias;
}

// A label value counts when it lies in [0, num_labels); anything else (e.g. 255) is ignored.
CFBI_HD bool is_valid_label(int64_t label, int64_t num_labels) {
  return label >= 0 && label < num_labels;
}

// NaN rule of every min (as torch.min): a NaN distance or score propagates, so it orders before every
// number; NaNs are equal among themselves. Written without std::isnan so that host and device share it.
template <typename A>
CFBI_HD bool is_nan_value(A value) { return value != value; }
template <typename A>
CFBI_HD bool nan_first_less(A a, A b) { return is_nan_value(a) ? !is_nan_value(b) : a < b; }

// Tie rule of every min: the smaller distance wins (a NaN before any number), equal distances (or two NaNs)
// go to the lower flattened candidate index. Candidates with kNoCandidate never win against a real one.
template <typename A>
CFBI_HD bool is_better(A dist, int64_t index, A best_dist, int64_t best_index) {
  if (best_index < 0) return index >= 0;
  if (index < 0) return false;
  if (nan_first_less(dist, best_dist)) return true;
  if (nan_first_less(best_dist, dist)) return false;
  return index < best_index;
}

// is_better's order as one unsigned 64-bit key (float scores, indices in [0, 2^31)): the score's bits made
// order-preserving in the high word, the index in the low word, so that the smaller key is the better pair
// and minima can be merged with an integer atomicMin in any order. -0 is folded into +0 (they compare
// equal as floats). A NaN (either sign) gets the smallest high word, as the NaN rule above orders it.
CFBI_HD uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}
CFBI_HD unsigned long long selection_key(float score, int64_t index) {
  const uint32_t bits = float_bits(score + 0.0f);
  const uint32_t ordered = is_nan_value(score) ? 0u : (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(ordered) << 32) | static_cast<uint32_t>(index);
}
CFBI_HD int64_t selection_key_index(unsigned long long key) { return static_cast<int64_t>(key & 0xffffffffull); }
// The key of "no candidate yet": larger than every real key.
constexpr unsigned long long kNoSelectionKey = ~0ull;

// The score of a selection key (the inverse of selection_key's high word; a NaN comes back as a NaN, and
// kNoSelectionKey, no candidate, as +inf).
CFBI_HD float selection_key_score(unsigned long long key) {
  const uint32_t ordered = static_cast<uint32_t>(key >> 32);
  const uint32_t bits = key == kNoSelectionKey ? 0x7f800000u
                        : ordered == 0u        ? 0x7fc00000u
                        : (ordered & 0x80000000u) ? (ordered & 0x7fffffffu)
                                                  : ~ordered;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// Rounding bound of the float32 dot-product selection (||q'||^2 + ||r'||^2 - 2 q'.r' of centred or raw values,
// CPU float32 / 16-bit and CUDA float32 / 16-bit). Each of its sums of c products errs by at most
// gamma_c = c u / (1 - c u) times the sum of the absolute products (u = 2^-24; Higham, Accuracy and Stability of
// Numerical Algorithms, 3.1), and sum |q'_k r'_k| <= ||q'|| ||r'||; centring q and r (rounded once each) and the
// two additions add a few u more. So a candidate's computed value is within (c + 4) u (||q'|| + ||r'||)^2 of its
// exact distance. Only a candidate at least as close as the winner can take its place, and such a candidate has
// ||r'|| <= ||q'|| + sqrt(d*) (d* the winner's distance), so one bound serves every candidate that matters:
//     bound = 2 (c + 4) u (||q'|| + min(R, ||q'|| + sqrt(d*)))^2,   R^2 = the largest ||r'||^2 of the label if known,
// doubled for the rounding of the bound's own inputs, fused or truncating accumulation (tensor cores) and the
// computed d*. Evaluated in double; an overflow gives +inf (never certain).
CFBI_HD float selection_error_bound(float query_norm_sq, float winner_distance, int64_t channels,
                                    float candidate_norm_sq = __builtin_huge_valf()) {
  const double u = 1.0 / 16777216.0;
  const double query_norm = sqrt(static_cast<double>(query_norm_sq));
  const double near = query_norm + sqrt(static_cast<double>(winner_distance));
  const double largest = sqrt(static_cast<double>(candidate_norm_sq));
  const double reach = query_norm + (largest < near ? largest : near);
  return static_cast<float>(2.0 * static_cast<double>(channels + 4) * u * reach * reach);
}

// A cheaper bound, without square roots: (a + min(b, a + c))^2 <= 2 a^2 + 2 min(b^2, 2 a^2 + 2 c^2), so this is at
// least selection_error_bound (about twice it at most), computed in float (an overflow gives +inf).
CFBI_HD float selection_error_bound_fast(float query_norm_sq, float winner_distance, int64_t channels,
                                         float candidate_norm_sq = __builtin_huge_valf()) {
  const float near = 2.0f * query_norm_sq + 2.0f * winner_distance;
  const float reach_sq = 2.0f * query_norm_sq + 2.0f * (candidate_norm_sq < near ? candidate_norm_sq : near);
  // 1 + 2^-10 covers this float evaluation's own rounding where the inequality is tight (a = min(b, a + c)).
  return 2.0009765625f * static_cast<float>(channels + 4) * (1.0f / 16777216.0f) * reach_sq;
}

// Whether the dot-product selection's winner (computed value best) is the exact-distance winner for certain: every
// other candidate's computed value (the smallest is second; +inf when there is none) lies more than two bounds
// above. A NaN or infinite bound or value is never certain (the caller then scans with exact distances), except a
// missing second candidate with a finite bound.
CFBI_HD bool selection_is_certain(float best, float second, float bound) {
  if (!(best - best == 0.0f)) return false;  // NaN or infinite
  return second - best > 2.0f * bound;
}

// Whether a (query, label) of the dot-product selection must be scanned again with exact distances: the cheap bound
// first (it almost always settles it, the gap being far above the rounding), the sharper one only when it does not.
CFBI_HD bool selection_needs_exact_scan(float best, float second, float query_norm_sq, float winner_distance,
                                        int64_t channels, float candidate_norm_sq = __builtin_huge_valf()) {
  if (selection_is_certain(best, second,
                           selection_error_bound_fast(query_norm_sq, winner_distance, channels, candidate_norm_sq))) {
    return false;
  }
  return !selection_is_certain(best, second,
                               selection_error_bound(query_norm_sq, winner_distance, channels, candidate_norm_sq));
}

// ceil(n / d) for n >= 0, d >= 1, without the overflow of n + d - 1.
CFBI_HD int64_t ceil_div(int64_t n, int64_t d) { return n == 0 ? 0 : (n - 1) / d + 1; }

// Centre of the float32 dot-product selection (CPU float32 / float16 / bfloat16, CUDA float32). The selection
// ranks ||q'||^2 + ||r'||^2 - 2 q'.r' with q' = q - m, r' = r - m: equal to ||q - r||^2 for any m, but it
// cancels when the terms are large next to the distance (embeddings that share an offset). With m near the kept
// candidates' per-channel mean the terms are of the size of the spread of the embeddings, not of their offset.
// m is the mean rounded to a multiple of a power of two 2^p <= spread / 16: close enough to the mean, and with
// few significant bits, so that data on a coarse grid (small integers, where distances tie exactly) stay on a
// grid after centring and keep their exact ties. Non-finite values are left out, so that a NaN or inf candidate
// reaches no other label.
CFBI_HD bool counts_for_centre(double value) { return value - value == 0.0; }  // finite
// m of one channel, from the sum, the sum of squares (in double, in a fixed order) and the count of its finite
// values.
CFBI_HD float selection_centre(double sum, double sum_squares, int64_t count) {
  if (count == 0) return 0.0f;
  const double mean = sum / static_cast<double>(count);
  const double variance = sum_squares / static_cast<double>(count) - mean * mean;
  if (!(variance > 0.0)) return static_cast<float>(mean);  // one value (or cancellation): the mean itself
  const double step = exp2(floor(0.5 * log2(variance)) - 4.0);  // 2^p <= spread / 16
  return static_cast<float>(floor(mean / step + 0.5) * step);
}

// Global atrous rule (eq. 8-9): a candidate at (y, x) of its frame counts when it lies on the atrous
// grid, or when its label is small (at most min_pixels * atrous^2 pixels in that frame, min_pixels > 0).
// The product can overflow int64 (min_pixels 2^62, atrous 2); n <= m a^2 <=> ceil(ceil(n / a) / a) <= m cannot.
CFBI_HD bool keeps_global_candidate(int64_t y, int64_t x, int64_t atrous, int64_t label_pixels,
                                    int64_t min_pixels) {
  if (atrous <= 1) return true;
  if (y % atrous == 0 && x % atrous == 0) return true;
  return min_pixels > 0 && ceil_div(ceil_div(label_pixels, atrous), atrous) <= min_pixels;
}

// Local windows: window k with atrous r holds the offsets (i r, j r) with |i|, |j| <= k / r.
CFBI_HD int64_t window_radius(int64_t window, int64_t atrous) { return window / atrous; }

// The radius clamped to the frame: beyond (max(H, W) - 1) / r steps every offset falls outside, so the
// window holds the same candidates. Everything sized from a radius uses this one (no allocation grows with
// the window value, and no index arithmetic overflows).
CFBI_HD int64_t frame_window_radius(int64_t window, int64_t atrous, int64_t height, int64_t width) {
  const int64_t radius = window_radius(window, atrous);
  const int64_t reach = ((height > width ? height : width) - 1) / atrous;
  return radius < reach ? radius : (reach > 0 ? reach : 0);
}

// The ring of an offset (i, j) in atrous steps: the smallest radius whose window holds it.
CFBI_HD int64_t offset_ring(int64_t i, int64_t j) {
  const int64_t ai = i < 0 ? -i : i;
  const int64_t aj = j < 0 ? -j : j;
  return ai > aj ? ai : aj;
}

// One step of a squared distance: sum + diff * diff, rounded after the product and after the sum.
// Device code would otherwise contract it into a fused multiply-add; with both roundings the CPU and
// CUDA kernels compute bit-identical distances (and so pick the same argmin).
CFBI_HD float add_square(float sum, float diff) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(sum, __fmul_rn(diff, diff));
#else
  return sum + diff * diff;
#endif
}
CFBI_HD double add_square(double sum, double diff) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(sum, __dmul_rn(diff, diff));
#else
  return sum + diff * diff;
#endif
}

// Squared L2 distance between two strided vectors of length c, accumulated in A, channel by channel.
template <typename T, typename A = acc_t<T>>
CFBI_HD A squared_distance(const T* a, int64_t a_stride, const T* b, int64_t b_stride, int64_t c) {
  A sum = A(0);
  for (int64_t k = 0; k < c; ++k) {
    sum = add_square(sum, static_cast<A>(a[k * a_stride]) - static_cast<A>(b[k * b_stride]));
  }
  return sum;
}

// Background map of label l: the min over the other labels' scores (with L == 1 it is the score
// itself). Given the smallest score (at the lowest label first_label) and the second smallest
// (at second_label), it is the smallest unless l is first_label. Returns the label it comes from.
CFBI_HD int64_t background_source(int64_t label, int64_t first_label, int64_t second_label) {
  if (second_label < 0) return label;  // a single label
  return label == first_label ? second_label : first_label;
}

// Running "two smallest" over labels in increasing order; ties keep the lower label.
template <typename A>
struct TwoSmallest {
  A first_value = A(0), second_value = A(0);
  int64_t first = -1, second = -1;

  CFBI_HD void push(A value, int64_t label) {
    if (first < 0 || nan_first_less(value, first_value)) {
      second = first;
      second_value = first_value;
      first = label;
      first_value = value;
    } else if (second < 0 || nan_first_less(value, second_value)) {
      second = label;
      second_value = value;
    }
  }
};

// Epilogue of one query pixel (and one window): turns the per-label min distances into the fg scores,
// the background maps and the saved argmin. Inputs indexed by label with stride in_stride (best_index may
// be the argmin output itself); outputs strided by `stride`.
template <typename T, typename A, typename I>
CFBI_HD void write_pixel_scores_strided(const A* best_dist, const I* best_index, int64_t in_stride,
                                        int64_t num_labels, A fg_bias, A bg_bias, T* fg, T* bg, int32_t* argmin,
                                        int64_t stride) {
  TwoSmallest<A> smallest;
  for (int64_t l = 0; l < num_labels; ++l) {
    const int64_t index = static_cast<int64_t>(best_index[l * in_stride]);
    const bool found = index >= 0;
    const T score = static_cast<T>(found ? distance_to_score(best_dist[l * in_stride], label_bias(l, fg_bias, bg_bias))
                                         : empty_score<A>());
    fg[l * stride] = score;
    argmin[l * stride] = found ? static_cast<int32_t>(index) : kNoCandidate;
    smallest.push(static_cast<A>(score), l);
  }
  for (int64_t l = 0; l < num_labels; ++l) {
    const int64_t source = background_source(l, smallest.first, smallest.second);
    bg[l * stride] = fg[source * stride];
  }
}

// The same with the per-label minima in contiguous arrays.
template <typename T, typename A>
CFBI_HD void write_pixel_scores(const A* best_dist, const int64_t* best_index, int64_t num_labels,
                                A fg_bias, A bg_bias, T* fg, T* bg, int32_t* argmin, int64_t stride) {
  write_pixel_scores_strided<T, A, int64_t>(best_dist, best_index, 1, num_labels, fg_bias, bg_bias, fg, bg,
                                            argmin, stride);
}

// The slope d score / d (min distance + bias) of label l's entry, from its stored score: exact for float32 and
// float64, whose stored score is the computed one.
struct ScoreSlope {
  template <typename A>
  CFBI_HD A operator()(int64_t, A score) const { return score_grad(score); }
};

// The same for float16 / bfloat16: the stored score keeps too few bits of 1 + s near s = -1 (large negative
// biases), so the score is recomputed in A from the selected candidate's distance and the bias.
template <typename T, typename A>
struct DistanceSlope {
  const T* query;          // channel c of this query pixel at query[c * query_stride]
  int64_t query_stride;
  const T* candidates;     // channel c of candidate m at candidates[c * candidate_stride + m]
  int64_t candidate_stride;
  int64_t channels;
  const int32_t* argmin;   // strided like the outputs
  int64_t stride;
  A fg_bias, bg_bias;

  CFBI_HD A operator()(int64_t label, A) const {
    const A d = squared_distance<T, A>(query, query_stride, candidates + argmin[label * stride], candidate_stride,
                                       channels);
    return score_grad(distance_to_score(d, label_bias(label, fg_bias, bg_bias)));
  }
};

// Backward epilogue of one query pixel (and one window): the gradient with respect to
// (min distance + bias) of every label, from the gradients of fg and bg. Labels without a
// candidate get 0. coef is strided like the outputs.
template <typename T, typename A, typename Slope>
CFBI_HD void pixel_distance_grads(const T* grad_fg, const T* grad_bg, const T* fg, const int32_t* argmin,
                                  int64_t num_labels, int64_t stride, A* coef, const Slope& slope) {
  TwoSmallest<A> smallest;
  for (int64_t l = 0; l < num_labels; ++l) {
    smallest.push(static_cast<A>(fg[l * stride]), l);
    coef[l * stride] = static_cast<A>(grad_fg[l * stride]);
  }
  for (int64_t l = 0; l < num_labels; ++l) {
    const int64_t source = background_source(l, smallest.first, smallest.second);
    coef[source * stride] += static_cast<A>(grad_bg[l * stride]);
  }
  for (int64_t l = 0; l < num_labels; ++l) {
    coef[l * stride] = argmin[l * stride] < 0 ? A(0) : coef[l * stride] * slope(l, static_cast<A>(fg[l * stride]));
  }
}

template <typename T, typename A>
CFBI_HD void pixel_distance_grads(const T* grad_fg, const T* grad_bg, const T* fg, const int32_t* argmin,
                                  int64_t num_labels, int64_t stride, A* coef) {
  pixel_distance_grads<T, A, ScoreSlope>(grad_fg, grad_bg, fg, argmin, num_labels, stride, coef, ScoreSlope{});
}

}  // namespace cfbi
