// Argument checks shared by the CPU and CUDA registrations. The Python layer validates first with
// friendlier messages; these keep direct torch.ops.cfbi calls from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <tuple>

namespace cfbi {

// Upper bound of num_labels and atrous: labels and strides are held in int32 inside the kernels.
constexpr int64_t kMaxInt32Argument = (int64_t(1) << 31) - 1;

inline void check_bias(const at::Tensor& bias, const char* name, const at::Tensor& query) {
  TORCH_CHECK(bias.numel() == 1, name, " must hold exactly one element, got ", bias.numel());
  TORCH_CHECK(at::isFloatingType(bias.scalar_type()), name, " must be a floating tensor, got ", bias.scalar_type());
  TORCH_CHECK(bias.device() == query.device(), name, " must be on the device of query");
}

inline void check_int_arguments(int64_t num_labels, int64_t atrous) {
  TORCH_CHECK(num_labels >= 1 && num_labels <= kMaxInt32Argument, "num_labels must be in [1, 2^31), got ",
              num_labels);
  TORCH_CHECK(atrous >= 1 && atrous <= kMaxInt32Argument, "atrous must be in [1, 2^31), got ", atrous);
}

// The outputs [B, L, (K,) H, W]; a failed allocation names num_labels (the argument that sizes them).
inline at::Tensor empty_output(c10::IntArrayRef sizes, const at::TensorOptions& options, int64_t num_labels) {
  try {
    return at::empty(sizes, options);
  } catch (const c10::OutOfMemoryError& e) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "num_labels = ", num_labels, ": the outputs of shape ", sizes,
                     " cannot be allocated (", e.what_without_backtrace(), ")");
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "num_labels = ", num_labels, ": the outputs of shape ", sizes, " cannot be allocated (",
                e.what_without_backtrace(), ")");
  }
}

inline void check_labels(const at::Tensor& labels, const char* name) {
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && !at::isComplexType(labels.scalar_type()) &&
                  labels.scalar_type() != at::kBool,
              name, " must be an integer tensor, got ", labels.scalar_type());
}

inline void check_global_args(const at::Tensor& query, const at::Tensor& reference, const at::Tensor& ref_labels,
                              int64_t num_labels, const at::Tensor& fg_bias, const at::Tensor& bg_bias,
                              int64_t atrous, int64_t atrous_min_pixels) {
  TORCH_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  TORCH_CHECK(reference.dim() == 5, "reference must be [B, T, C, Hr, Wr], got ", reference.sizes());
  TORCH_CHECK(ref_labels.dim() == 4, "ref_labels must be [B, T, Hr, Wr], got ", ref_labels.sizes());
  TORCH_CHECK(reference.size(0) == query.size(0) && reference.size(2) == query.size(1),
              "reference must match query in batch and channels");
  TORCH_CHECK(ref_labels.size(0) == reference.size(0) && ref_labels.size(1) == reference.size(1) &&
                  ref_labels.size(2) == reference.size(3) && ref_labels.size(3) == reference.size(4),
              "ref_labels must be [B, T, Hr, Wr] of reference");
  TORCH_CHECK(reference.scalar_type() == query.scalar_type(), "reference must have the dtype of query");
  TORCH_CHECK(reference.device() == query.device() && ref_labels.device() == query.device(),
              "reference and ref_labels must be on the device of query");
  TORCH_CHECK(reference.size(1) * reference.size(3) * reference.size(4) < (int64_t(1) << 31),
              "too many reference pixels for int32 indices");
  check_labels(ref_labels, "ref_labels");
  check_int_arguments(num_labels, atrous);
  TORCH_CHECK(atrous_min_pixels >= 0, "atrous_min_pixels must be >= 0, got ", atrous_min_pixels);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
}

inline void check_local_args(const at::Tensor& query, const at::Tensor& previous, const at::Tensor& prev_labels,
                             int64_t num_labels, const at::Tensor& fg_bias, const at::Tensor& bg_bias,
                             c10::IntArrayRef windows, int64_t atrous) {
  TORCH_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  TORCH_CHECK(previous.sizes() == query.sizes(), "previous must have the shape of query, got ", previous.sizes());
  TORCH_CHECK(prev_labels.dim() == 3 && prev_labels.size(0) == query.size(0) &&
                  prev_labels.size(1) == query.size(2) && prev_labels.size(2) == query.size(3),
              "prev_labels must be [B, H, W] of query, got ", prev_labels.sizes());
  TORCH_CHECK(previous.scalar_type() == query.scalar_type(), "previous must have the dtype of query");
  TORCH_CHECK(previous.device() == query.device() && prev_labels.device() == query.device(),
              "previous and prev_labels must be on the device of query");
  TORCH_CHECK(query.size(2) * query.size(3) < (int64_t(1) << 31), "frame too large for int32 indices");
  check_labels(prev_labels, "prev_labels");
  check_int_arguments(num_labels, atrous);
  TORCH_CHECK(!windows.empty(), "windows must not be empty");
  for (const int64_t w : windows) TORCH_CHECK(w >= 0, "windows must be >= 0, got ", w);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
}

// grad_fg / grad_bg / fg / argmin of the backward ops: all of one shape, [B, L, (K,) H, W]; candidates
// [B, C, M] (the reference or previous frame seen as the argmin's candidate list).
inline void check_backward_args(const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg,
                                const at::Tensor& argmin, const at::Tensor& query, const at::Tensor& candidates) {
  TORCH_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  TORCH_CHECK(candidates.dim() == 3 && candidates.size(0) == query.size(0) && candidates.size(1) == query.size(1),
              "the reference / previous frame must match query in batch and channels");
  TORCH_CHECK(fg.scalar_type() == query.scalar_type() && candidates.scalar_type() == query.scalar_type(),
              "fg and the reference / previous frame must have the dtype of query");
  TORCH_CHECK(grad_fg.device() == query.device() && grad_bg.device() == query.device() &&
                  fg.device() == query.device() && argmin.device() == query.device() &&
                  candidates.device() == query.device(),
              "all tensors must be on the device of query");
  TORCH_CHECK(grad_fg.sizes() == fg.sizes() && grad_bg.sizes() == fg.sizes() && argmin.sizes() == fg.sizes(),
              "grad_fg, grad_bg, fg and argmin must have one shape");
  TORCH_CHECK(argmin.scalar_type() == at::kInt, "argmin must be int32");
  TORCH_CHECK(fg.size(0) == query.size(0), "fg must match query in batch");
  TORCH_CHECK(fg.dim() >= 4 && fg.size(-1) == query.size(3) && fg.size(-2) == query.size(2),
              "fg must match query in height and width");
}

// Every argmin index is -1 or a candidate. Reads argmin on the host: the CPU kernels call it, the CUDA
// kernels check indices in the kernel instead of synchronising.
inline void check_argmin_range(const at::Tensor& argmin, const at::Tensor& candidates) {
  if (argmin.numel() == 0) return;
  TORCH_CHECK(argmin.max().item<int32_t>() < candidates.size(2) && argmin.min().item<int32_t>() >= -1,
              "argmin holds indices outside the reference / previous frame");
}

// The backward ops' inputs made contiguous (upstream gradients in fg's dtype), their sizes, and the gradients
// to fill: allocated, and zeroed when there is nothing to compute. Shared by the CPU and CUDA backward.
struct BackwardProblem {
  at::Tensor grad_fg, grad_bg, fg, argmin, query, candidates;
  int64_t batch, num_labels, channels, pixels, windows, num_candidates;
  at::Tensor grad_query, grad_candidates, grad_fg_bias, grad_bg_bias;
  bool empty;

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gradients() const {
    return {grad_query, grad_candidates, grad_fg_bias, grad_bg_bias};
  }
};

inline BackwardProblem prepare_backward(const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg,
                                        const at::Tensor& argmin, const at::Tensor& query,
                                        const at::Tensor& candidates) {
  BackwardProblem pb;
  pb.grad_fg = grad_fg.to(fg.scalar_type()).contiguous();
  pb.grad_bg = grad_bg.to(fg.scalar_type()).contiguous();
  pb.fg = fg.contiguous();
  pb.argmin = argmin.contiguous();
  pb.query = query.contiguous();
  pb.candidates = candidates.contiguous();
  pb.batch = fg.size(0);
  pb.num_labels = fg.size(1);
  pb.channels = query.size(1);
  pb.pixels = query.size(2) * query.size(3);
  pb.windows = fg.numel() / std::max<int64_t>(pb.batch * pb.num_labels * pb.pixels, 1);
  pb.num_candidates = candidates.size(2);
  pb.grad_query = at::empty_like(pb.query);
  pb.grad_candidates = at::empty_like(pb.candidates);
  pb.grad_fg_bias = at::empty({1}, query.options());
  pb.grad_bg_bias = at::empty({1}, query.options());
  // With C = 0 every distance is 0 and the scores still depend on the biases: only empty outputs are empty.
  pb.empty = fg.numel() == 0;
  if (pb.empty) {
    pb.grad_query.zero_(), pb.grad_candidates.zero_(), pb.grad_fg_bias.zero_(), pb.grad_bg_bias.zero_();
  }
  return pb;
}

// A gradient in the layout of its input (the layout the fake kernels promise: empty_like).
inline at::Tensor like_input(const at::Tensor& grad, const at::Tensor& input) {
  if (grad.strides() == input.strides()) return grad;
  return at::empty_like(input).copy_(grad.view(input.sizes()));
}

}  // namespace cfbi
