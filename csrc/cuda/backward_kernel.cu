// CUDA backward shared by cfbi::global_match and cfbi::local_match (mirrors csrc/cpu/backward_cpu.cpp).
//
// Entries e = (b, l, k, p) of the outputs, P = K * N entries per label, per_batch = L * P.
// 1. coef[e] = d loss / d (min distance + bias) via pixel_distance_grads (one thread per (b, k, p)); every
//    argmin is checked to be -1 or a candidate (device-side assert).
// 2. Bias gradients: fixed-shape two-stage block reduction (deterministic).
// 3. Query gradient: one thread per (b, c, p) gathers its selected candidates, entries in increasing order.
// 4. Candidate gradient:
//    - default: one thread per entry, atomicAdd into an acc-typed buffer;
//    - deterministic (torch.use_deterministic_algorithms): a stable radix sort of the entries by
//      (b, argmin) (entries without gradient sort last), then one thread per (b, c, candidate) finds its
//      run by binary search and sums it in increasing entry order, as the CPU kernel does.
#include <cub/device/device_radix_sort.cuh>

#include <type_traits>

#include "common.cuh"

namespace cfbi {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBiasThreads = 256;
constexpr int64_t kBiasItemsPerBlock = 16 * 1024;
constexpr int64_t kMaxBiasBlocks = 1024;

template <typename T>
__global__ void coef_kernel(const T* __restrict__ grad_fg, const T* __restrict__ grad_bg, const T* __restrict__ fg,
                            const int32_t* __restrict__ argmin, int64_t batch, int64_t num_labels, int64_t plane,
                            int64_t num_candidates, const T* __restrict__ query, const T* __restrict__ candidates,
                            int64_t channels, int64_t pixels, const acc_t<T>* __restrict__ fg_bias,
                            const acc_t<T>* __restrict__ bg_bias, acc_t<T>* __restrict__ coef) {
  using A = acc_t<T>;
  const int64_t per_batch = num_labels * plane;
  for (int64_t i = global_thread_index(); i < batch * plane; i += grid_thread_count()) {
    const int64_t b = i / plane, offset = b * per_batch + i % plane;
    for (int64_t l = 0; l < num_labels; ++l) {
      const int64_t index = argmin[offset + l * plane];
      CFBI_DEVICE_CHECK(index >= -1 && index < num_candidates,
                        "argmin holds indices outside the reference / previous frame");
    }
    if constexpr (std::is_same<T, A>::value) {
      pixel_distance_grads<T, A>(grad_fg + offset, grad_bg + offset, fg + offset, argmin + offset, num_labels, plane,
                                 coef + offset);
    } else {  // float16 / bfloat16: the slope from the score recomputed in float
      const DistanceSlope<T, A> slope{query + b * channels * pixels + (i % plane) % pixels, pixels,
                                      candidates + b * channels * num_candidates, num_candidates, channels,
                                      argmin + offset, plane, *fg_bias, *bg_bias};
      pixel_distance_grads<T, A>(grad_fg + offset, grad_bg + offset, fg + offset, argmin + offset, num_labels, plane,
                                 coef + offset, slope);
    }
  }
}

// Sums *bg and *fg over the kBiasThreads threads of the block with a fixed tree (deterministic); every
// thread gets the totals back.
template <typename A>
__device__ void block_sum_pair(A* bg, A* fg) {
  __shared__ A shared_bg[kBiasThreads];
  __shared__ A shared_fg[kBiasThreads];
  shared_bg[threadIdx.x] = *bg;
  shared_fg[threadIdx.x] = *fg;
  __syncthreads();
  for (int width = kBiasThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) {
      shared_bg[threadIdx.x] += shared_bg[threadIdx.x + width];
      shared_fg[threadIdx.x] += shared_fg[threadIdx.x + width];
    }
    __syncthreads();
  }
  *bg = shared_bg[0];
  *fg = shared_fg[0];
}

// Stage 1: block g sums items [g * chunk, (g + 1) * chunk) into partials[g] (rows of label 0) and
// partials[blocks + g] (other labels). Fixed assignment of items to threads, fixed tree: deterministic.
template <typename A>
__global__ void __launch_bounds__(kBiasThreads)
    bias_partials_kernel(const A* __restrict__ coef, int64_t total, int64_t plane, int64_t num_labels, int64_t chunk,
                         A* __restrict__ partials) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t end = begin + chunk < total ? begin + chunk : total;
  A bg_sum = A(0), fg_sum = A(0);
  for (int64_t e = begin + threadIdx.x; e < end; e += kBiasThreads) {
    const A c = coef[e];
    if ((e / plane) % num_labels == 0) {
      bg_sum += c;
    } else {
      fg_sum += c;
    }
  }
  block_sum_pair(&bg_sum, &fg_sum);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = bg_sum;
    partials[gridDim.x + blockIdx.x] = fg_sum;
  }
}

// Stage 2: one block adds the partials of stage 1.
template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_total_kernel(const acc_t<T>* __restrict__ partials, int64_t blocks, T* __restrict__ grad_fg_bias,
                      T* __restrict__ grad_bg_bias) {
  using A = acc_t<T>;
  A bg_sum = A(0), fg_sum = A(0);
  for (int64_t g = threadIdx.x; g < blocks; g += kBiasThreads) {
    bg_sum += partials[g];
    fg_sum += partials[blocks + g];
  }
  block_sum_pair(&bg_sum, &fg_sum);
  if (threadIdx.x == 0) {
    *grad_bg_bias = static_cast<T>(bg_sum);
    *grad_fg_bias = static_cast<T>(fg_sum);
  }
}

// grad_query[b, c, p] = sum over the entries (l, k) of p, in order, of 2 coef (q - r[argmin]).
template <typename T>
__global__ void grad_query_kernel(const acc_t<T>* __restrict__ coef, const int32_t* __restrict__ argmin,
                                  const T* __restrict__ query, const T* __restrict__ candidates, int64_t batch,
                                  int64_t channels, int64_t pixels, int64_t entries_per_pixel,
                                  int64_t num_candidates, T* __restrict__ grad_query) {
  using A = acc_t<T>;
  const int64_t total = batch * channels * pixels;
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    const int64_t p = i % pixels;
    const int64_t bc = i / pixels;  // b * channels + c
    const int64_t b = bc / channels;
    const A q = static_cast<A>(query[i]);
    const T* r = candidates + bc * num_candidates;
    A grad = A(0);
    for (int64_t e = b * entries_per_pixel * pixels + p; e < (b + 1) * entries_per_pixel * pixels; e += pixels) {
      const A c = coef[e];
      if (c == A(0)) continue;
      grad += A(2) * c * (q - static_cast<A>(r[argmin[e]]));
    }
    grad_query[i] = static_cast<T>(grad);
  }
}

// Atomic path: every entry with a gradient adds -2 coef (q - r) to its candidate, for every channel.
template <typename T>
__global__ void grad_candidates_atomic_kernel(const acc_t<T>* __restrict__ coef, const int32_t* __restrict__ argmin,
                                              const T* __restrict__ query, const T* __restrict__ candidates,
                                              int64_t batch, int64_t channels, int64_t pixels, int64_t per_batch,
                                              int64_t num_candidates, acc_t<T>* __restrict__ grad) {
  using A = acc_t<T>;
  for (int64_t e = global_thread_index(); e < batch * per_batch; e += grid_thread_count()) {
    const A c = coef[e];
    if (c == A(0)) continue;
    const int64_t b = e / per_batch, p = e % pixels;
    const int64_t a = argmin[e];
    const T* q = query + b * channels * pixels + p;
    const T* r = candidates + b * channels * num_candidates + a;
    A* g = grad + b * channels * num_candidates + a;
    for (int64_t ch = 0; ch < channels; ++ch) {
      atomicAdd(g + ch * num_candidates,
                -(A(2) * c * (static_cast<A>(q[ch * pixels]) - static_cast<A>(r[ch * num_candidates]))));
    }
  }
}

template <typename T>
__global__ void cast_kernel(const acc_t<T>* __restrict__ in, int64_t total, T* __restrict__ out) {
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) out[i] = static_cast<T>(in[i]);
}

// Deterministic path, step 1: sort keys (b * M + argmin, or B * M for entries without gradient) and values
// (the entry itself). K / V are 32-bit when the sizes allow (backward_sort_is_narrow), halving the memory.
template <typename A, typename K, typename V>
__global__ void sort_keys_kernel(const A* __restrict__ coef, const int32_t* __restrict__ argmin, int64_t total,
                                 int64_t per_batch, int64_t num_candidates, int64_t sentinel, K* __restrict__ keys,
                                 V* __restrict__ values) {
  for (int64_t e = global_thread_index(); e < total; e += grid_thread_count()) {
    const bool used = coef[e] != A(0) && argmin[e] >= 0;
    keys[e] = static_cast<K>(used ? (e / per_batch) * num_candidates + argmin[e] : sentinel);
    values[e] = static_cast<V>(e);
  }
}

template <typename K>
__device__ __forceinline__ int64_t lower_bound(const K* __restrict__ keys, int64_t n, K key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (keys[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Deterministic path, step 2: thread (b, c, m) sums the run of key b * M + m, entries in increasing order.
template <typename T, typename K, typename V>
__global__ void grad_candidates_sorted_kernel(const acc_t<T>* __restrict__ coef, const K* __restrict__ keys,
                                              const V* __restrict__ entries, int64_t total_entries,
                                              const T* __restrict__ query, const T* __restrict__ candidates,
                                              int64_t batch, int64_t channels, int64_t pixels,
                                              int64_t num_candidates, T* __restrict__ grad) {
  using A = acc_t<T>;
  const int64_t total = batch * channels * num_candidates;
  for (int64_t i = global_thread_index(); i < total; i += grid_thread_count()) {
    const int64_t m = i % num_candidates;
    const int64_t bc = i / num_candidates;  // b * channels + c
    const int64_t b = bc / channels;
    const K key = static_cast<K>(b * num_candidates + m);
    const A r = static_cast<A>(candidates[i]);
    const T* q = query + bc * pixels;
    A sum = A(0);
    for (int64_t k = lower_bound(keys, total_entries, key); k < total_entries && keys[k] == key; ++k) {
      const int64_t e = static_cast<int64_t>(entries[k]);
      sum -= A(2) * coef[e] * (static_cast<A>(q[e % pixels]) - r);
    }
    grad[i] = static_cast<T>(sum);
  }
}

int sort_bits(int64_t sentinel) {
  int bits = 1;
  while (bits < 63 && (int64_t(1) << bits) <= sentinel) ++bits;
  return bits;
}

template <typename T, typename K, typename V>
cudaError_t run_deterministic_candidates(const BackwardArgs& a, int64_t entries, int64_t per_batch, cudaStream_t stream) {
  using A = acc_t<T>;
  const A* coef = static_cast<const A*>(a.coef);
  const int64_t sentinel = a.batch * a.num_candidates;
  K* keys = static_cast<K*>(a.sort_keys);
  K* keys_out = static_cast<K*>(a.sort_keys_out);
  V* values = static_cast<V*>(a.sort_values);
  V* values_out = static_cast<V*>(a.sort_values_out);
  sort_keys_kernel<A, K, V><<<grid_stride_blocks(entries, kThreads), kThreads, 0, stream>>>(
      coef, a.argmin, entries, per_batch, a.num_candidates, sentinel, keys, values);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  size_t temp_bytes = a.sort_temp_bytes;
  err = cub::DeviceRadixSort::SortPairs(a.sort_temp, temp_bytes, keys, keys_out, values, values_out, entries, 0,
                                        sort_bits(sentinel), stream);
  if (err != cudaSuccess) return err;
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const int64_t candidate_items = a.batch * a.channels * a.num_candidates;
  grad_candidates_sorted_kernel<T, K, V><<<grid_stride_blocks(candidate_items, kThreads), kThreads, 0, stream>>>(
      coef, keys_out, values_out, entries, static_cast<const T*>(a.query), static_cast<const T*>(a.candidates),
      a.batch, a.channels, a.pixels, a.num_candidates, static_cast<T*>(a.grad_candidates));
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_backward(const BackwardArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t plane = a.windows * a.pixels;
  const int64_t per_batch = a.num_labels * plane;
  const int64_t entries = a.batch * per_batch;
  A* coef = static_cast<A*>(a.coef);
  const T* query = static_cast<const T*>(a.query);
  const T* candidates = static_cast<const T*>(a.candidates);
  cudaError_t err;

  coef_kernel<T><<<grid_stride_blocks(a.batch * plane, kThreads), kThreads, 0, stream>>>(
      static_cast<const T*>(a.grad_fg), static_cast<const T*>(a.grad_bg), static_cast<const T*>(a.fg), a.argmin,
      a.batch, a.num_labels, plane, a.num_candidates, query, candidates, a.channels, a.pixels,
      static_cast<const A*>(a.fg_bias), static_cast<const A*>(a.bg_bias), coef);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  const int64_t bias_blocks = backward_bias_blocks(entries);
  const int64_t chunk = (entries + bias_blocks - 1) / bias_blocks;
  A* partials = static_cast<A*>(a.bias_partials);
  bias_partials_kernel<A><<<static_cast<unsigned int>(bias_blocks), kBiasThreads, 0, stream>>>(
      coef, entries, plane, a.num_labels, chunk, partials);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  bias_total_kernel<T><<<1, kBiasThreads, 0, stream>>>(partials, bias_blocks, static_cast<T*>(a.grad_fg_bias),
                                                       static_cast<T*>(a.grad_bg_bias));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  const int64_t query_items = a.batch * a.channels * a.pixels;
  if (query_items > 0) {
    grad_query_kernel<T><<<grid_stride_blocks(query_items, kThreads), kThreads, 0, stream>>>(
        coef, a.argmin, query, candidates, a.batch, a.channels, a.pixels, a.num_labels * a.windows,
        a.num_candidates, static_cast<T*>(a.grad_query));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  const int64_t candidate_items = a.batch * a.channels * a.num_candidates;
  if (candidate_items == 0) return cudaSuccess;
  if (a.deterministic) {
    return backward_sort_is_narrow(entries, a.batch, a.num_candidates)
               ? run_deterministic_candidates<T, uint32_t, int32_t>(a, entries, per_batch, stream)
               : run_deterministic_candidates<T, uint64_t, int64_t>(a, entries, per_batch, stream);
  }

  A* grad_acc = static_cast<A*>(a.grad_candidates_acc);
  err = cudaMemsetAsync(grad_acc, 0, sizeof(A) * candidate_items, stream);
  if (err != cudaSuccess) return err;
  grad_candidates_atomic_kernel<T><<<grid_stride_blocks(entries, kThreads), kThreads, 0, stream>>>(
      coef, a.argmin, query, candidates, a.batch, a.channels, a.pixels, per_batch, a.num_candidates, grad_acc);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (static_cast<void*>(grad_acc) != a.grad_candidates) {
    cast_kernel<T><<<grid_stride_blocks(candidate_items, kThreads), kThreads, 0, stream>>>(
        grad_acc, candidate_items, static_cast<T*>(a.grad_candidates));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t backward_bias_blocks(int64_t entries) {
  int64_t blocks = (entries + kBiasItemsPerBlock - 1) / kBiasItemsPerBlock;
  if (blocks < 1) blocks = 1;
  return blocks < kMaxBiasBlocks ? blocks : kMaxBiasBlocks;
}

bool backward_sort_is_narrow(int64_t entries, int64_t batch, int64_t num_candidates) {
  return entries < (int64_t(1) << 31) && batch * num_candidates < (int64_t(1) << 32) - 1;
}

template <typename K, typename V>
size_t sort_temp_bytes(int64_t entries, int64_t sentinel, cudaError_t* error) {
  size_t bytes = 0;
  *error = cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const K*>(nullptr), static_cast<K*>(nullptr),
                                           static_cast<const V*>(nullptr), static_cast<V*>(nullptr), entries, 0,
                                           sort_bits(sentinel), cudaStream_t(nullptr));
  return bytes;
}

size_t backward_sort_temp_bytes(int64_t entries, int64_t batch, int64_t num_candidates, cudaError_t* error) {
  return backward_sort_is_narrow(entries, batch, num_candidates)
             ? sort_temp_bytes<uint32_t, int32_t>(entries, batch * num_candidates, error)
             : sort_temp_bytes<uint64_t, int64_t>(entries, batch * num_candidates, error);
}

cudaError_t launch_matching_backward(const BackwardArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.num_labels == 0 || args.windows == 0 || args.pixels == 0) return cudaSuccess;
  CFBI_CUDA_DISPATCH(args.dtype, return run_backward<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace cfbi
