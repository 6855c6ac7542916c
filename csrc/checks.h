// Argument checks and tensor helpers shared by the CPU and CUDA registrations. The Python layer validates first
// with friendlier messages; these keep direct torch.ops.cfbi calls from reading out of bounds.
//
// Everything here uses only the LibTorch stable ABI (torch/csrc/stable, torch/headeronly), built with
// TORCH_TARGET_VERSION = 2.10: the libraries import no C++ symbol of libtorch and load on every torch >= 2.10.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/Dispatch.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace cfbi {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& out, const T& value, const Rest&... rest) {
  if constexpr (std::is_same_v<T, IntList>) {
    out << '[';
    for (size_t i = 0; i < value.size(); ++i) out << (i ? ", " : "") << value[i];
    out << ']';
  } else if constexpr (std::is_same_v<T, ScalarType>) {
    out << torch::headeronly::toString(value);
  } else {
    out << value;
  }
  append(out, rest...);
}

// std::runtime_error reaches Python as a RuntimeError with exactly this message.
[[noreturn]] inline void fail(const std::string& message) { throw std::runtime_error(message); }

template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  append(out, args...);
  return out.str();
}

#define CFBI_CHECK(cond, ...)                              \
  do {                                                     \
    if (!(cond)) ::cfbi::fail(::cfbi::str(__VA_ARGS__));   \
  } while (0)

// The header-only dtype dispatch over the four dtypes of the ops (scalar_t inside the body, as AT_DISPATCH).
#define CFBI_DISPATCH_FLOATING_AND_HALF(TYPE, NAME, ...)                                  \
  THO_DISPATCH_SWITCH(TYPE, NAME,                                                         \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::Double, __VA_ARGS__)   \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::Float, __VA_ARGS__)    \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::Half, __VA_ARGS__)     \
                      THO_DISPATCH_CASE(torch::headeronly::ScalarType::BFloat16, __VA_ARGS__))

// Upper bound of num_labels and atrous: labels and strides are held in int32 inside the kernels.
constexpr int64_t kMaxInt32Argument = (int64_t(1) << 31) - 1;

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16 ||
         t == ScalarType::Float8_e5m2 || t == ScalarType::Float8_e4m3fn || t == ScalarType::Float8_e5m2fnuz ||
         t == ScalarType::Float8_e4m3fnuz;
}

inline bool is_integer(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short || t == ScalarType::Int ||
         t == ScalarType::Long || t == ScalarType::UInt16 || t == ScalarType::UInt32 || t == ScalarType::UInt64;
}

inline bool same_device(const Tensor& a, const Tensor& b) { return a.device() == b.device(); }

inline bool same_sizes(const Tensor& a, const Tensor& b) { return a.sizes() == b.sizes(); }

// --- tensor helpers (each one dispatcher call through the stable C shim) ---------------------------------

inline Tensor dense(const Tensor& t) { return torch::stable::contiguous(t); }

inline Tensor to_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

inline Tensor alloc(IntList sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(sizes, dtype, std::nullopt, like.device());
}

inline Tensor alloc_like(const Tensor& t) { return torch::stable::empty_like(t); }

inline Tensor reshaped(const Tensor& t, IntList sizes) { return torch::stable::reshape(t, sizes); }

// The one element of a bias as a host number (the CPU kernels take it by value).
template <typename A>
A host_scalar(const Tensor& bias) {
  const Tensor value = dense(to_dtype(bias, ScalarType::Double));
  return static_cast<A>(*value.const_data_ptr<double>());
}

// Whether every value is finite (the CPU kernels' fast paths need it; the exact scans apply the NaN rule).
template <typename T>
bool all_finite(const T* data, int64_t n) {
  std::atomic<bool> finite{true};
  torch::stable::parallel_for(0, n, int64_t(1) << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end && finite.load(std::memory_order_relaxed); ++i) {
      using W = std::conditional_t<std::is_same_v<T, double>, double, float>;
      if (!std::isfinite(static_cast<W>(data[i]))) finite.store(false, std::memory_order_relaxed);
    }
  });
  return finite.load();
}

inline void check_bias(const Tensor& bias, const char* name, const Tensor& query) {
  CFBI_CHECK(bias.numel() == 1, name, " must hold exactly one element, got ", bias.numel());
  CFBI_CHECK(is_floating(bias.scalar_type()), name, " must be a floating tensor, got ", bias.scalar_type());
  CFBI_CHECK(same_device(bias, query), name, " must be on the device of query");
}

inline void check_int_arguments(int64_t num_labels, int64_t atrous) {
  CFBI_CHECK(num_labels >= 1 && num_labels <= kMaxInt32Argument, "num_labels must be in [1, 2^31), got ",
             num_labels);
  CFBI_CHECK(atrous >= 1 && atrous <= kMaxInt32Argument, "atrous must be in [1, 2^31), got ", atrous);
}

// The outputs [B, L, (K,) H, W]; a failed allocation names num_labels (the argument that sizes them).
inline Tensor empty_output(const std::vector<int64_t>& sizes, ScalarType dtype, const Tensor& like,
                           int64_t num_labels) {
  try {
    return alloc(sizes, dtype, like);
  } catch (const std::exception& e) {
    fail(str("num_labels = ", num_labels, ": the outputs of shape ", IntList(sizes), " cannot be allocated (",
             e.what(), ")"));
  }
}

inline void check_labels(const Tensor& labels, const char* name) {
  CFBI_CHECK(is_integer(labels.scalar_type()), name, " must be an integer tensor, got ", labels.scalar_type());
}

inline void check_global_args(const Tensor& query, const Tensor& reference, const Tensor& ref_labels,
                              int64_t num_labels, const Tensor& fg_bias, const Tensor& bg_bias, int64_t atrous,
                              int64_t atrous_min_pixels) {
  CFBI_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  CFBI_CHECK(reference.dim() == 5, "reference must be [B, T, C, Hr, Wr], got ", reference.sizes());
  CFBI_CHECK(ref_labels.dim() == 4, "ref_labels must be [B, T, Hr, Wr], got ", ref_labels.sizes());
  CFBI_CHECK(reference.size(0) == query.size(0) && reference.size(2) == query.size(1),
             "reference must match query in batch and channels");
  CFBI_CHECK(ref_labels.size(0) == reference.size(0) && ref_labels.size(1) == reference.size(1) &&
                 ref_labels.size(2) == reference.size(3) && ref_labels.size(3) == reference.size(4),
             "ref_labels must be [B, T, Hr, Wr] of reference");
  CFBI_CHECK(reference.scalar_type() == query.scalar_type(), "reference must have the dtype of query");
  CFBI_CHECK(same_device(reference, query) && same_device(ref_labels, query),
             "reference and ref_labels must be on the device of query");
  CFBI_CHECK(reference.size(1) * reference.size(3) * reference.size(4) < (int64_t(1) << 31),
             "too many reference pixels for int32 indices");
  check_labels(ref_labels, "ref_labels");
  check_int_arguments(num_labels, atrous);
  CFBI_CHECK(atrous_min_pixels >= 0, "atrous_min_pixels must be >= 0, got ", atrous_min_pixels);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
}

inline void check_local_args(const Tensor& query, const Tensor& previous, const Tensor& prev_labels,
                             int64_t num_labels, const Tensor& fg_bias, const Tensor& bg_bias,
                             const std::vector<int64_t>& windows, int64_t atrous) {
  CFBI_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  CFBI_CHECK(same_sizes(previous, query), "previous must have the shape of query, got ", previous.sizes());
  CFBI_CHECK(prev_labels.dim() == 3 && prev_labels.size(0) == query.size(0) &&
                 prev_labels.size(1) == query.size(2) && prev_labels.size(2) == query.size(3),
             "prev_labels must be [B, H, W] of query, got ", prev_labels.sizes());
  CFBI_CHECK(previous.scalar_type() == query.scalar_type(), "previous must have the dtype of query");
  CFBI_CHECK(same_device(previous, query) && same_device(prev_labels, query),
             "previous and prev_labels must be on the device of query");
  CFBI_CHECK(query.size(2) * query.size(3) < (int64_t(1) << 31), "frame too large for int32 indices");
  check_labels(prev_labels, "prev_labels");
  check_int_arguments(num_labels, atrous);
  CFBI_CHECK(!windows.empty(), "windows must not be empty");
  for (const int64_t w : windows) CFBI_CHECK(w >= 0, "windows must be >= 0, got ", w);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
}

// grad_fg / grad_bg / fg / argmin of the backward ops: all of one shape, [B, L, (K,) H, W]; candidates
// [B, C, M] (the reference or previous frame seen as the argmin's candidate list).
inline void check_backward_args(const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin,
                                const Tensor& query, const Tensor& candidates) {
  CFBI_CHECK(query.dim() == 4, "query must be [B, C, H, W], got ", query.sizes());
  CFBI_CHECK(candidates.dim() == 3 && candidates.size(0) == query.size(0) && candidates.size(1) == query.size(1),
             "the reference / previous frame must match query in batch and channels");
  CFBI_CHECK(fg.scalar_type() == query.scalar_type() && candidates.scalar_type() == query.scalar_type(),
             "fg and the reference / previous frame must have the dtype of query");
  CFBI_CHECK(same_device(grad_fg, query) && same_device(grad_bg, query) && same_device(fg, query) &&
                 same_device(argmin, query) && same_device(candidates, query),
             "all tensors must be on the device of query");
  CFBI_CHECK(same_sizes(grad_fg, fg) && same_sizes(grad_bg, fg) && same_sizes(argmin, fg),
             "grad_fg, grad_bg, fg and argmin must have one shape");
  CFBI_CHECK(argmin.scalar_type() == ScalarType::Int, "argmin must be int32");
  CFBI_CHECK(fg.size(0) == query.size(0), "fg must match query in batch");
  CFBI_CHECK(fg.dim() >= 4 && fg.size(-1) == query.size(3) && fg.size(-2) == query.size(2),
             "fg must match query in height and width");
}

// Every argmin index is -1 or a candidate. Reads argmin on the host: the CPU kernels call it, the CUDA
// kernels check indices in the kernel instead of synchronising.
inline void check_argmin_range(const Tensor& argmin, const Tensor& candidates) {
  if (argmin.numel() == 0) return;
  const Tensor a = dense(argmin);
  const int32_t* data = a.const_data_ptr<int32_t>();
  const auto [lo, hi] = std::minmax_element(data, data + a.numel());
  CFBI_CHECK(*hi < candidates.size(2) && *lo >= -1, "argmin holds indices outside the reference / previous frame");
}

// The backward ops' inputs made contiguous (upstream gradients in fg's dtype), their sizes, and the gradients
// to fill: allocated, and zeroed when there is nothing to compute. Shared by the CPU and CUDA backward.
struct BackwardProblem {
  Tensor grad_fg, grad_bg, fg, argmin, query, candidates;
  int64_t batch, num_labels, channels, pixels, windows, num_candidates;
  Tensor grad_query, grad_candidates, grad_fg_bias, grad_bg_bias;
  bool empty;

  std::tuple<Tensor, Tensor, Tensor, Tensor> gradients() const {
    return {grad_query, grad_candidates, grad_fg_bias, grad_bg_bias};
  }
};

inline BackwardProblem prepare_backward(const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg,
                                        const Tensor& argmin, const Tensor& query, const Tensor& candidates) {
  BackwardProblem pb;
  pb.grad_fg = dense(to_dtype(grad_fg, fg.scalar_type()));
  pb.grad_bg = dense(to_dtype(grad_bg, fg.scalar_type()));
  pb.fg = dense(fg);
  pb.argmin = dense(argmin);
  pb.query = dense(query);
  pb.candidates = dense(candidates);
  pb.batch = fg.size(0);
  pb.num_labels = fg.size(1);
  pb.channels = query.size(1);
  pb.pixels = query.size(2) * query.size(3);
  pb.windows = fg.numel() / std::max<int64_t>(pb.batch * pb.num_labels * pb.pixels, 1);
  pb.num_candidates = candidates.size(2);
  pb.grad_query = alloc_like(pb.query);
  pb.grad_candidates = alloc_like(pb.candidates);
  pb.grad_fg_bias = alloc({1}, query.scalar_type(), query);
  pb.grad_bg_bias = alloc({1}, query.scalar_type(), query);
  // With C = 0 every distance is 0 and the scores still depend on the biases: only empty outputs are empty.
  pb.empty = fg.numel() == 0;
  if (pb.empty) {
    for (Tensor* t : {&pb.grad_query, &pb.grad_candidates, &pb.grad_fg_bias, &pb.grad_bg_bias}) {
      torch::stable::zero_(*t);
    }
  }
  return pb;
}

// A gradient in the layout of its input (the layout the fake kernels promise: empty_like).
inline Tensor like_input(const Tensor& grad, const Tensor& input) {
  if (grad.strides() == input.strides()) return grad;
  Tensor out = alloc_like(input);
  torch::stable::copy_(out, torch::stable::view(grad, input.sizes()));
  return out;
}

// [B, T, C, Hr, Wr] -> [B, C, T * Hr * Wr], the candidate order of the global argmin indices.
inline Tensor global_reference_as_candidates(const Tensor& reference) {
  return reshaped(torch::stable::transpose(reference, 1, 2),
                 {reference.size(0), reference.size(2), reference.size(1) * reference.size(3) * reference.size(4)});
}

// The gradient of the candidates [B, C, T * Hr * Wr] back in the reference's shape [B, T, C, Hr, Wr].
inline Tensor candidates_as_global_reference(const Tensor& grad_candidates, const Tensor& reference) {
  const int64_t batch = reference.size(0), frames = reference.size(1), channels = reference.size(2);
  return dense(torch::stable::transpose(
      reshaped(grad_candidates, {batch, channels, frames, reference.size(3), reference.size(4)}), 1, 2));
}

}  // namespace cfbi
