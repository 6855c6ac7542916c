// CUDA registrations of the cfbi:: ops: argument checks, contiguous copies, outputs and workspaces, dtype
// mapping, device guard and current stream. The kernels live in the .cu files behind launchers.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "launchers.h"

namespace cfbi {
namespace {

cuda::DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kDouble:
      return cuda::DType::kFloat64;
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    default:
      break;
  }
  TORCH_CHECK(false, "cfbi_ops CUDA kernels support float32, float64, float16 and bfloat16, got ", type);
  return cuda::DType::kFloat32;
}

at::ScalarType acc_type(at::ScalarType type) { return type == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const at::Tensor& query) {
  TORCH_CHECK(query.is_cuda(), "query must be a CUDA tensor");
  (void)kernel_dtype(query.scalar_type());
}

// The bias as one element of the accumulation type, on the device (read by the kernels: no host sync).
at::Tensor device_bias(const at::Tensor& bias, at::ScalarType acc) {
  return bias.reshape({1}).to(acc).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> global_match_cuda(
    const at::Tensor& query, const at::Tensor& reference, const at::Tensor& ref_labels, int64_t num_labels,
    const at::Tensor& fg_bias, const at::Tensor& bg_bias, int64_t atrous, int64_t atrous_min_pixels) {
  check_global_args(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels);
  check_cuda(query);
  const c10::cuda::CUDAGuard device_guard(query.device());
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t pixels = query.size(2) * query.size(3);
  const int64_t frames = reference.size(1), ref_height = reference.size(3), ref_width = reference.size(4);
  const at::ScalarType acc = acc_type(query.scalar_type());

  const at::Tensor query_c = query.contiguous();
  const at::Tensor reference_c = reference.contiguous();
  const at::Tensor labels = ref_labels.to(at::kLong).contiguous();
  const at::Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, query.size(2), query.size(3)};
  at::Tensor fg = empty_output(out_sizes, query.options(), num_labels);
  at::Tensor bg = empty_output(out_sizes, query.options(), num_labels);
  at::Tensor argmin = empty_output(out_sizes, query.options().dtype(at::kInt), num_labels);
  if (fg.numel() == 0) return {fg, bg, argmin};

  const auto int_options = query.options().dtype(at::kInt);
  const bool counts = cuda::global_match_needs_frame_counts(atrous, atrous_min_pixels);
  at::Tensor frame_counts = at::empty({counts ? batch * frames * num_labels : 0}, int_options);
  at::Tensor bucket_counts = at::empty({batch * num_labels}, int_options);
  at::Tensor bucket_start = at::empty({batch * (num_labels + 1)}, int_options);
  at::Tensor bucket_cursor = at::empty({batch * num_labels}, int_options);
  const int64_t capacity = cuda::global_match_capacity(frames, ref_height, ref_width, atrous, atrous_min_pixels);
  at::Tensor sorted_index = at::empty({batch * capacity}, int_options);
  at::Tensor sorted_label = at::empty({batch * capacity}, int_options);
  at::Tensor packed = at::empty({batch * capacity * channels}, query.options());
  at::Tensor norms = at::empty({batch * capacity}, query.options().dtype(acc));
  const bool keyed = query.scalar_type() != at::kDouble;  // float64 stores its minima without keys
  const bool centred = query.scalar_type() == at::kFloat;  // float32 centres its selection
  at::Tensor centre = at::empty({centred ? batch * channels : 0}, query.options().dtype(at::kFloat));
  at::Tensor keys = at::empty({keyed ? 2 * batch * num_labels * pixels : 0}, query.options().dtype(at::kLong));
  at::Tensor dist = at::empty({batch * num_labels * pixels}, query.options().dtype(acc));

  cuda::GlobalMatchArgs args{};
  args.dtype = kernel_dtype(query.scalar_type());
  args.query = query_c.data_ptr();
  args.reference = reference_c.data_ptr();
  args.labels = labels.data_ptr<int64_t>();
  args.fg_bias = fg_b.data_ptr();
  args.bg_bias = bg_b.data_ptr();
  args.batch = batch;
  args.channels = channels;
  args.pixels = pixels;
  args.frames = frames;
  args.ref_height = ref_height;
  args.ref_width = ref_width;
  args.num_labels = num_labels;
  args.atrous = atrous;
  args.min_pixels = atrous_min_pixels;
  args.capacity = capacity;
  args.frame_counts = counts ? frame_counts.data_ptr<int32_t>() : nullptr;
  args.bucket_counts = bucket_counts.data_ptr<int32_t>();
  args.bucket_start = bucket_start.data_ptr<int32_t>();
  args.bucket_cursor = bucket_cursor.data_ptr<int32_t>();
  args.sorted_index = sorted_index.data_ptr<int32_t>();
  args.sorted_label = sorted_label.data_ptr<int32_t>();
  args.packed = packed.data_ptr();
  args.norms = norms.data_ptr();
  args.centre = centred ? centre.data_ptr<float>() : nullptr;
  args.keys = keyed ? reinterpret_cast<unsigned long long*>(keys.data_ptr<int64_t>()) : nullptr;
  args.dist = dist.data_ptr();
  args.fg = fg.data_ptr();
  args.bg = bg.data_ptr();
  args.argmin = argmin.data_ptr<int32_t>();
  C10_CUDA_CHECK(cuda::launch_global_match(args, c10::cuda::getCurrentCUDAStream().stream()));
  return {fg, bg, argmin};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_match_cuda(const at::Tensor& query, const at::Tensor& previous,
                                                                const at::Tensor& prev_labels, int64_t num_labels,
                                                                const at::Tensor& fg_bias, const at::Tensor& bg_bias,
                                                                c10::IntArrayRef windows, int64_t atrous) {
  check_local_args(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous);
  check_cuda(query);
  const c10::cuda::CUDAGuard device_guard(query.device());
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t height = query.size(2), width = query.size(3), pixels = height * width;
  const int64_t num_windows = static_cast<int64_t>(windows.size());
  const at::ScalarType acc = acc_type(query.scalar_type());
  const cuda::DType dtype = kernel_dtype(query.scalar_type());

  const at::Tensor query_c = query.contiguous();
  const at::Tensor previous_c = previous.contiguous();
  const at::Tensor labels = prev_labels.to(at::kLong).contiguous();
  const at::Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, num_windows, height, width};
  at::Tensor fg = empty_output(out_sizes, query.options(), num_labels);
  at::Tensor bg = empty_output(out_sizes, query.options(), num_labels);
  at::Tensor argmin = empty_output(out_sizes, query.options().dtype(at::kInt), num_labels);
  if (fg.numel() == 0) return {fg, bg, argmin};

  const bool shared_state = cuda::local_match_state_in_shared(dtype, num_labels);
  at::Tensor state_dist = at::empty({shared_state ? 0 : num_labels * batch * pixels}, query.options().dtype(acc));
  at::Tensor state_index = at::empty({shared_state ? 0 : num_labels * batch * pixels}, query.options().dtype(at::kInt));
  // Per-window minimum distances: fg itself when it has the accumulation type (each entry is read before
  // its score overwrites it).
  at::Tensor dist = query.scalar_type() == acc ? fg : at::empty(out_sizes, query.options().dtype(acc));

  cuda::LocalMatchArgs args{};
  args.dtype = dtype;
  args.query = query_c.data_ptr();
  args.previous = previous_c.data_ptr();
  args.labels = labels.data_ptr<int64_t>();
  args.fg_bias = fg_b.data_ptr();
  args.bg_bias = bg_b.data_ptr();
  args.batch = batch;
  args.channels = channels;
  args.height = height;
  args.width = width;
  args.num_labels = num_labels;
  args.atrous = atrous;
  args.windows = windows.data();
  args.num_windows = num_windows;
  args.state_dist = shared_state ? nullptr : state_dist.data_ptr();
  args.state_index = shared_state ? nullptr : state_index.data_ptr<int32_t>();
  args.dist = dist.data_ptr();
  args.fg = fg.data_ptr();
  args.bg = bg.data_ptr();
  args.argmin = argmin.data_ptr<int32_t>();
  C10_CUDA_CHECK(cuda::launch_local_match(args, c10::cuda::getCurrentCUDAStream().stream()));
  return {fg, bg, argmin};
}

// Backward of both ops. candidates [B, C, M]. Returns grad_query [B, C, H, W], grad_candidates [B, C, M]
// (both contiguous) and the two bias gradients [1]. The argmin range is checked in the kernel (a device-side
// assert) rather than on the host, which would synchronise.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> matching_backward_cuda(
    const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg, const at::Tensor& argmin,
    const at::Tensor& query, const at::Tensor& candidates, const at::Tensor& fg_bias, const at::Tensor& bg_bias) {
  check_backward_args(grad_fg, grad_bg, fg, argmin, query, candidates);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
  check_cuda(query);
  const c10::cuda::CUDAGuard device_guard(query.device());
  const BackwardProblem pb = prepare_backward(grad_fg, grad_bg, fg, argmin, query, candidates);
  if (pb.empty) return pb.gradients();
  const at::ScalarType acc = acc_type(query.scalar_type());
  const at::Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);

  const int64_t entries = fg.numel();
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const bool direct_atomics = query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble;
  at::Tensor coef = at::empty({entries}, query.options().dtype(acc));
  at::Tensor bias_partials = at::empty({2 * cuda::backward_bias_blocks(entries)}, query.options().dtype(acc));
  at::Tensor grad_acc;
  at::Tensor keys, keys_out, values, values_out, sort_temp;
  size_t sort_temp_bytes = 0;
  if (deterministic) {
    cudaError_t error = cudaSuccess;
    sort_temp_bytes = cuda::backward_sort_temp_bytes(entries, pb.batch, pb.num_candidates, &error);
    C10_CUDA_CHECK(error);
    const bool narrow = cuda::backward_sort_is_narrow(entries, pb.batch, pb.num_candidates);
    const auto sort_options = query.options().dtype(narrow ? at::kInt : at::kLong);
    keys = at::empty({entries}, sort_options);
    keys_out = at::empty({entries}, sort_options);
    values = at::empty({entries}, sort_options);
    values_out = at::empty({entries}, sort_options);
    sort_temp = at::empty({static_cast<int64_t>(sort_temp_bytes)}, query.options().dtype(at::kByte));
  } else if (!direct_atomics) {
    grad_acc = at::empty(pb.candidates.sizes(), query.options().dtype(acc));
  }

  cuda::BackwardArgs args{};
  args.dtype = kernel_dtype(query.scalar_type());
  args.grad_fg = pb.grad_fg.data_ptr();
  args.grad_bg = pb.grad_bg.data_ptr();
  args.fg = pb.fg.data_ptr();
  args.argmin = pb.argmin.data_ptr<int32_t>();
  args.query = pb.query.data_ptr();
  args.candidates = pb.candidates.data_ptr();
  args.fg_bias = fg_b.data_ptr();
  args.bg_bias = bg_b.data_ptr();
  args.batch = pb.batch;
  args.num_labels = pb.num_labels;
  args.windows = pb.windows;
  args.pixels = pb.pixels;
  args.channels = pb.channels;
  args.num_candidates = pb.num_candidates;
  args.deterministic = deterministic;
  args.coef = coef.data_ptr();
  args.bias_partials = bias_partials.data_ptr();
  args.grad_candidates_acc = deterministic ? nullptr : (direct_atomics ? pb.grad_candidates.data_ptr() : grad_acc.data_ptr());
  if (deterministic) {
    args.sort_keys = keys.data_ptr();
    args.sort_keys_out = keys_out.data_ptr();
    args.sort_values = values.data_ptr();
    args.sort_values_out = values_out.data_ptr();
    args.sort_temp = sort_temp.data_ptr();
    args.sort_temp_bytes = sort_temp_bytes;
  }
  args.grad_query = pb.grad_query.data_ptr();
  args.grad_candidates = pb.grad_candidates.data_ptr();
  args.grad_fg_bias = pb.grad_fg_bias.data_ptr();
  args.grad_bg_bias = pb.grad_bg_bias.data_ptr();
  C10_CUDA_CHECK(cuda::launch_matching_backward(args, c10::cuda::getCurrentCUDAStream().stream()));
  return pb.gradients();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> global_match_backward_cuda(
    const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg, const at::Tensor& argmin,
    const at::Tensor& query, const at::Tensor& reference, const at::Tensor& fg_bias, const at::Tensor& bg_bias) {
  TORCH_CHECK(reference.dim() == 5, "reference must be [B, T, C, Hr, Wr]");
  TORCH_CHECK(fg.dim() == 4, "fg must be [B, L, H, W]");
  const int64_t batch = reference.size(0), frames = reference.size(1), channels = reference.size(2);
  // [B, T, C, Hr, Wr] -> [B, C, T * Hr * Wr], the candidate order of the argmin indices.
  const at::Tensor candidates =
      reference.transpose(1, 2).reshape({batch, channels, frames * reference.size(3) * reference.size(4)});
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] =
      matching_backward_cuda(grad_fg, grad_bg, fg, argmin, query, candidates, fg_bias, bg_bias);
  at::Tensor grad_reference =
      grad_candidates.reshape({batch, channels, frames, reference.size(3), reference.size(4)})
          .transpose(1, 2)
          .contiguous();
  return {like_input(grad_query, query), like_input(grad_reference, reference), grad_fg_bias, grad_bg_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> local_match_backward_cuda(
    const at::Tensor& grad_fg, const at::Tensor& grad_bg, const at::Tensor& fg, const at::Tensor& argmin,
    const at::Tensor& query, const at::Tensor& previous, const at::Tensor& fg_bias, const at::Tensor& bg_bias) {
  TORCH_CHECK(previous.sizes() == query.sizes(), "previous must have the shape of query");
  TORCH_CHECK(fg.dim() == 5, "fg must be [B, L, K, H, W]");
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] = matching_backward_cuda(
      grad_fg, grad_bg, fg, argmin, query,
      previous.reshape({previous.size(0), previous.size(1), previous.size(2) * previous.size(3)}), fg_bias, bg_bias);
  return {like_input(grad_query, query), like_input(grad_candidates.view(previous.sizes()), previous), grad_fg_bias,
          grad_bg_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(cfbi, CUDA, m) {
  m.impl("global_match", &global_match_cuda);
  m.impl("global_match_backward", &global_match_backward_cuda);
  m.impl("local_match", &local_match_cuda);
  m.impl("local_match_backward", &local_match_backward_cuda);
}

}  // namespace cfbi
