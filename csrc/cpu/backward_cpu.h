#pragma once

#include <ATen/core/Tensor.h>
#include <tuple>

namespace cfbi {

// Backward shared by global and local matching on CPU.
// grad_fg, grad_bg, fg: [B, L, (K,) H, W]; argmin: same shape, int32 index into the M candidates;
// query [B, C, H, W]; candidates [B, C, M].
// Returns grad_query [B, C, H, W], grad_candidates [B, C, M], grad_fg_bias [1], grad_bg_bias [1].
// Deterministic and independent of the number of threads.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> matching_backward_cpu(
    const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg, const at::Tensor& argmin,
    const at::Tensor& query, const at::Tensor& candidates, const at::Tensor& fg_bias,
    const at::Tensor& bg_bias);

}  // namespace cfbi
