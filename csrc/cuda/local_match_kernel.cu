// CUDA forward of cfbi::local_match.
//
// One thread per query pixel (blocks of 32 x 4 pixels, so that neighbouring threads read neighbouring
// candidates through the L1 cache). The thread walks the offsets of the largest window ring by ring
// (ring r = offsets with max(|i|, |j|) == r, in atrous steps) and keeps one running minimum per label
// over all rings seen so far; when ring r is finished, every window of radius r is complete and is written
// out (write_pixel_scores_strided). The windows are nested, so the largest one is scanned once, and the
// result equals the CPU kernel's per-ring minima + prefix minima: both are the smallest (distance, index)
// pair under is_better, a total order that does not depend on the scan order.
//
// The per-label running minima live in shared memory when L labels x 128 threads fit, else in a global
// workspace [L, B * H * W]. Window radii travel in a by-value table of up to kWindowsPerLaunch windows
// (no device copy, so CUDA graphs can capture the op); longer window lists take several launches.
#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common.cuh"

namespace cfbi {
namespace cuda {
namespace {

constexpr int kTileX = 32;
constexpr int kTileY = 4;
constexpr int kThreads = kTileX * kTileY;
constexpr int kWindowsPerLaunch = 64;
constexpr size_t kSharedStateBytes = 48 * 1024;

// Windows of one launch, sorted by radius.
struct WindowTable {
  int32_t count;
  int32_t max_radius;  // largest radius of this launch (already capped to the frame)
  int32_t radius[kWindowsPerLaunch];
  int32_t window[kWindowsPerLaunch];  // position in the output's K dimension
};

template <typename A>
size_t shared_state_bytes(int64_t num_labels) {
  return static_cast<size_t>(num_labels) * kThreads * (sizeof(A) + sizeof(int32_t));
}

// Offset number t of ring r (0 <= t < max(8 r, 1)), as (i, j) in atrous steps.
__device__ __forceinline__ void ring_offset(int64_t r, int64_t t, int64_t* i, int64_t* j) {
  const int64_t side = 2 * r + 1;
  if (r == 0) {
    *i = 0;
    *j = 0;
  } else if (t < side) {  // top row
    *i = -r;
    *j = t - r;
  } else if (t < 2 * side) {  // bottom row
    *i = r;
    *j = t - side - r;
  } else {  // left and right columns without the corners
    const int64_t u = t - 2 * side;
    const int64_t inner = side - 2;
    *i = -r + 1 + u % inner;
    *j = u < inner ? -r : r;
  }
}

// CREG > 0: the query vector is held in registers (channels <= CREG); CREG == 0: read from memory.
template <typename T, int CREG>
__global__ void __launch_bounds__(kThreads)
    local_match_kernel(const T* __restrict__ query, const T* __restrict__ previous,
                       const int64_t* __restrict__ labels, int64_t batch, int64_t height, int64_t width,
                       int64_t channels, int64_t num_labels, int64_t atrous, int64_t num_windows,
                       const acc_t<T>* __restrict__ fg_bias, const acc_t<T>* __restrict__ bg_bias,
                       bool shared_state, acc_t<T>* state_dist, int32_t* state_index, T* __restrict__ fg,
                       T* __restrict__ bg, int32_t* __restrict__ argmin, WindowTable table) {
  using A = acc_t<T>;
  extern __shared__ double shared_words[];  // double: aligned for either accumulation type

  const int64_t tiles_x = (width + kTileX - 1) / kTileX;
  const int64_t tiles_y = (height + kTileY - 1) / kTileY;
  const int64_t tile = blockIdx.x % (tiles_x * tiles_y);
  const int64_t b = blockIdx.x / (tiles_x * tiles_y);
  const int64_t x = (tile % tiles_x) * kTileX + threadIdx.x % kTileX;
  const int64_t y = (tile / tiles_x) * kTileY + threadIdx.x / kTileX;
  if (x >= width || y >= height) return;  // no block-level synchronisation below
  const int64_t pixels = height * width;
  const int64_t p = y * width + x;

  A* best_dist;
  int32_t* best_index;
  int64_t state_stride;
  if (shared_state) {
    best_dist = reinterpret_cast<A*>(shared_words) + threadIdx.x;
    best_index = reinterpret_cast<int32_t*>(reinterpret_cast<A*>(shared_words) + num_labels * kThreads) + threadIdx.x;
    state_stride = kThreads;
  } else {
    best_dist = state_dist + b * pixels + p;
    best_index = state_index + b * pixels + p;
    state_stride = batch * pixels;
  }
  for (int64_t l = 0; l < num_labels; ++l) {
    best_dist[l * state_stride] = A(0);
    best_index[l * state_stride] = kNoCandidate;
  }

  const T* q = query + (b * pixels + p) * channels;
  const T* prev = previous + b * pixels * channels;
  const int64_t* frame_labels = labels + b * pixels;
  [[maybe_unused]] A qv[CREG > 0 ? CREG : 1];
  if constexpr (CREG > 0) {
#pragma unroll
    for (int c = 0; c < CREG; ++c) qv[c] = c < channels ? static_cast<A>(q[c]) : A(0);
  }

  const A fg_b = *fg_bias, bg_b = *bg_bias;
  const int64_t out = b * num_labels * num_windows * pixels + p;  // (l, w) at out + (l * K + w) * pixels
  int next = 0;  // next window of the table to write
  for (int64_t r = 0; r <= table.max_radius; ++r) {
    const int64_t ring_size = r == 0 ? 1 : 8 * r;
    for (int64_t t = 0; t < ring_size; ++t) {
      int64_t i, j;
      ring_offset(r, t, &i, &j);
      const int64_t yy = y + i * atrous, xx = x + j * atrous;
      if (yy < 0 || yy >= height || xx < 0 || xx >= width) continue;
      const int64_t candidate = yy * width + xx;
      const int64_t label = frame_labels[candidate];
      if (!is_valid_label(label, num_labels)) continue;
      const T* cand = prev + candidate * channels;
      A d = A(0);
      if constexpr (CREG > 0) {
#pragma unroll
        for (int c = 0; c < CREG; ++c) {
          if (c < channels) d = add_square(d, qv[c] - static_cast<A>(cand[c]));
        }
      } else {
        d = squared_distance<T, A>(q, 1, cand, 1, channels);
      }
      const int64_t slot = label * state_stride;
      if (is_better(d, candidate, best_dist[slot], static_cast<int64_t>(best_index[slot]))) {
        best_dist[slot] = d;
        best_index[slot] = static_cast<int32_t>(candidate);
      }
    }
    // Windows of radius r are complete (radii beyond the frame were capped to max_radius).
    while (next < table.count && table.radius[next] == r) {
      const int64_t w = table.window[next];
      write_pixel_scores_strided<T, A, int32_t>(best_dist, best_index, state_stride, num_labels, fg_b, bg_b,
                                                fg + out + w * pixels, bg + out + w * pixels,
                                                argmin + out + w * pixels, num_windows * pixels);
      ++next;
    }
  }
}

template <typename T, int CREG>
cudaError_t launch_kernel(const LocalMatchArgs& a, bool shared_state, unsigned int blocks, const WindowTable& table,
                          cudaStream_t stream) {
  using A = acc_t<T>;
  const size_t shared_bytes = shared_state ? shared_state_bytes<A>(a.num_labels) : 0;
  local_match_kernel<T, CREG><<<blocks, kThreads, shared_bytes, stream>>>(
      static_cast<const T*>(a.query), static_cast<const T*>(a.previous), a.labels, a.batch, a.height, a.width,
      a.channels, a.num_labels, a.atrous, a.num_windows, static_cast<const A*>(a.fg_bias),
      static_cast<const A*>(a.bg_bias), shared_state, static_cast<A*>(a.state_dist), a.state_index,
      static_cast<T*>(a.fg), static_cast<T*>(a.bg), a.argmin, table);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_local_match(const LocalMatchArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  const bool shared_state = shared_state_bytes<A>(a.num_labels) <= kSharedStateBytes;
  const int64_t tiles = ((a.width + kTileX - 1) / kTileX) * ((a.height + kTileY - 1) / kTileY);
  const int64_t blocks = tiles * a.batch;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;

  // Rings beyond this radius hold no offset inside the frame: larger windows equal the capped one.
  const int64_t frame_radius = (std::max(a.height, a.width) - 1) / a.atrous;
  std::vector<int64_t> radius(a.num_windows);
  for (int64_t w = 0; w < a.num_windows; ++w) radius[w] = std::min(window_radius(a.windows[w], a.atrous), frame_radius);
  std::vector<int64_t> order(a.num_windows);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t u, int64_t v) { return radius[u] < radius[v]; });

  for (int64_t first = 0; first < a.num_windows; first += kWindowsPerLaunch) {
    WindowTable table{};
    table.count = static_cast<int32_t>(std::min<int64_t>(kWindowsPerLaunch, a.num_windows - first));
    for (int32_t k = 0; k < table.count; ++k) {
      table.radius[k] = static_cast<int32_t>(radius[order[first + k]]);
      table.window[k] = static_cast<int32_t>(order[first + k]);
    }
    table.max_radius = table.radius[table.count - 1];
    cudaError_t err;
    const unsigned int grid = static_cast<unsigned int>(blocks);
    if (a.channels <= 32) {
      err = launch_kernel<T, 32>(a, shared_state, grid, table, stream);
    } else if constexpr (!std::is_same<T, double>::value) {  // 64 doubles would take too many registers
      err = a.channels <= 64 ? launch_kernel<T, 64>(a, shared_state, grid, table, stream)
                             : launch_kernel<T, 0>(a, shared_state, grid, table, stream);
    } else {
      err = launch_kernel<T, 0>(a, shared_state, grid, table, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

bool local_match_state_in_shared(DType dtype, int64_t num_labels) {
  const size_t bytes = dtype == DType::kFloat64 ? shared_state_bytes<double>(num_labels)
                                                : shared_state_bytes<float>(num_labels);
  return bytes <= kSharedStateBytes;
}

cudaError_t launch_local_match(const LocalMatchArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.height == 0 || args.width == 0 || args.num_windows == 0) return cudaSuccess;
  CFBI_CUDA_DISPATCH(args.dtype, return run_local_match<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace cfbi
