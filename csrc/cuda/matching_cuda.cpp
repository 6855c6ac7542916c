// CUDA registrations of the cfbi:: ops: argument checks, contiguous copies, outputs and workspaces, dtype
// mapping, device guard and current stream. The kernels live in the .cu files behind launchers.h.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "cuda_context.h"
#include "launchers.h"

namespace cfbi {
namespace {

cuda::DType kernel_dtype(ScalarType type) {
  switch (type) {
    case ScalarType::Float:
      return cuda::DType::kFloat32;
    case ScalarType::Double:
      return cuda::DType::kFloat64;
    case ScalarType::Half:
      return cuda::DType::kFloat16;
    case ScalarType::BFloat16:
      return cuda::DType::kBFloat16;
    default:
      break;
  }
  fail(str("cfbi_ops CUDA kernels support float32, float64, float16 and bfloat16, got ", type));
}

ScalarType acc_type(ScalarType type) { return type == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

void check_cuda(const Tensor& query) {
  CFBI_CHECK(query.is_cuda(), "query must be a CUDA tensor");
  (void)kernel_dtype(query.scalar_type());
}

// The bias as one element of the accumulation type, on the device (read by the kernels: no host sync).
Tensor device_bias(const Tensor& bias, ScalarType acc) {
  return dense(to_dtype(reshaped(bias, {1}), acc));
}

std::tuple<Tensor, Tensor, Tensor> global_match_cuda(
    const Tensor& query, const Tensor& reference, const Tensor& ref_labels, int64_t num_labels,
    const Tensor& fg_bias, const Tensor& bg_bias, int64_t atrous, int64_t atrous_min_pixels) {
  check_global_args(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels);
  check_cuda(query);
  const cuda::DeviceGuard device_guard(query);
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t pixels = query.size(2) * query.size(3);
  const int64_t frames = reference.size(1), ref_height = reference.size(3), ref_width = reference.size(4);
  const ScalarType acc = acc_type(query.scalar_type());

  const Tensor query_c = dense(query);
  const Tensor reference_c = dense(reference);
  const Tensor labels = dense(to_dtype(ref_labels, ScalarType::Long));
  const Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, query.size(2), query.size(3)};
  Tensor fg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor bg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor argmin = empty_output(out_sizes, ScalarType::Int, query, num_labels);
  if (fg.numel() == 0) return {fg, bg, argmin};

  const bool counts = cuda::global_match_needs_frame_counts(atrous, atrous_min_pixels);
  Tensor frame_counts = alloc({counts ? batch * frames * num_labels : 0}, ScalarType::Int, query);
  Tensor bucket_counts = alloc({batch * num_labels}, ScalarType::Int, query);
  Tensor bucket_start = alloc({batch * (num_labels + 1)}, ScalarType::Int, query);
  Tensor bucket_cursor = alloc({batch * num_labels}, ScalarType::Int, query);
  const int64_t capacity = cuda::global_match_capacity(frames, ref_height, ref_width, atrous, atrous_min_pixels);
  Tensor sorted_index = alloc({batch * capacity}, ScalarType::Int, query);
  Tensor sorted_label = alloc({batch * capacity}, ScalarType::Int, query);
  Tensor packed = alloc({batch * capacity * channels}, query.scalar_type(), query);
  Tensor norms = alloc({batch * capacity}, acc, query);
  const bool keyed = query.scalar_type() != ScalarType::Double;  // float64 stores its minima without keys
  const bool centred = query.scalar_type() == ScalarType::Float;  // float32 centres its selection
  Tensor centre = alloc({centred ? batch * channels : 0}, ScalarType::Float, query);
  Tensor keys = alloc({keyed ? 2 * batch * num_labels * pixels : 0}, ScalarType::Long, query);
  Tensor dist = alloc({batch * num_labels * pixels}, acc, query);

  cuda::GlobalMatchArgs args{};
  args.dtype = kernel_dtype(query.scalar_type());
  args.query = query_c.data_ptr();
  args.reference = reference_c.data_ptr();
  args.labels = labels.mutable_data_ptr<int64_t>();
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
  args.frame_counts = counts ? frame_counts.mutable_data_ptr<int32_t>() : nullptr;
  args.bucket_counts = bucket_counts.mutable_data_ptr<int32_t>();
  args.bucket_start = bucket_start.mutable_data_ptr<int32_t>();
  args.bucket_cursor = bucket_cursor.mutable_data_ptr<int32_t>();
  args.sorted_index = sorted_index.mutable_data_ptr<int32_t>();
  args.sorted_label = sorted_label.mutable_data_ptr<int32_t>();
  args.packed = packed.data_ptr();
  args.norms = norms.data_ptr();
  args.centre = centred ? centre.mutable_data_ptr<float>() : nullptr;
  args.keys = keyed ? reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>()) : nullptr;
  args.dist = dist.data_ptr();
  args.fg = fg.data_ptr();
  args.bg = bg.data_ptr();
  args.argmin = argmin.mutable_data_ptr<int32_t>();
  cuda::check_cuda_error(cuda::launch_global_match(args, cuda::current_stream(query)));
  return {fg, bg, argmin};
}

std::tuple<Tensor, Tensor, Tensor> local_match_cuda(const Tensor& query, const Tensor& previous,
                                                                const Tensor& prev_labels, int64_t num_labels,
                                                                const Tensor& fg_bias, const Tensor& bg_bias,
                                                                std::vector<int64_t> windows, int64_t atrous) {
  check_local_args(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous);
  check_cuda(query);
  const cuda::DeviceGuard device_guard(query);
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t height = query.size(2), width = query.size(3), pixels = height * width;
  const int64_t num_windows = static_cast<int64_t>(windows.size());
  const ScalarType acc = acc_type(query.scalar_type());
  const cuda::DType dtype = kernel_dtype(query.scalar_type());

  const Tensor query_c = dense(query);
  const Tensor previous_c = dense(previous);
  const Tensor labels = dense(to_dtype(prev_labels, ScalarType::Long));
  const Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, num_windows, height, width};
  Tensor fg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor bg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor argmin = empty_output(out_sizes, ScalarType::Int, query, num_labels);
  if (fg.numel() == 0) return {fg, bg, argmin};

  const bool shared_state = cuda::local_match_state_in_shared(dtype, num_labels);
  Tensor state_dist = alloc({shared_state ? 0 : num_labels * batch * pixels}, acc, query);
  Tensor state_index = alloc({shared_state ? 0 : num_labels * batch * pixels}, ScalarType::Int, query);
  // Per-window minimum distances: fg itself when it has the accumulation type (each entry is read before
  // its score overwrites it).
  Tensor dist = query.scalar_type() == acc ? fg : alloc(out_sizes, acc, query);

  cuda::LocalMatchArgs args{};
  args.dtype = dtype;
  args.query = query_c.data_ptr();
  args.previous = previous_c.data_ptr();
  args.labels = labels.mutable_data_ptr<int64_t>();
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
  args.state_index = shared_state ? nullptr : state_index.mutable_data_ptr<int32_t>();
  args.dist = dist.data_ptr();
  args.fg = fg.data_ptr();
  args.bg = bg.data_ptr();
  args.argmin = argmin.mutable_data_ptr<int32_t>();
  cuda::check_cuda_error(cuda::launch_local_match(args, cuda::current_stream(query)));
  return {fg, bg, argmin};
}

// Backward of both ops. candidates [B, C, M]. Returns grad_query [B, C, H, W], grad_candidates [B, C, M]
// (both contiguous) and the two bias gradients [1]. deterministic: sort the candidate gradients' contributions
// (torch.use_deterministic_algorithms, read by the caller) instead of adding them atomically. The argmin range is checked in the kernel (a device-side
// assert) rather than on the host, which would synchronise.
std::tuple<Tensor, Tensor, Tensor, Tensor> matching_backward_cuda(
    const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin,
    const Tensor& query, const Tensor& candidates, const Tensor& fg_bias, const Tensor& bg_bias, bool deterministic) {
  check_backward_args(grad_fg, grad_bg, fg, argmin, query, candidates);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
  check_cuda(query);
  const cuda::DeviceGuard device_guard(query);
  const BackwardProblem pb = prepare_backward(grad_fg, grad_bg, fg, argmin, query, candidates);
  if (pb.empty) return pb.gradients();
  const ScalarType acc = acc_type(query.scalar_type());
  const Tensor fg_b = device_bias(fg_bias, acc), bg_b = device_bias(bg_bias, acc);

  const int64_t entries = fg.numel();
  const bool direct_atomics = query.scalar_type() == ScalarType::Float || query.scalar_type() == ScalarType::Double;
  Tensor coef = alloc({entries}, acc, query);
  Tensor bias_partials = alloc({2 * cuda::backward_bias_blocks(entries)}, acc, query);
  Tensor grad_acc;
  Tensor keys, keys_out, values, values_out, sort_temp;
  size_t sort_temp_bytes = 0;
  if (deterministic) {
    cudaError_t error = cudaSuccess;
    sort_temp_bytes = cuda::backward_sort_temp_bytes(entries, pb.batch, pb.num_candidates, &error);
    cuda::check_cuda_error(error);
    const bool narrow = cuda::backward_sort_is_narrow(entries, pb.batch, pb.num_candidates);
    const ScalarType sort_dtype = narrow ? ScalarType::Int : ScalarType::Long;
    keys = alloc({entries}, sort_dtype, query);
    keys_out = alloc({entries}, sort_dtype, query);
    values = alloc({entries}, sort_dtype, query);
    values_out = alloc({entries}, sort_dtype, query);
    sort_temp = alloc({static_cast<int64_t>(sort_temp_bytes)}, ScalarType::Byte, query);
  } else if (!direct_atomics) {
    grad_acc = alloc(pb.candidates.sizes(), acc, query);
  }

  cuda::BackwardArgs args{};
  args.dtype = kernel_dtype(query.scalar_type());
  args.grad_fg = pb.grad_fg.data_ptr();
  args.grad_bg = pb.grad_bg.data_ptr();
  args.fg = pb.fg.data_ptr();
  args.argmin = pb.argmin.mutable_data_ptr<int32_t>();
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
  cuda::check_cuda_error(cuda::launch_matching_backward(args, cuda::current_stream(query)));
  return pb.gradients();
}

std::tuple<Tensor, Tensor, Tensor, Tensor> global_match_backward_cuda(
    const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin, const Tensor& query,
    const Tensor& reference, const Tensor& fg_bias, const Tensor& bg_bias, bool deterministic) {
  CFBI_CHECK(reference.dim() == 5, "reference must be [B, T, C, Hr, Wr]");
  CFBI_CHECK(fg.dim() == 4, "fg must be [B, L, H, W]");
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] =
      matching_backward_cuda(grad_fg, grad_bg, fg, argmin, query, global_reference_as_candidates(reference),
                             fg_bias, bg_bias, deterministic);
  const Tensor grad_reference = candidates_as_global_reference(grad_candidates, reference);
  return {like_input(grad_query, query), like_input(grad_reference, reference), grad_fg_bias, grad_bg_bias};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> local_match_backward_cuda(
    const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin, const Tensor& query,
    const Tensor& previous, const Tensor& fg_bias, const Tensor& bg_bias, bool deterministic) {
  CFBI_CHECK(same_sizes(previous, query), "previous must have the shape of query");
  CFBI_CHECK(fg.dim() == 5, "fg must be [B, L, K, H, W]");
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] = matching_backward_cuda(
      grad_fg, grad_bg, fg, argmin, query,
      reshaped(previous, {previous.size(0), previous.size(1), previous.size(2) * previous.size(3)}), fg_bias, bg_bias,
      deterministic);
  return {like_input(grad_query, query), like_input(torch::stable::view(grad_candidates, previous.sizes()), previous),
          grad_fg_bias, grad_bg_bias};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cfbi, CUDA, m) {
  m.impl("global_match", TORCH_BOX(&global_match_cuda));
  m.impl("global_match_backward", TORCH_BOX(&global_match_backward_cuda));
  m.impl("local_match", TORCH_BOX(&local_match_cuda));
  m.impl("local_match_backward", TORCH_BOX(&local_match_backward_cuda));
}

}  // namespace cfbi
