// Backward of both matching ops on CPU. Gradients flow through the argmin candidate only.
#include "backward_cpu.h"

#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../matching.h"

namespace cfbi {
namespace {

// E: the type the embeddings are read in (scalar_t, or float for 16-bit inputs converted once).
template <typename scalar_t, typename E = scalar_t>
void backward_kernel(const scalar_t* grad_fg, const scalar_t* grad_bg, const scalar_t* fg, const int32_t* argmin,
                     const E* query, const E* candidates, int64_t batch, int64_t num_labels,
                     int64_t windows, int64_t pixels, int64_t channels, int64_t num_candidates,
                     acc_t<scalar_t> fg_bias, acc_t<scalar_t> bg_bias, scalar_t* grad_query,
                     scalar_t* grad_candidates, scalar_t* grad_fg_bias, scalar_t* grad_bg_bias) {
  using A = acc_t<scalar_t>;
  const int64_t plane = windows * pixels;  // stride between labels
  const int64_t per_batch = num_labels * plane;

  // 1. d loss / d (min distance + bias) of every output entry.
  std::vector<A> coef(batch * per_batch);
  torch::stable::parallel_for(0, batch * plane, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / plane, offset = b * per_batch + i % plane;
      if constexpr (std::is_same_v<scalar_t, A>) {
        pixel_distance_grads<scalar_t, A>(grad_fg + offset, grad_bg + offset, fg + offset, argmin + offset,
                                          num_labels, plane, coef.data() + offset);
      } else {  // float16 / bfloat16: the slope from the score recomputed in float
        const DistanceSlope<E, A> slope{query + b * channels * pixels + (i % plane) % pixels, pixels,
                                               candidates + b * channels * num_candidates, num_candidates, channels,
                                               argmin + offset, plane, fg_bias, bg_bias};
        pixel_distance_grads<scalar_t, A>(grad_fg + offset, grad_bg + offset, fg + offset, argmin + offset,
                                          num_labels, plane, coef.data() + offset, slope);
      }
    }
  });

  // 2. Bias gradients: one sequential sum per (b, l) row, rows added in order.
  std::vector<A> row_sums(batch * num_labels);
  torch::stable::parallel_for(0, batch * num_labels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      A sum = A(0);
      for (int64_t i = 0; i < plane; ++i) sum += coef[row * plane + i];
      row_sums[row] = sum;
    }
  });
  A fg_sum = A(0), bg_sum = A(0);
  for (int64_t row = 0; row < batch * num_labels; ++row) {
    (row % num_labels == 0 ? bg_sum : fg_sum) += row_sums[row];
  }
  *grad_fg_bias = static_cast<scalar_t>(fg_sum);
  *grad_bg_bias = static_cast<scalar_t>(bg_sum);

  // 3. Query gradient: each query pixel gathers from its selected candidates (d/dq ||q - r||^2 = 2 (q - r)).
  torch::stable::parallel_for(0, batch * pixels, 16, [&](int64_t begin, int64_t end) {
    std::vector<A> grad(channels);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / pixels, p = i % pixels;
      const E* q = query + b * channels * pixels + p;
      const E* cands = candidates + b * channels * num_candidates;
      std::fill(grad.begin(), grad.end(), A(0));
      for (int64_t e = b * per_batch + p; e < (b + 1) * per_batch; e += pixels) {
        const A c = coef[e];
        if (c == A(0)) continue;
        const E* r = cands + argmin[e];
        for (int64_t ch = 0; ch < channels; ++ch) {
          grad[ch] += A(2) * c * (static_cast<A>(q[ch * pixels]) - static_cast<A>(r[ch * num_candidates]));
        }
      }
      for (int64_t ch = 0; ch < channels; ++ch) {
        grad_query[b * channels * pixels + ch * pixels + p] = static_cast<scalar_t>(grad[ch]);
      }
    }
  });

  // 4. Candidate gradient: one task per (b, block of channels) walks the entries of b in a fixed order, so
  //    there is no race and the sum order never depends on the thread count. A block of channels per walk
  //    reads coef and argmin once for kChannelBlock channels.
  constexpr int64_t kChannelBlock = 8;
  const int64_t channel_blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  torch::stable::parallel_for(0, batch * channel_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> grad(kChannelBlock * num_candidates);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / channel_blocks, c0 = (i % channel_blocks) * kChannelBlock;
      const int64_t width = std::min(kChannelBlock, channels - c0);
      const E* q = query + (b * channels + c0) * pixels;             // channel c0 + k at q[k * pixels]
      const E* r = candidates + (b * channels + c0) * num_candidates;  // ... at r[k * num_candidates]
      std::fill(grad.begin(), grad.end(), A(0));
      const A* coef_b = coef.data() + b * per_batch;
      const int32_t* argmin_b = argmin + b * per_batch;
      for (int64_t row = 0; row < num_labels * windows; ++row) {
        for (int64_t p = 0; p < pixels; ++p) {
          const A c = coef_b[row * pixels + p];
          if (c == A(0)) continue;
          const int64_t a = argmin_b[row * pixels + p];
          for (int64_t k = 0; k < width; ++k) {
            grad[k * num_candidates + a] -=
                A(2) * c * (static_cast<A>(q[k * pixels + p]) - static_cast<A>(r[k * num_candidates + a]));
          }
        }
      }
      scalar_t* out = grad_candidates + (b * channels + c0) * num_candidates;
      for (int64_t k = 0; k < width * num_candidates; ++k) out[k] = static_cast<scalar_t>(grad[k]);
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> matching_backward_cpu(const Tensor& grad_fg, const Tensor& grad_bg,
                                                                 const Tensor& fg, const Tensor& argmin,
                                                                 const Tensor& query, const Tensor& candidates,
                                                                 const Tensor& fg_bias, const Tensor& bg_bias) {
  const BackwardProblem pb = prepare_backward(grad_fg, grad_bg, fg, argmin, query, candidates);
  if (pb.empty) return pb.gradients();
  // 16-bit embeddings are converted to float32 once: the gradient loops read every one of them per selected entry.
  const bool wide = pb.query.scalar_type() == ScalarType::Half || pb.query.scalar_type() == ScalarType::BFloat16;
  const Tensor query_f = wide ? to_dtype(pb.query, ScalarType::Float) : pb.query;
  const Tensor candidates_f = wide ? to_dtype(pb.candidates, ScalarType::Float) : pb.candidates;
  CFBI_DISPATCH_FLOATING_AND_HALF(query.scalar_type(), "matching_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    using E = std::conditional_t<std::is_same_v<acc_t<scalar_t>, float>, float, scalar_t>;
    backward_kernel<scalar_t, E>(pb.grad_fg.const_data_ptr<scalar_t>(), pb.grad_bg.const_data_ptr<scalar_t>(),
                                 pb.fg.const_data_ptr<scalar_t>(), pb.argmin.const_data_ptr<int32_t>(),
                                 query_f.const_data_ptr<E>(), candidates_f.const_data_ptr<E>(), pb.batch,
                                 pb.num_labels, pb.windows, pb.pixels, pb.channels, pb.num_candidates,
                                 host_scalar<A>(fg_bias), host_scalar<A>(bg_bias),
                                 pb.grad_query.mutable_data_ptr<scalar_t>(),
                                 pb.grad_candidates.mutable_data_ptr<scalar_t>(),
                                 pb.grad_fg_bias.mutable_data_ptr<scalar_t>(),
                                 pb.grad_bg_bias.mutable_data_ptr<scalar_t>());
  });
  return pb.gradients();
}

}  // namespace cfbi
