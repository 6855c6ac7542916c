// Launchers of the CUDA kernels of cfbi_ops: plain C++ taking raw device pointers, sizes and a stream,
// so that the .cu files need no torch headers. The registrations (matching_cuda.cpp) check the
// arguments, prepare contiguous tensors, allocate outputs and workspaces, and call these.
//
// Layout conventions: every tensor is dense (contiguous) in the order given in its comment; "acc"
// is the accumulation type, float for float32 / float16 / bfloat16 and double for float64.
// Every launcher returns the first CUDA error it met (cudaSuccess when all launches were queued).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace cfbi {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// ---- global_match --------------------------------------------------------------------------------

struct GlobalMatchArgs {
  DType dtype;
  const void* query;      // [B, C, N] (N = H * W)
  const void* reference;  // [B, T, C, Hr, Wr]
  const int64_t* labels;  // [B, T, Hr, Wr]
  const void* fg_bias;    // one acc element
  const void* bg_bias;    // one acc element
  int64_t batch, channels, pixels, frames, ref_height, ref_width, num_labels, atrous, min_pixels;
  int64_t capacity;        // global_match_capacity(...): kept candidates per batch element at most
  // Workspace (no initialisation needed), M = T * Hr * Wr, cap = capacity:
  int32_t* frame_counts;   // [B, T, L]; only read when global_match_needs_frame_counts(), else may be null
  int32_t* bucket_counts;  // [B, L]
  int32_t* bucket_start;   // [B, L + 1]
  int32_t* bucket_cursor;  // [B, L]
  int32_t* sorted_index;   // [B, cap]
  int32_t* sorted_label;   // [B, cap]
  void* packed;            // [B, C, cap] of dtype: kept candidates in label order (first bucket_start[b][L])
  void* norms;             // [B, cap] acc: squared norm of each packed candidate (centred for float32)
  float* centre;           // [B, C]: selection_centre of each channel; float32 only, else may be null
  unsigned long long* keys;  // [2, B, L, N]: per-label smallest and second smallest selection keys; unused (may be
                             // null) for float64
  void* dist;              // [B, L, N] acc: per-label minimum distance
  // Outputs [B, L, N]:
  void* fg;
  void* bg;
  int32_t* argmin;
};

bool global_match_needs_frame_counts(int64_t atrous, int64_t min_pixels);
// Kept candidates per batch element at most: the atrous grid when small labels keep nothing more, else M.
int64_t global_match_capacity(int64_t frames, int64_t ref_height, int64_t ref_width, int64_t atrous,
                              int64_t min_pixels);
cudaError_t launch_global_match(const GlobalMatchArgs& args, cudaStream_t stream);

// ---- local_match ---------------------------------------------------------------------------------

struct LocalMatchArgs {
  DType dtype;
  const void* query;      // [B, C, H, W]
  const void* previous;   // [B, C, H, W]
  const int64_t* labels;  // [B, H, W]
  const void* fg_bias;    // one acc element
  const void* bg_bias;    // one acc element
  int64_t batch, channels, height, width, num_labels, atrous;
  const int64_t* windows;  // host array of num_windows window sizes (>= 0)
  int64_t num_windows;
  // Workspace (no initialisation needed). Per-label minima of the current candidate row, only when
  // !local_match_state_in_shared(dtype, num_labels), else may be null:
  void* state_dist;       // [L, B * H * W] acc
  int32_t* state_index;   // [L, B * H * W]
  // Per-window minimum distances; may be fg itself when dtype is the accumulation type:
  void* dist;             // [B, L, K, H, W] acc
  // Outputs [B, L, K, H, W]:
  void* fg;
  void* bg;
  int32_t* argmin;
};

// Whether the per-label row minima of a thread block fit in shared memory.
bool local_match_state_in_shared(DType dtype, int64_t num_labels);
cudaError_t launch_local_match(const LocalMatchArgs& args, cudaStream_t stream);

// ---- backward (both ops) -------------------------------------------------------------------------

struct BackwardArgs {
  DType dtype;
  const void* grad_fg;    // [B, L, P] of dtype, P = K * N (K = 1 for global)
  const void* grad_bg;    // [B, L, P]
  const void* fg;         // [B, L, P]
  const int32_t* argmin;  // [B, L, P]
  const void* query;      // [B, C, N]
  const void* candidates; // [B, C, M]
  const void* fg_bias;    // one element of acc type (float16 / bfloat16 recompute their score's slope with it)
  const void* bg_bias;
  int64_t batch, num_labels, windows, pixels, channels, num_candidates;
  bool deterministic;
  // Workspace:
  void* coef;                // [B, L, P] acc
  void* bias_partials;       // [2 * backward_bias_blocks(B * L * P)] acc
  void* grad_candidates_acc; // [B, C, M] acc; atomic path only (may alias grad_candidates for float32/64)
  void* sort_keys;           // deterministic path only: 4 arrays of [B * L * P], of uint32 / int32 (keys /
  void* sort_keys_out;       // values) when backward_sort_is_narrow(), else uint64 / int64
  void* sort_values;
  void* sort_values_out;
  void* sort_temp;           // deterministic path only: backward_sort_temp_bytes(...) bytes
  size_t sort_temp_bytes;
  // Outputs:
  void* grad_query;       // [B, C, N] of dtype
  void* grad_candidates;  // [B, C, M] of dtype
  void* grad_fg_bias;     // one element of dtype
  void* grad_bg_bias;     // one element of dtype
};

int64_t backward_bias_blocks(int64_t entries);
// Whether the deterministic path sorts 32-bit keys and values (entries < 2^31 and B * M < 2^32 - 1).
bool backward_sort_is_narrow(int64_t entries, int64_t batch, int64_t num_candidates);
// Temporary storage of the deterministic path's radix sort (entries = B * L * P).
size_t backward_sort_temp_bytes(int64_t entries, int64_t batch, int64_t num_candidates, cudaError_t* error);
cudaError_t launch_matching_backward(const BackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace cfbi
