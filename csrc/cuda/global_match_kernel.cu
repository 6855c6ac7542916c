// CUDA forward of cfbi::global_match.
//
// 1. Candidates of each batch element are bucketed by label (counting sort): count the valid pixels of
//    every (frame, label) when the atrous rule needs them, count the kept candidates of every label,
//    prefix-sum the counts into bucket offsets, and scatter the kept candidates (their flattened index,
//    label and embedding, channels last) into label order. The order inside a bucket does not matter:
//    every minimum below compares (distance, index) pairs with is_better, a total order.
// 2. One thread per query pixel, a block of kQueries query pixels walks all buckets once, in tiles of
//    kTile candidates staged in shared memory (kChunk channels at a time, zero padded; a zero channel adds
//    exactly 0). Each thread keeps the distances to the tile's candidates in registers, then scans them in
//    bucket order with a running minimum of the current label; when the label changes, the finished
//    label's minimum is stored (distance in a scratch buffer, index in the argmin output). The cost is
//    N x M x C whatever the number of labels.
// 3. The same thread turns its per-label minima into fg, bg and argmin (write_pixel_scores_strided).
#include "common.cuh"

namespace cfbi {
namespace cuda {
namespace {

// ---- bucketing -------------------------------------------------------------------------------------

// Valid pixels of every (batch, frame, label).
__global__ void count_frame_labels_kernel(const int64_t* __restrict__ labels, int64_t total, int64_t frame_pixels,
                                          int64_t num_labels, int32_t* __restrict__ frame_counts) {
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    const int64_t label = labels[i];
    if (is_valid_label(label, num_labels)) atomicAdd(&frame_counts[(i / frame_pixels) * num_labels + label], 1);
  }
}

// Whether pixel i (flattened over [B, T, Hr, Wr]) is a candidate; its label in *label.
__device__ __forceinline__ bool kept_candidate(const int64_t* __restrict__ labels, const int32_t* frame_counts,
                                               int64_t i, int64_t frame_pixels, int64_t width, int64_t num_labels,
                                               int64_t atrous, int64_t min_pixels, int64_t* label) {
  *label = labels[i];
  if (!is_valid_label(*label, num_labels)) return false;
  const int64_t in_frame = i % frame_pixels;
  const int64_t label_pixels =
      frame_counts == nullptr ? 0 : static_cast<int64_t>(frame_counts[(i / frame_pixels) * num_labels + *label]);
  return keeps_global_candidate(in_frame / width, in_frame % width, atrous, label_pixels, min_pixels);
}

__global__ void count_buckets_kernel(const int64_t* __restrict__ labels, const int32_t* __restrict__ frame_counts,
                                     int64_t total, int64_t candidates, int64_t frame_pixels, int64_t width,
                                     int64_t num_labels, int64_t atrous, int64_t min_pixels,
                                     int32_t* __restrict__ bucket_counts) {
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    int64_t label;
    if (kept_candidate(labels, frame_counts, i, frame_pixels, width, num_labels, atrous, min_pixels, &label)) {
      atomicAdd(&bucket_counts[(i / candidates) * num_labels + label], 1);
    }
  }
}

// One block per batch element: bucket_start[b] = exclusive prefix sum of bucket_counts[b] (L + 1 entries),
// bucket_cursor[b] = bucket_start[b][0..L).
constexpr int kScanThreads = 256;

__global__ void __launch_bounds__(kScanThreads)
    bucket_offsets_kernel(const int32_t* __restrict__ bucket_counts, int64_t num_labels,
                          int32_t* __restrict__ bucket_start, int32_t* __restrict__ bucket_cursor) {
  __shared__ int32_t scan[kScanThreads];
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  int32_t carry = 0;
  for (int64_t base = 0; base < num_labels; base += kScanThreads) {
    const int64_t l = base + tid;
    const int32_t value = l < num_labels ? bucket_counts[b * num_labels + l] : 0;
    scan[tid] = value;
    __syncthreads();
    for (int offset = 1; offset < kScanThreads; offset *= 2) {
      const int32_t add = tid >= offset ? scan[tid - offset] : 0;
      __syncthreads();
      scan[tid] += add;
      __syncthreads();
    }
    if (l < num_labels) {
      const int32_t start = carry + scan[tid] - value;
      bucket_start[b * (num_labels + 1) + l] = start;
      bucket_cursor[b * num_labels + l] = start;
    }
    carry += scan[kScanThreads - 1];
    __syncthreads();
  }
  if (tid == 0) bucket_start[b * (num_labels + 1) + num_labels] = carry;
}

template <typename T>
__global__ void scatter_candidates_kernel(const int64_t* __restrict__ labels, const int32_t* __restrict__ frame_counts,
                                          const T* __restrict__ reference, int64_t total, int64_t candidates,
                                          int64_t frame_pixels, int64_t width, int64_t channels, int64_t num_labels,
                                          int64_t atrous, int64_t min_pixels, const int32_t* __restrict__ bucket_start,
                                          int32_t* __restrict__ bucket_cursor, int32_t* __restrict__ sorted_index,
                                          int32_t* __restrict__ sorted_label, T* __restrict__ packed) {
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    int64_t label;
    if (!kept_candidate(labels, frame_counts, i, frame_pixels, width, num_labels, atrous, min_pixels, &label)) {
      continue;
    }
    const int64_t b = i / candidates, m = i % candidates;
    const int64_t slot = b * candidates + atomicAdd(&bucket_cursor[b * num_labels + label], 1);
    sorted_index[slot] = static_cast<int32_t>(m);
    sorted_label[slot] = static_cast<int32_t>(label);
    // reference [B, T, C, Hr, Wr]: pixel m = t * Hr * Wr + yx of batch b.
    const int64_t t = m / frame_pixels, yx = m % frame_pixels;
    const T* src = reference + ((b * (candidates / frame_pixels) + t) * channels) * frame_pixels + yx;
    T* dst = packed + slot * channels;
    for (int64_t c = 0; c < channels; ++c) dst[c] = src[c * frame_pixels];
  }
}

// ---- matching --------------------------------------------------------------------------------------

template <typename T> struct GlobalTiling {
  static constexpr int kQueries = 128;  // threads (query pixels) per block
  static constexpr int kTile = 32;      // candidates per tile
  static constexpr int kChunk = 32;     // channels per shared-memory chunk
};
template <> struct GlobalTiling<double> {
  static constexpr int kQueries = 128;
  static constexpr int kTile = 16;
  static constexpr int kChunk = 16;
};

template <typename T>
__global__ void __launch_bounds__(GlobalTiling<T>::kQueries)
    global_match_kernel(const T* __restrict__ query, const T* __restrict__ packed,
                        const int32_t* __restrict__ sorted_index, const int32_t* __restrict__ sorted_label,
                        const int32_t* __restrict__ bucket_start, int64_t pixels, int64_t channels,
                        int64_t candidates, int64_t num_labels, int64_t blocks_per_batch,
                        const acc_t<T>* __restrict__ fg_bias, const acc_t<T>* __restrict__ bg_bias,
                        acc_t<T>* __restrict__ dist, T* __restrict__ fg, T* __restrict__ bg,
                        int32_t* __restrict__ argmin) {
  using A = acc_t<T>;
  constexpr int kQueries = GlobalTiling<T>::kQueries;
  constexpr int kTile = GlobalTiling<T>::kTile;
  constexpr int kChunk = GlobalTiling<T>::kChunk;
  __shared__ A tile[kTile][kChunk];
  __shared__ int32_t tile_label[kTile];
  __shared__ int32_t tile_index[kTile];

  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t p = (blockIdx.x % blocks_per_batch) * kQueries + threadIdx.x;
  const bool active = p < pixels;
  const T* q = query + b * channels * pixels + (active ? p : 0);  // channel c at q[c * pixels]
  const T* cands = packed + b * candidates * channels;
  const int64_t kept = bucket_start[b * (num_labels + 1) + num_labels];
  const int64_t out = b * num_labels * pixels + p;  // label l at out + l * pixels

  if (active) {
    for (int64_t l = 0; l < num_labels; ++l) {
      argmin[out + l * pixels] = kNoCandidate;
      dist[out + l * pixels] = A(0);
    }
  }

  // Running minimum of the label being scanned (the same label in every thread of the block).
  int64_t current = -1;
  A best_dist = A(0);
  int64_t best_index = kNoCandidate;

  for (int64_t start = 0; start < kept; start += kTile) {
    __syncthreads();  // the previous tile's labels have been read
    for (int k = threadIdx.x; k < kTile; k += kQueries) {
      const int64_t j = start + k;
      tile_label[k] = j < kept ? sorted_label[b * candidates + j] : -1;
      tile_index[k] = j < kept ? sorted_index[b * candidates + j] : kNoCandidate;
    }
    A acc[kTile];
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc[k] = A(0);

    for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
      __syncthreads();  // the previous chunk has been used
      for (int e = threadIdx.x; e < kTile * kChunk; e += kQueries) {
        const int k = e / kChunk, c = e % kChunk;
        const int64_t j = start + k, ch = c0 + c;
        tile[k][c] = (j < kept && ch < channels) ? static_cast<A>(cands[j * channels + ch]) : A(0);
      }
      __syncthreads();
      A qv[kChunk];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        qv[c] = (active && c0 + c < channels) ? static_cast<A>(q[(c0 + c) * pixels]) : A(0);
      }
#pragma unroll
      for (int k = 0; k < kTile; ++k) {
#pragma unroll
        for (int c = 0; c < kChunk; ++c) acc[k] = add_square(acc[k], qv[c] - tile[k][c]);
      }
    }
    __syncthreads();  // tile_label / tile_index visible even when channels == 0

#pragma unroll
    for (int k = 0; k < kTile; ++k) {
      if (start + k < kept) {
        const int64_t label = tile_label[k];
        const int64_t index = tile_index[k];
        if (label != current) {
          if (current >= 0 && active) {
            dist[out + current * pixels] = best_dist;
            argmin[out + current * pixels] = static_cast<int32_t>(best_index);
          }
          current = label;
          best_dist = acc[k];
          best_index = index;
        } else if (is_better(acc[k], index, best_dist, best_index)) {
          best_dist = acc[k];
          best_index = index;
        }
      }
    }
  }
  if (!active) return;
  if (current >= 0) {
    dist[out + current * pixels] = best_dist;
    argmin[out + current * pixels] = static_cast<int32_t>(best_index);
  }
  write_pixel_scores_strided<T, A, int32_t>(dist + out, argmin + out, pixels, num_labels, *fg_bias, *bg_bias,
                                            fg + out, bg + out, argmin + out, pixels);
}

template <typename T>
cudaError_t run_global_match(const GlobalMatchArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int kThreads = 256;
  const int64_t frame_pixels = a.ref_height * a.ref_width;
  const int64_t candidates = a.frames * frame_pixels;
  const int64_t total = a.batch * candidates;
  const int64_t L = a.num_labels;
  const bool counts = global_match_needs_frame_counts(a.atrous, a.min_pixels) && total > 0;
  const int32_t* frame_counts = counts ? a.frame_counts : nullptr;
  cudaError_t err;

  if (counts) {
    err = cudaMemsetAsync(a.frame_counts, 0, sizeof(int32_t) * a.batch * a.frames * L, stream);
    if (err != cudaSuccess) return err;
    count_frame_labels_kernel<<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(a.labels, total,
                                                                                             frame_pixels, L,
                                                                                             a.frame_counts);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  err = cudaMemsetAsync(a.bucket_counts, 0, sizeof(int32_t) * a.batch * L, stream);
  if (err != cudaSuccess) return err;
  if (total > 0) {
    count_buckets_kernel<<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
        a.labels, frame_counts, total, candidates, frame_pixels, a.ref_width, L, a.atrous, a.min_pixels,
        a.bucket_counts);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  bucket_offsets_kernel<<<static_cast<unsigned int>(a.batch), kScanThreads, 0, stream>>>(a.bucket_counts, L,
                                                                                         a.bucket_start,
                                                                                         a.bucket_cursor);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (total > 0) {
    scatter_candidates_kernel<T><<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
        a.labels, frame_counts, static_cast<const T*>(a.reference), total, candidates, frame_pixels, a.ref_width,
        a.channels, L, a.atrous, a.min_pixels, a.bucket_start, a.bucket_cursor, a.sorted_index, a.sorted_label,
        static_cast<T*>(a.packed));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  constexpr int kQueries = GlobalTiling<T>::kQueries;
  const int64_t blocks_per_batch = (a.pixels + kQueries - 1) / kQueries;
  const int64_t blocks = blocks_per_batch * a.batch;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  global_match_kernel<T><<<static_cast<unsigned int>(blocks), kQueries, 0, stream>>>(
      static_cast<const T*>(a.query), static_cast<const T*>(a.packed), a.sorted_index, a.sorted_label,
      a.bucket_start, a.pixels, a.channels, candidates, L, blocks_per_batch, static_cast<const A*>(a.fg_bias),
      static_cast<const A*>(a.bg_bias), static_cast<A*>(a.dist), static_cast<T*>(a.fg), static_cast<T*>(a.bg),
      a.argmin);
  return cudaGetLastError();
}

}  // namespace

bool global_match_needs_frame_counts(int64_t atrous, int64_t min_pixels) { return atrous > 1 && min_pixels > 0; }

cudaError_t launch_global_match(const GlobalMatchArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  if (args.batch >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  if (args.pixels == 0) return cudaSuccess;
  CFBI_CUDA_DISPATCH(args.dtype, return run_global_match<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace cfbi
