// CPU forward of cfbi::local_match: nearest neighbour of each label inside nested windows of the
// previous frame. The largest window is scanned once; each offset updates the minimum of its ring
// (Chebyshev radius in atrous steps) and the windows are prefix minima over the rings.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../matching.h"
#include "backward_cpu.h"
#include "simd.h"

namespace cfbi {
namespace {

template <typename scalar_t>
void local_match_batch(const scalar_t* query_cl, const scalar_t* previous_cl, const int64_t* labels,
                       int64_t height, int64_t width, int64_t channels, int64_t num_labels,
                       const std::vector<int64_t>& radii, int64_t atrous, acc_t<scalar_t> fg_bias,
                       acc_t<scalar_t> bg_bias, scalar_t* fg, scalar_t* bg, int32_t* argmin) {
  using A = acc_t<scalar_t>;
  const int64_t pixels = height * width;
  const int64_t num_windows = static_cast<int64_t>(radii.size());
  const int64_t max_radius = *std::max_element(radii.begin(), radii.end());
  const int64_t rings = max_radius + 1;
  torch::stable::parallel_for(0, pixels, 16, [&](int64_t begin, int64_t end) {
    std::vector<A> ring_dist(num_labels * rings);
    std::vector<int64_t> ring_index(num_labels * rings);
    std::vector<A> window_dist(num_labels);
    std::vector<int64_t> window_index(num_labels);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t y = p / width, x = p % width;
      const scalar_t* q = query_cl + p * channels;
      std::fill(ring_index.begin(), ring_index.end(), int64_t(kNoCandidate));
      // Offsets in row-major order: flattened candidate indices increase, so "<" keeps the lowest.
      for (int64_t i = -max_radius; i <= max_radius; ++i) {
        const int64_t yy = y + i * atrous;
        if (yy < 0 || yy >= height) continue;
        for (int64_t j = -max_radius; j <= max_radius; ++j) {
          const int64_t xx = x + j * atrous;
          if (xx < 0 || xx >= width) continue;
          const int64_t candidate = yy * width + xx;
          const int64_t label = labels[candidate];
          if (!is_valid_label(label, num_labels)) continue;
          const A d = squared_distance<scalar_t, A>(q, 1, previous_cl + candidate * channels, 1, channels);
          const int64_t slot = label * rings + offset_ring(i, j);
          if (is_better(d, candidate, ring_dist[slot], ring_index[slot])) {
            ring_dist[slot] = d;
            ring_index[slot] = candidate;
          }
        }
      }
      // Prefix minima over rings: after this, slot (l, r) holds the best of window radius r.
      for (int64_t l = 0; l < num_labels; ++l) {
        for (int64_t r = 1; r < rings; ++r) {
          const int64_t prev = l * rings + r - 1, cur = l * rings + r;
          if (is_better(ring_dist[prev], ring_index[prev], ring_dist[cur], ring_index[cur])) {
            ring_dist[cur] = ring_dist[prev];
            ring_index[cur] = ring_index[prev];
          }
        }
      }
      for (int64_t w = 0; w < num_windows; ++w) {
        for (int64_t l = 0; l < num_labels; ++l) {
          window_dist[l] = ring_dist[l * rings + radii[w]];
          window_index[l] = ring_index[l * rings + radii[w]];
        }
        const int64_t out = w * pixels + p;  // [L, K, H, W] with label stride K * pixels
        write_pixel_scores<scalar_t, A>(window_dist.data(), window_index.data(), num_labels, fg_bias, bg_bias,
                                        fg + out, bg + out, argmin + out, num_windows * pixels);
      }
    }
  });
}

// float32, float16, bfloat16 (computed in float32: 16-bit values are converted as the sub-grid copies below are
// made): the atrous grid splits into atrous^2 independent dense sub-grids (offsets are multiples of the
// rate). In each, a query row is compared with whole previous-frame rows at once (vectorised over x for
// every horizontal offset), then each candidate updates the minimum of its (label, ring).
template <typename In>
void local_match_batch_float(const In* query, const In* previous, const int64_t* labels, int64_t height,
                             int64_t width, int64_t channels, int64_t num_labels, const std::vector<int64_t>& radii,
                             int64_t atrous, float fg_bias, float bg_bias, In* fg, In* bg, int32_t* argmin) {
  const int64_t pixels = height * width;
  const int64_t num_windows = static_cast<int64_t>(radii.size());
  const int64_t radius = *std::max_element(radii.begin(), radii.end());
  const int64_t rings = radius + 1, span = 2 * radius + 1;
  const SimdKernels& simd = simd_kernels();
  const int64_t kLanes = simd.lanes;
  for (int64_t sy = 0; sy < std::min(atrous, height); ++sy) {
    for (int64_t sx = 0; sx < std::min(atrous, width); ++sx) {
      const int64_t sub_h = (height - sy + atrous - 1) / atrous, sub_w = (width - sx + atrous - 1) / atrous;
      // De-interleaved copies of this sub-grid, rows padded by `radius` on both sides (and up to a multiple of
      // kLanes), so the vector loops need no bounds: padding labels are -1, never a candidate.
      const int64_t vec_w = (sub_w + kLanes - 1) / kLanes * kLanes;
      const int64_t row_stride = vec_w + 2 * radius, plane = sub_h * row_stride;
      std::vector<float> sub_query(channels * plane, 0.0f), sub_previous(channels * plane, 0.0f);
      std::vector<int32_t> sub_labels(plane, -1);
      for (int64_t i = 0; i < sub_h; ++i) {
        for (int64_t j = 0; j < sub_w; ++j) {
          const int64_t src = (sy + i * atrous) * width + sx + j * atrous, dst = i * row_stride + radius + j;
          sub_labels[dst] = is_valid_label(labels[src], num_labels) ? static_cast<int32_t>(labels[src]) : -1;
          for (int64_t c = 0; c < channels; ++c) {
            sub_query[c * plane + dst] = static_cast<float>(query[c * pixels + src]);
            sub_previous[c * plane + dst] = static_cast<float>(previous[c * pixels + src]);
          }
        }
      }
      torch::stable::parallel_for(0, sub_h, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> dist(span * vec_w);
        // [label][ring][x]: the best candidate of each (label, ring) for every query pixel x of the row.
        std::vector<float> ring_dist(num_labels * rings * vec_w);
        std::vector<int32_t> ring_index(num_labels * rings * vec_w);
        std::vector<float> window_dist(num_labels);
        std::vector<int64_t> window_index(num_labels);
        for (int64_t i = begin; i < end; ++i) {
          std::fill(ring_dist.begin(), ring_dist.end(), std::numeric_limits<float>::infinity());
          std::fill(ring_index.begin(), ring_index.end(), kNoCandidate);
          // (dy, dx) in row-major order visits candidates by increasing index: "<" keeps the lowest on ties.
          for (int64_t dy = -radius; dy <= radius; ++dy) {
            const int64_t ii = i + dy;
            if (ii < 0 || ii >= sub_h) continue;
            simd.local_row_distances(sub_query.data() + i * row_stride + radius,
                                     sub_previous.data() + ii * row_stride + radius, plane, channels, vec_w, radius,
                                     dist.data());
            const int32_t* row_labels = sub_labels.data() + ii * row_stride + radius;
            const int64_t row_start = (sy + ii * atrous) * width + sx;
            for (int64_t dx = -radius; dx <= radius; ++dx) {
              const int64_t ring_offset = offset_ring(dy, dx) * vec_w;
              simd.local_ring_update(dist.data() + (dx + radius) * vec_w, row_labels + dx, vec_w, num_labels,
                                     rings * vec_w, static_cast<int32_t>(row_start + dx * atrous),
                                     static_cast<int32_t>(atrous), ring_dist.data() + ring_offset,
                                     ring_index.data() + ring_offset);
            }
          }
          for (int64_t x = 0; x < sub_w; ++x) {
            const int64_t p = (sy + i * atrous) * width + sx + x * atrous;
            for (int64_t l = 0; l < num_labels; ++l) {  // prefix minima over rings
              for (int64_t r = 1; r < rings; ++r) {
                const int64_t prev = (l * rings + r - 1) * vec_w + x, cur = prev + vec_w;
                if (is_better(ring_dist[prev], ring_index[prev], ring_dist[cur], ring_index[cur])) {
                  ring_dist[cur] = ring_dist[prev];
                  ring_index[cur] = ring_index[prev];
                }
              }
            }
            for (int64_t w = 0; w < num_windows; ++w) {
              for (int64_t l = 0; l < num_labels; ++l) {
                const int64_t slot = (l * rings + radii[w]) * vec_w + x;
                window_dist[l] = ring_dist[slot];
                window_index[l] = ring_index[slot];  // int32 -> int64
              }
              const int64_t out = w * pixels + p;
              write_pixel_scores<In, float>(window_dist.data(), window_index.data(), num_labels, fg_bias, bg_bias,
                                               fg + out, bg + out, argmin + out, num_windows * pixels);
            }
          }
        }
      });
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> local_match_cpu(const Tensor& query, const Tensor& previous,
                                                   const Tensor& prev_labels, int64_t num_labels,
                                                   const Tensor& fg_bias, const Tensor& bg_bias,
                                                   std::vector<int64_t> windows, int64_t atrous) {
  check_local_args(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous);
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t height = query.size(2), width = query.size(3), pixels = height * width;
  const int64_t num_windows = static_cast<int64_t>(windows.size());
  std::vector<int64_t> radii;
  for (const int64_t w : windows) radii.push_back(frame_window_radius(w, atrous, height, width));
  const Tensor labels = dense(to_dtype(prev_labels, ScalarType::Long));
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, num_windows, height, width};
  Tensor fg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor bg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor argmin = empty_output(out_sizes, ScalarType::Int, query, num_labels);

  CFBI_DISPATCH_FLOATING_AND_HALF(query.scalar_type(), "local_match_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A fg_b = host_scalar<A>(fg_bias), bg_b = host_scalar<A>(bg_bias);
    const int64_t out_batch = num_labels * num_windows * pixels;
    const Tensor query_c = dense(query), previous_c = dense(previous);
    // Non-finite embeddings take the exact scan below, which applies the NaN rule of matching.h.
    const bool finite = all_finite(query_c.const_data_ptr<scalar_t>(), query_c.numel()) &&
                        all_finite(previous_c.const_data_ptr<scalar_t>(), previous_c.numel());
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (finite) {
        for (int64_t b = 0; b < batch; ++b) {
          local_match_batch_float<scalar_t>(query_c.const_data_ptr<scalar_t>() + b * channels * pixels,
                                            previous_c.const_data_ptr<scalar_t>() + b * channels * pixels,
                                            labels.const_data_ptr<int64_t>() + b * pixels, height, width, channels,
                                            num_labels, radii, atrous, fg_b, bg_b,
                                            fg.mutable_data_ptr<scalar_t>() + b * out_batch,
                                            bg.mutable_data_ptr<scalar_t>() + b * out_batch,
                                            argmin.mutable_data_ptr<int32_t>() + b * out_batch);
        }
        return;
      }
    }
    const Tensor query_cl = dense(torch::stable::permute(query, {0, 2, 3, 1}));
    const Tensor previous_cl = dense(torch::stable::permute(previous, {0, 2, 3, 1}));
    for (int64_t b = 0; b < batch; ++b) {
      local_match_batch<scalar_t>(query_cl.const_data_ptr<scalar_t>() + b * pixels * channels,
                                  previous_cl.const_data_ptr<scalar_t>() + b * pixels * channels,
                                  labels.const_data_ptr<int64_t>() + b * pixels, height, width, channels, num_labels,
                                  radii, atrous, fg_b, bg_b, fg.mutable_data_ptr<scalar_t>() + b * out_batch,
                                  bg.mutable_data_ptr<scalar_t>() + b * out_batch,
                                  argmin.mutable_data_ptr<int32_t>() + b * out_batch);
    }
  });
  return {fg, bg, argmin};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> local_match_backward_cpu(
    const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin, const Tensor& query,
    const Tensor& previous, const Tensor& fg_bias, const Tensor& bg_bias, bool /*deterministic: always*/) {
  CFBI_CHECK(same_sizes(previous, query), "previous must have the shape of query");
  const Tensor candidates = reshaped(previous, {previous.size(0), previous.size(1), previous.size(2) * previous.size(3)});
  check_backward_args(grad_fg, grad_bg, fg, argmin, query, candidates);
  check_argmin_range(argmin, candidates);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] =
      matching_backward_cpu(grad_fg, grad_bg, fg, argmin, query, candidates, fg_bias, bg_bias);
  return {like_input(grad_query, query), like_input(torch::stable::view(grad_candidates, previous.sizes()), previous),
          grad_fg_bias, grad_bg_bias};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cfbi, CPU, m) {
  m.impl("local_match", TORCH_BOX(&local_match_cpu));
  m.impl("local_match_backward", TORCH_BOX(&local_match_backward_cpu));
}

}  // namespace cfbi
