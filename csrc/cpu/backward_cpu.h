#pragma once

#include <tuple>

#include "../checks.h"

namespace cfbi {

// Backward shared by global and local matching on CPU.
// grad_fg, grad_bg, fg: [B, L, (K,) H, W]; argmin: same shape, int32 index into the M candidates;
// query [B, C, H, W]; candidates [B, C, M].
// Returns grad_query [B, C, H, W], grad_candidates [B, C, M], grad_fg_bias [1], grad_bg_bias [1].
// Deterministic and independent of the number of threads.
std::tuple<Tensor, Tensor, Tensor, Tensor> matching_backward_cpu(const Tensor& grad_fg, const Tensor& grad_bg,
                                                                 const Tensor& fg, const Tensor& argmin,
                                                                 const Tensor& query, const Tensor& candidates,
                                                                 const Tensor& fg_bias, const Tensor& bg_bias);

}  // namespace cfbi
