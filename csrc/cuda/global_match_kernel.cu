// CUDA forward of cfbi::global_match.
//
// 1. Candidates of each batch element are bucketed by label (counting sort): count the valid pixels of
//    every (frame, label) when the atrous rule needs them, count the kept candidates of every label,
//    prefix-sum the counts into bucket offsets, and scatter the kept candidates into label order: their
//    flattened index, label, embedding (channel-major, so tiles load coalesced) and squared norm. The
//    buffers hold `capacity` candidates per batch element: with atrous > 1 and no small-label rule that is
//    the atrous grid, known on the host, so stride-4 matching packs a quarter of the reference.
//    For float32, every channel's centre (selection_centre: about the mean of the kept candidates, summed
//    in double in reference order, so that it does not depend on the scatter order) is subtracted from the packed
//    candidates, whose norms are then taken, and from the queries as they are staged.
//    The order inside a bucket does not matter: every minimum compares (distance, index) pairs with
//    is_better, a total order.
// 2. A block takes kQueries query pixels and a range of candidate tiles (the candidates are split across
//    blockIdx.y when there are too few query blocks to fill the device). Per tile, the block computes the
//    kQueries x tile products in registers from channel chunks staged in shared memory: on tensor cores
//    (wmma, float accumulation) for float16 / bfloat16, as a register-blocked CUDA-core loop otherwise.
//    float / 16-bit inputs use the dot-product form |r|^2 - 2 q.r (the |q|^2 term does not change the order),
//    of the centred values for float32 (invariant to an offset shared by queries and candidates); float64
//    keeps the exact direct differences. The products go to shared memory and each thread
//    scans its query's row in bucket order with a running minimum of the current label.
// 3. A finished label run is merged into a per-(label, pixel) 64-bit key (order-preserving score bits,
//    candidate index) with atomicMin, so that splits merge in any order with the tie rule intact. float64
//    runs one split and stores (distance, index) directly.
// 4. One thread per query pixel recomputes the exact distance of each label's winner (direct differences,
//    as the CPU kernel) and writes fg, bg and argmin (write_pixel_scores_strided). No [N x M] buffer exists.
#include <type_traits>

#include <mma.h>

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
                                          int64_t capacity,
                                          int64_t frame_pixels, int64_t width, int64_t channels, int64_t num_labels,
                                          int64_t atrous, int64_t min_pixels, const int32_t* __restrict__ bucket_start,
                                          int32_t* __restrict__ bucket_cursor, int32_t* __restrict__ sorted_index,
                                          int32_t* __restrict__ sorted_label, T* __restrict__ packed,
                                          acc_t<T>* __restrict__ norms) {
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    int64_t label;
    if (!kept_candidate(labels, frame_counts, i, frame_pixels, width, num_labels, atrous, min_pixels, &label)) {
      continue;
    }
    const int64_t b = i / candidates, m = i % candidates;
    const int64_t slot = b * capacity + atomicAdd(&bucket_cursor[b * num_labels + label], 1);
    sorted_index[slot] = static_cast<int32_t>(m);
    sorted_label[slot] = static_cast<int32_t>(label);
    // reference [B, T, C, Hr, Wr]: pixel m = t * Hr * Wr + yx of batch b.
    const int64_t t = m / frame_pixels, yx = m % frame_pixels;
    const T* src = reference + ((b * (candidates / frame_pixels) + t) * channels) * frame_pixels + yx;
    T* dst = packed + b * channels * capacity + (slot - b * capacity);  // [B, C, cap]: channel c at dst[c * cap]
    acc_t<T> norm = acc_t<T>(0);
    for (int64_t c = 0; c < channels; ++c) {
      dst[c * capacity] = src[c * frame_pixels];
      norm = add_square(norm, static_cast<acc_t<T>>(src[c * frame_pixels]));
    }
    norms[slot] = norm;
  }
}

// One block per (batch element, channel): the channel's selection centre over the kept candidates, in reference
// order with a fixed reduction tree (the same value on every run).
constexpr int kCentreThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kCentreThreads)
    selection_centre_kernel(const int64_t* __restrict__ labels, const int32_t* __restrict__ frame_counts,
                            const T* __restrict__ reference, int64_t candidates, int64_t frame_pixels, int64_t width,
                            int64_t channels, int64_t num_labels, int64_t atrous, int64_t min_pixels,
                            float* __restrict__ centre) {
  __shared__ double sums[kCentreThreads];
  __shared__ double sum_squares[kCentreThreads];
  __shared__ long long counts[kCentreThreads];
  const int64_t b = blockIdx.x / channels, c = blockIdx.x % channels;
  const int tid = threadIdx.x;
  double sum = 0.0, sum_square = 0.0;
  long long count = 0;
  for (int64_t m = tid; m < candidates; m += kCentreThreads) {
    int64_t label;
    if (!kept_candidate(labels, frame_counts, b * candidates + m, frame_pixels, width, num_labels, atrous,
                        min_pixels, &label)) {
      continue;
    }
    const int64_t t = m / frame_pixels, yx = m % frame_pixels;
    const double value = static_cast<float>(reference[((b * (candidates / frame_pixels) + t) * channels + c) *
                                                      frame_pixels + yx]);
    if (counts_for_centre(value)) {
      sum += value;
      sum_square += value * value;
      ++count;
    }
  }
  sums[tid] = sum;
  sum_squares[tid] = sum_square;
  counts[tid] = count;
  __syncthreads();
  for (int half = kCentreThreads / 2; half > 0; half /= 2) {
    if (tid < half) {
      sums[tid] += sums[tid + half];
      sum_squares[tid] += sum_squares[tid + half];
      counts[tid] += counts[tid + half];
    }
    __syncthreads();
  }
  if (tid == 0) centre[blockIdx.x] = selection_centre(sums[0], sum_squares[0], counts[0]);
}

// Centres the packed candidates (float32) and takes their squared norms again.
template <typename T>
__global__ void centre_packed_kernel(const int32_t* __restrict__ bucket_start, const float* __restrict__ centre,
                                     int64_t batch, int64_t capacity, int64_t channels, int64_t num_labels,
                                     T* __restrict__ packed, float* __restrict__ norms) {
  for (int64_t i = global_thread_index(); i < batch * capacity; i += grid_thread_count()) {
    const int64_t b = i / capacity, k = i % capacity;
    if (k >= bucket_start[b * (num_labels + 1) + num_labels]) continue;
    T* values = packed + b * channels * capacity + k;  // channel c at values[c * capacity]
    float norm = 0.0f;
    for (int64_t c = 0; c < channels; ++c) {
      const T centred = static_cast<T>(static_cast<float>(values[c * capacity]) - centre[b * channels + c]);
      values[c * capacity] = centred;
      norm = add_square(norm, static_cast<float>(centred));
    }
    norms[i] = norm;
  }
}

// ---- matching --------------------------------------------------------------------------------------

constexpr int kQueries = 128;           // query pixels (threads) per block
constexpr int kQueryLanes = 16;         // CUDA-core micro-tile: thread t owns queries t % 16 + 16 i ...
constexpr int kQueriesPerThread = kQueries / kQueryLanes;
constexpr int kCandidateLanes = kQueries / kQueryLanes;  // ... and candidates t / 16 + 8 j
constexpr int kScoreStride = kQueries + 4;  // products stored [candidate][query]: conflict-free row scans
constexpr int kMaxSplits = 64;

// float64 selects with exact distances; the other types with the dot-product form and an exact recompute.
template <typename T> constexpr bool kDotForm = !std::is_same<T, double>::value;
// float32 centres the dot-product form (selection_centre). 16-bit inputs do not: their centred values would be
// rounded to 16 bits for the tensor cores, which breaks exact ties that the raw values keep.
template <typename T> constexpr bool kCentred = std::is_same<T, float>::value;

// Tensor cores: float16 from sm_70, bfloat16 from sm_80; older targets fall back to CUDA cores.
template <typename T> struct MmaInput { using type = void; };
template <> struct MmaInput<Float16> { using type = __half; };
template <> struct MmaInput<BFloat16> { using type = __nv_bfloat16; };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
template <typename T> constexpr bool kUseMma = false;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <typename T> constexpr bool kUseMma = std::is_same<T, Float16>::value;
#else
template <typename T> constexpr bool kUseMma = !std::is_void<typename MmaInput<T>::type>::value;
#endif

// CUDA-core tiling: channels per staged chunk and candidates per thread (tile = 8 x that).
template <typename T> struct SimtTiling {
  static constexpr int kChunk = 16;
  static constexpr int kCandidatesPerThread = 8;
};
template <> struct SimtTiling<double> {
  static constexpr int kChunk = 8;
  static constexpr int kCandidatesPerThread = 4;  // keeps the products tile in 48 KB of shared memory
};

// Tensor-core tiling: 4 warps x (32 queries x 64 candidates) of 16 x 16 x 16 fragments.
constexpr int kMmaTile = 64;
constexpr int kMmaChunk = 32;
constexpr int kMmaQueryStride = kQueries + 8;   // leading dimensions: multiples of 16 bytes, and every
constexpr int kMmaCandStride = kMmaTile + 8;    // fragment start 32-byte aligned

// Candidates per tile; the same on both paths, so host code (which sees no __CUDA_ARCH__) agrees with every
// device target.
template <typename T>
constexpr int kTileCandidates = kCandidateLanes * SimtTiling<T>::kCandidatesPerThread;
static_assert(kTileCandidates<float> == kMmaTile, "16-bit tiles must not depend on the target");

// Shared memory of the matching kernel: the staged chunk, then (reusing it) the tile's products.
template <typename T>
constexpr size_t kStageBytes = kUseMma<T> ? kMmaChunk * (kMmaQueryStride + kMmaCandStride) * 2
                                          : SimtTiling<T>::kChunk * (kQueries + kTileCandidates<T>) * sizeof(acc_t<T>);
template <typename T>
constexpr size_t kProductBytes = static_cast<size_t>(kTileCandidates<T>) * kScoreStride * sizeof(acc_t<T>);
template <typename T>
constexpr size_t kSharedBytes = kStageBytes<T> > kProductBytes<T> ? kStageBytes<T> : kProductBytes<T>;

// Where a tile's inputs are: queries p0.. of one batch element ([C, N]) and candidates start.. ([C, capacity]).
// Queries are centred as they are staged (float32; centre is null for the other types).
template <typename T>
struct TileInputs {
  const T* query;
  const T* cands;
  int64_t p0, pixels, start, kept, capacity, channels;
  const float* centre;  // [C] of this batch element

  __device__ __forceinline__ T query_at(int64_t c, int64_t i) const {
    if (c >= channels || p0 + i >= pixels) return T(0.f);
    if constexpr (kCentred<T>) {
      return static_cast<T>(static_cast<float>(query[c * pixels + p0 + i]) - centre[c]);
    } else {
      return query[c * pixels + p0 + i];
    }
  }
  __device__ __forceinline__ T cand_at(int64_t c, int64_t k) const {
    return (c < channels && start + k < kept) ? cands[c * capacity + start + k] : T(0.f);
  }
};

// products[k * kScoreStride + i] = q_i . r_k (dot form) or |q_i - r_k|^2 for the tile, on CUDA cores.
template <typename T>
__device__ void tile_products_simt(const TileInputs<T>& in, unsigned char* smem, acc_t<T>* products) {
  using A = acc_t<T>;
  constexpr int kChunk = SimtTiling<T>::kChunk;
  constexpr int kPer = SimtTiling<T>::kCandidatesPerThread;
  constexpr int kTile = kTileCandidates<T>;
  A* q_stage = reinterpret_cast<A*>(smem);  // [kChunk][kQueries]
  A* c_stage = q_stage + kChunk * kQueries;  // [kChunk][kTile]
  const int tq = threadIdx.x % kQueryLanes, tk = threadIdx.x / kQueryLanes;

  A acc[kQueriesPerThread][kPer];
#pragma unroll
  for (int i = 0; i < kQueriesPerThread; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = A(0);
  }
  for (int64_t c0 = 0; c0 < in.channels; c0 += kChunk) {
    __syncthreads();  // the previous chunk (or the previous tile's products) has been read
    for (int e = threadIdx.x; e < kChunk * kQueries; e += kQueries) {
      q_stage[e] = static_cast<A>(in.query_at(c0 + e / kQueries, e % kQueries));
    }
    for (int e = threadIdx.x; e < kChunk * kTile; e += kQueries) {
      c_stage[e] = static_cast<A>(in.cand_at(c0 + e / kTile, e % kTile));
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kChunk; ++c) {
      A qv[kQueriesPerThread], cv[kPer];
#pragma unroll
      for (int i = 0; i < kQueriesPerThread; ++i) qv[i] = q_stage[c * kQueries + tq + kQueryLanes * i];
#pragma unroll
      for (int j = 0; j < kPer; ++j) cv[j] = c_stage[c * kTile + tk + kCandidateLanes * j];
#pragma unroll
      for (int i = 0; i < kQueriesPerThread; ++i) {
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
          if constexpr (kDotForm<T>) {
            acc[i][j] += qv[i] * cv[j];
          } else {
            acc[i][j] = add_square(acc[i][j], qv[i] - cv[j]);
          }
        }
      }
    }
  }
  __syncthreads();  // the stage (which the products overwrite) has been read
#pragma unroll
  for (int i = 0; i < kQueriesPerThread; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) products[(tk + kCandidateLanes * j) * kScoreStride + tq + kQueryLanes * i] = acc[i][j];
  }
  __syncthreads();
}

// The same on tensor cores (dot products only): warp w computes queries 32 w.. x all 64 candidates.
template <typename T>
__device__ void tile_products_mma(const TileInputs<T>& in, unsigned char* smem, float* products) {
  if constexpr (kUseMma<T>) {
    namespace wmma = nvcuda::wmma;
    using M16 = typename MmaInput<T>::type;
    M16* q_stage = reinterpret_cast<M16*>(smem);            // [kMmaChunk][kMmaQueryStride]
    M16* c_stage = q_stage + kMmaChunk * kMmaQueryStride;   // [kMmaChunk][kMmaCandStride]
    const int warp = threadIdx.x / 32;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) wmma::fill_fragment(acc[mi][ni], 0.0f);
    }
    for (int64_t c0 = 0; c0 < in.channels; c0 += kMmaChunk) {
      __syncthreads();
      for (int e = threadIdx.x; e < kMmaChunk * kQueries; e += kQueries) {
        q_stage[(e / kQueries) * kMmaQueryStride + e % kQueries] = in.query_at(c0 + e / kQueries, e % kQueries).value;
      }
      for (int e = threadIdx.x; e < kMmaChunk * kMmaTile; e += kQueries) {
        c_stage[(e / kMmaTile) * kMmaCandStride + e % kMmaTile] = in.cand_at(c0 + e / kMmaTile, e % kMmaTile).value;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kMmaChunk; kk += 16) {
        // A = queries x channels, stored [channel][query]: col-major; B = channels x candidates: row-major.
        wmma::fragment<wmma::matrix_a, 16, 16, 16, M16, wmma::col_major> a[2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          wmma::load_matrix_sync(a[mi], q_stage + kk * kMmaQueryStride + warp * 32 + mi * 16, kMmaQueryStride);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, M16, wmma::row_major> b;
          wmma::load_matrix_sync(b, c_stage + kk * kMmaCandStride + ni * 16, kMmaCandStride);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) wmma::mma_sync(acc[mi][ni], a[mi], b, acc[mi][ni]);
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        wmma::store_matrix_sync(products + ni * 16 * kScoreStride + warp * 32 + mi * 16, acc[mi][ni], kScoreStride,
                                wmma::mem_col_major);
      }
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kQueries)
    global_match_kernel(const T* __restrict__ query, const T* __restrict__ packed, const acc_t<T>* __restrict__ norms,
                        const int32_t* __restrict__ sorted_index, const int32_t* __restrict__ sorted_label,
                        const int32_t* __restrict__ bucket_start, const float* __restrict__ centre,
                        int64_t pixels, int64_t channels, int64_t capacity, int64_t num_labels,
                        int64_t blocks_per_batch,
                        unsigned long long* __restrict__ keys, unsigned long long* __restrict__ second_keys,
                        acc_t<T>* __restrict__ dist, int32_t* __restrict__ argmin) {
  using A = acc_t<T>;
  constexpr int kTile = kTileCandidates<T>;
  alignas(128) __shared__ unsigned char smem[kSharedBytes<T>];
  __shared__ int32_t tile_label[kTile];
  __shared__ int32_t tile_index[kTile];
  __shared__ A tile_norm[kTile];
  A* products = reinterpret_cast<A*>(smem);

  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t p0 = (blockIdx.x % blocks_per_batch) * kQueries;
  const int64_t p = p0 + threadIdx.x;
  const bool active = p < pixels;
  const int64_t kept = bucket_start[b * (num_labels + 1) + num_labels];
  const int64_t tiles = (kept + kTile - 1) / kTile;
  const int64_t per_split = (tiles + gridDim.y - 1) / gridDim.y;
  const int64_t first_tile = blockIdx.y * per_split;
  const int64_t last_tile = first_tile + per_split < tiles ? first_tile + per_split : tiles;
  const int64_t out = b * num_labels * pixels + p;  // label l at out + l * pixels

  int64_t current = -1;  // label of the running minimum (the same in every thread)
  A best = A(0), second = A(0);
  int64_t best_index = kNoCandidate, second_index = kNoCandidate;
  auto flush = [&]() {
    if (current < 0 || !active) return;
    if constexpr (kDotForm<T>) {
      // The two smallest keys over the splits, for the rounding test of finish_kernel: a key that does not stay
      // the minimum (it loses, or a later one displaces it) goes to second_keys, so that ends as the second
      // smallest of all.
      const unsigned long long key = selection_key(best, best_index);
      const unsigned long long old = atomicMin(&keys[out + current * pixels], key);
      atomicMin(&second_keys[out + current * pixels], key < old ? old : key);
      if (second_index >= 0) atomicMin(&second_keys[out + current * pixels], selection_key(second, second_index));
    } else {
      dist[out + current * pixels] = best;
      argmin[out + current * pixels] = static_cast<int32_t>(best_index);
    }
  };

  for (int64_t tile = first_tile; tile < last_tile; ++tile) {
    const int64_t start = tile * kTile;
    __syncthreads();  // the previous tile's scan is done with the shared arrays
    for (int k = threadIdx.x; k < kTile; k += kQueries) {
      const int64_t j = start + k;
      tile_label[k] = j < kept ? sorted_label[b * capacity + j] : -1;
      tile_index[k] = j < kept ? sorted_index[b * capacity + j] : kNoCandidate;
      if constexpr (kDotForm<T>) tile_norm[k] = j < kept ? norms[b * capacity + j] : A(0);
    }
    const TileInputs<T> in{query + b * channels * pixels, packed + b * channels * capacity, p0, pixels, start,
                           kept, capacity, channels, centre == nullptr ? nullptr : centre + b * channels};
    if constexpr (kUseMma<T>) {
      tile_products_mma<T>(in, smem, products);
    } else {
      tile_products_simt<T>(in, smem, products);
    }
    const int64_t count = kept - start < kTile ? kept - start : kTile;
    for (int k = 0; k < count; ++k) {
      const int64_t label = tile_label[k], index = tile_index[k];
      const A product = products[k * kScoreStride + threadIdx.x];
      const A score = kDotForm<T> ? tile_norm[k] - A(2) * product : product;
      if (label != current) {
        flush();
        current = label;
        best = score;
        best_index = index;
        second_index = kNoCandidate;
      } else if (is_better(score, index, best, best_index)) {
        second = best;
        second_index = best_index;
        best = score;
        best_index = index;
      } else if (kDotForm<T> && is_better(score, index, second, second_index)) {
        second = score;
        second_index = index;
      }
    }
  }
  flush();
}

// One thread per query pixel: the exact distance of every label's winner, then fg, bg and argmin. Where the
// dot-product selection may have been decided by rounding (selection_is_certain, from the two smallest keys), the
// label's bucket is scanned again with exact distances by the whole block, one such (pixel, label) at a time, so that
// a rare rescan costs the block M_l / kFinishThreads distances per thread instead of one thread M_l.
constexpr int kFinishThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const T* __restrict__ query, const T* __restrict__ reference,
                  const unsigned long long* __restrict__ keys, const unsigned long long* __restrict__ second_keys,
                  const int32_t* __restrict__ sorted_index, const int32_t* __restrict__ bucket_start,
                  const float* __restrict__ centre, int64_t capacity, int64_t batch, int64_t pixels,
                  int64_t channels, int64_t frame_pixels, int64_t frames, int64_t num_labels,
                  const acc_t<T>* __restrict__ fg_bias, const acc_t<T>* __restrict__ bg_bias,
                  acc_t<T>* __restrict__ dist, T* __restrict__ fg, T* __restrict__ bg,
                  int32_t* __restrict__ argmin) {
  using A = acc_t<T>;
  __shared__ int pending_count;
  __shared__ int pending[kFinishThreads];
  __shared__ unsigned long long rescan_key;
  // Every thread of the block runs the same iterations (the rescans synchronise the block).
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x; first < batch * pixels;
       first += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = first + threadIdx.x;
    const bool active = i < batch * pixels;
    const int64_t b = active ? i / pixels : 0, p = active ? i % pixels : 0;
    const int64_t out = b * num_labels * pixels + p;
    if constexpr (kDotForm<T>) {
      const T* q = query + b * channels * pixels + p;
      // ||q'||^2 of the query as the selection saw it (centred as staged for float32, raw for 16-bit).
      float query_norm = 0.0f;
      for (int64_t c = 0; active && c < channels; ++c) {
        const float value = static_cast<float>(q[c * pixels]);
        query_norm = add_square(
            query_norm, centre == nullptr ? value : static_cast<float>(static_cast<T>(value - centre[b * channels + c])));
      }
      // reference [B, T, C, Hr, Wr]: candidate index = t * Hr * Wr + yx.
      auto candidate = [&](int64_t batch_index, int64_t index) {
        return reference + ((batch_index * frames + index / frame_pixels) * channels) * frame_pixels +
               index % frame_pixels;
      };
      for (int64_t l = 0; l < num_labels; ++l) {
        if (threadIdx.x == 0) pending_count = 0;
        __syncthreads();
        const unsigned long long key = active ? keys[out + l * pixels] : kNoSelectionKey;
        if (key != kNoSelectionKey) {
          const int64_t index = selection_key_index(key);
          const A best = squared_distance<T, A>(q, pixels, candidate(b, index), frame_pixels, channels);
          dist[out + l * pixels] = best;
          argmin[out + l * pixels] = static_cast<int32_t>(index);
          if (selection_needs_exact_scan(selection_key_score(key), selection_key_score(second_keys[out + l * pixels]),
                                         query_norm, static_cast<float>(best), channels)) {
            pending[atomicAdd(&pending_count, 1)] = threadIdx.x;
          }
        } else if (active) {
          argmin[out + l * pixels] = kNoCandidate;
        }
        __syncthreads();
        const int count = pending_count;
        for (int e = 0; e < count; ++e) {
          // The pixel of thread pending[e], label l: every thread takes a share of the bucket.
          const int64_t ti = first + pending[e];
          const int64_t tb = ti / pixels, tp = ti % pixels;
          const T* tq = query + tb * channels * pixels + tp;
          if (threadIdx.x == 0) rescan_key = kNoSelectionKey;
          __syncthreads();
          const int32_t* bucket = bucket_start + tb * (num_labels + 1);
          A local = A(0);
          int64_t local_index = kNoCandidate;
          for (int64_t k = bucket[l] + threadIdx.x; k < bucket[l + 1]; k += blockDim.x) {
            const int64_t j = sorted_index[tb * capacity + k];
            const A d = squared_distance<T, A>(tq, pixels, candidate(tb, j), frame_pixels, channels);
            if (is_better(d, j, local, local_index)) {  // buckets are not in index order: the full tie rule
              local = d;
              local_index = j;
            }
          }
          if (local_index >= 0) atomicMin(&rescan_key, selection_key(static_cast<float>(local), local_index));
          __syncthreads();
          if (static_cast<int>(threadIdx.x) == pending[e]) {
            const int64_t index = selection_key_index(rescan_key);
            dist[out + l * pixels] = squared_distance<T, A>(q, pixels, candidate(b, index), frame_pixels, channels);
            argmin[out + l * pixels] = static_cast<int32_t>(index);
          }
          __syncthreads();
        }
      }
    }
    if (!active) continue;
    write_pixel_scores_strided<T, A, int32_t>(dist + out, argmin + out, pixels, num_labels, *fg_bias, *bg_bias,
                                              fg + out, bg + out, argmin + out, pixels);
  }
}

// Candidate splits: enough blocks for about two per multiprocessor, at least one tile per split.
template <typename T>
int64_t candidate_splits(int64_t query_blocks, int64_t candidates) {
  if (!kDotForm<T>) return 1;  // float64 stores its minima directly
  int device = 0, multiprocessors = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  const int64_t tiles = (candidates + kTileCandidates<T> - 1) / kTileCandidates<T>;
  int64_t splits = (2 * multiprocessors + query_blocks - 1) / query_blocks;
  splits = splits < tiles ? splits : tiles;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  return splits > 1 ? splits : 1;
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
        a.labels, frame_counts, static_cast<const T*>(a.reference), total, candidates, a.capacity, frame_pixels,
        a.ref_width,
        a.channels, L, a.atrous, a.min_pixels, a.bucket_start, a.bucket_cursor, a.sorted_index, a.sorted_label,
        static_cast<T*>(a.packed), static_cast<A*>(a.norms));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if constexpr (kCentred<T>) {
      if (a.channels > 0) {  // no channel, nothing to centre
        if (a.batch * a.channels >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
        selection_centre_kernel<T><<<static_cast<unsigned int>(a.batch * a.channels), kCentreThreads, 0, stream>>>(
            a.labels, frame_counts, static_cast<const T*>(a.reference), candidates, frame_pixels, a.ref_width,
            a.channels, L, a.atrous, a.min_pixels, a.centre);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
        centre_packed_kernel<T><<<grid_stride_blocks(a.batch * a.capacity, kThreads), kThreads, 0, stream>>>(
            a.bucket_start, a.centre, a.batch, a.capacity, a.channels, L, static_cast<T*>(a.packed),
            static_cast<float*>(a.norms));
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
      }
    }
  }

  // Selections start empty: all-ones keys (best and second), or argmin -1 where float64 stores its minima directly.
  const int64_t entries = a.batch * L * a.pixels;
  unsigned long long* second_keys = kDotForm<T> ? a.keys + entries : nullptr;
  err = kDotForm<T> ? cudaMemsetAsync(a.keys, 0xff, 2 * sizeof(unsigned long long) * entries, stream)
                    : cudaMemsetAsync(a.argmin, 0xff, sizeof(int32_t) * entries, stream);
  if (err != cudaSuccess) return err;
  const int64_t blocks_per_batch = (a.pixels + kQueries - 1) / kQueries;
  const int64_t blocks = blocks_per_batch * a.batch;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  if (total > 0) {
    const dim3 grid(static_cast<unsigned int>(blocks), static_cast<unsigned int>(candidate_splits<T>(blocks, a.capacity)));
    global_match_kernel<T><<<grid, kQueries, 0, stream>>>(
        static_cast<const T*>(a.query), static_cast<const T*>(a.packed), static_cast<const A*>(a.norms),
        a.sorted_index, a.sorted_label, a.bucket_start, kCentred<T> ? a.centre : nullptr, a.pixels, a.channels,
        a.capacity, L, blocks_per_batch, a.keys, second_keys,
        static_cast<A*>(a.dist), a.argmin);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  finish_kernel<T><<<grid_stride_blocks(a.batch * a.pixels, kFinishThreads), kFinishThreads, 0, stream>>>(
      static_cast<const T*>(a.query), static_cast<const T*>(a.reference), a.keys, second_keys, a.sorted_index,
      a.bucket_start, kCentred<T> ? a.centre : nullptr, a.capacity, a.batch, a.pixels, a.channels,
      frame_pixels, a.frames, L, static_cast<const A*>(a.fg_bias), static_cast<const A*>(a.bg_bias),
      static_cast<A*>(a.dist), static_cast<T*>(a.fg), static_cast<T*>(a.bg), a.argmin);
  return cudaGetLastError();
}

}  // namespace

bool global_match_needs_frame_counts(int64_t atrous, int64_t min_pixels) { return atrous > 1 && min_pixels > 0; }

int64_t global_match_capacity(int64_t frames, int64_t ref_height, int64_t ref_width, int64_t atrous,
                              int64_t min_pixels) {
  if (atrous > 1 && min_pixels == 0) {  // the atrous grid alone: keeps_global_candidate
    return frames * ((ref_height + atrous - 1) / atrous) * ((ref_width + atrous - 1) / atrous);
  }
  return frames * ref_height * ref_width;
}

cudaError_t launch_global_match(const GlobalMatchArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  if (args.batch >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;
  if (args.pixels == 0) return cudaSuccess;
  CFBI_CUDA_DISPATCH(args.dtype, return run_global_match<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace cfbi
