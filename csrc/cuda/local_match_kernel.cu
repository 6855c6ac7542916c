// CUDA forward of cfbi::local_match.
//
// The windows are nested, so only the largest (radius R in atrous steps) is scanned. Query pixels close to
// each other share almost all their candidates, and a thread per pixel reading channels-last candidates
// through L1 makes every warp-wide load touch 32 cache lines. So the atrous grid is split into atrous^2
// dense sub-grids (every offset becomes a unit step) and a block takes a 32 x 4 tile of one sub-grid: for
// each candidate row dy it stages the strip of the previous frame it needs (tile rows shifted by dy, tile
// columns widened by the horizontal reach) in shared memory, a chunk of channels at a time, channel-major
// so that a warp reads consecutive words. Each thread keeps its query chunk and the partial distances of
// up to kSlots horizontal offsets in registers. Channels are added one by one in increasing order, as in
// the CPU kernel: the distances are bit-identical, so are the argmin.
//
// A window of radius rho is the min over rows |dy| <= rho of the row's min over |dx| <= rho. Walking dx
// outward (0, -1, +1, -2, +2, ...) keeps a per-label running minimum of the row; when |dx| reaches rho it
// covers exactly |dx| <= rho and is merged into the window's state (a distance workspace and the argmin
// output) if |dy| <= rho. Every merge uses is_better, a total order on (distance, index): the result does
// not depend on the order of the scan. Offsets |dx| > kHalf take further segments of kHalf offsets per
// side, each staged as a left and a right strip, so that shared memory stays bounded for any radius.
//
// The per-label row minima live in shared memory when L labels x 128 threads fit beside the strips, else
// in a global workspace. Window radii travel in a by-value table of up to kWindowsPerLaunch windows (no
// device copy, so CUDA graphs can capture the op); longer window lists take several launches.
#include <algorithm>
#include <numeric>
#include <vector>

#include "common.cuh"

namespace cfbi {
namespace cuda {
namespace {

constexpr int kTileX = 32;  // one warp per tile row: consecutive lanes read consecutive shared words
constexpr int kTileY = 4;
constexpr int kThreads = kTileX * kTileY;
constexpr int kHalf = 12;                   // |dx| per segment side: CFBI+ radii are at most 12
constexpr int kSlots = 2 * kHalf + 1;       // slot 0: dx = 0, slot 2a - 1: dx = -a, slot 2a: dx = +a
constexpr int kStripCols = kTileX + 2 * kHalf;
constexpr int kStripCells = kTileY * kStripCols;
constexpr int kStagesPerThread = (kStripCells + kThreads - 1) / kThreads;
constexpr int kWindowsPerLaunch = 64;
constexpr size_t kSharedBytes = 48 * 1024;  // static + dynamic per block without an opt-in
constexpr size_t kReservedBytes = 1024;     // sm_90 builds count 1 KB of system shared memory as static

// Channels per staged chunk: the strip takes 28 KB for either accumulation type.
template <typename A> struct Chunk { static constexpr int kChannels = 32; };
template <> struct Chunk<double> { static constexpr int kChannels = 16; };

// Strip column c of a pass holds sub-grid column j0 - kHalf + shift + c; a thread at tile column tx reads
// c = tx + kHalf + dx_local, with dx_local in [-a, a] (centre, segment 0), [-a, -1] (left) or [1, a]
// (right), where segment s >= 1 shifts the left strip by -kHalf s and the right one by +kHalf s.
enum Pass { kCentre, kLeft, kRight };

// Cells [row][col] flattened: row * kStripCols + col.
template <typename A>
struct Strip {
  A values[Chunk<A>::kChannels][kStripCells];
  int32_t labels[2][kStripCells];  // [0]: centre or left pass, [1]: right pass
};

static_assert(sizeof(Strip<float>) + kReservedBytes <= kSharedBytes &&
                  sizeof(Strip<double>) + kReservedBytes <= kSharedBytes,
              "strip too large");

template <typename A>
size_t state_bytes(int64_t num_labels) {
  return static_cast<size_t>(num_labels) * kThreads * (sizeof(A) + sizeof(int32_t));
}
template <typename A>
bool state_fits_shared(int64_t num_labels) {
  return state_bytes<A>(num_labels) <= kSharedBytes - kReservedBytes - sizeof(Strip<A>);
}

// Windows of one launch, sorted by radius.
struct WindowTable {
  int32_t count;
  int32_t max_radius;  // largest radius of this launch (already capped to the frame)
  int32_t radius[kWindowsPerLaunch];
  int32_t window[kWindowsPerLaunch];  // position in the output's K dimension
};

// Adds one channel chunk to the slots of pass P with |dx_local| <= a_max; `cell` is the thread's
// dx_local = 0 cell.
template <Pass P, int kChunk, typename A>
__device__ __forceinline__ void accumulate(A (&acc)[kSlots], const A (&q)[kChunk],
                                           const A (&values)[kChunk][kStripCells], int cell, int a_max) {
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int a = (s + 1) / 2;
    const int dx = s == 0 ? 0 : (s % 2 == 1 ? -a : a);
    const bool in_pass = P == kCentre || (P == kLeft ? dx < 0 : dx > 0);
    if (in_pass && a <= a_max) {
      A sum = acc[s];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) sum = add_square(sum, q[c] - values[c][cell + dx]);
      acc[s] = sum;
    }
  }
}

// One candidate into the row's running minimum of its label (label < 0: no candidate).
template <typename A>
__device__ __forceinline__ void visit(A d, int32_t label, int64_t index, A* row_dist, int32_t* row_index,
                                      int64_t row_stride) {
  if (label < 0) return;
  const int64_t slot = label * row_stride;
  if (is_better(d, index, row_dist[slot], static_cast<int64_t>(row_index[slot]))) {
    row_dist[slot] = d;
    row_index[slot] = static_cast<int32_t>(index);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    local_match_kernel(const T* __restrict__ query, const T* __restrict__ previous,
                       const int64_t* __restrict__ labels, int64_t batch, int64_t height, int64_t width,
                       int64_t channels, int64_t num_labels, int64_t atrous, int64_t num_windows, int64_t grid_y,
                       int64_t grid_x, int64_t tiles_y, int64_t tiles_x, const acc_t<T>* __restrict__ fg_bias,
                       const acc_t<T>* __restrict__ bg_bias, bool shared_state, acc_t<T>* state_dist,
                       int32_t* state_index, acc_t<T>* dist, T* fg, T* bg, int32_t* argmin, WindowTable table) {
  using A = acc_t<T>;
  constexpr int kChunk = Chunk<A>::kChannels;
  __shared__ Strip<A> strip;
  extern __shared__ double shared_words[];  // double: aligned for either accumulation type

  // Block -> (batch, sub-grid (sy, sx), tile); the tiles cover the largest sub-grid, (0, 0).
  int64_t block = blockIdx.x;
  const int64_t tile_x = block % tiles_x;
  block /= tiles_x;
  const int64_t tile_y = block % tiles_y;
  block /= tiles_y;
  const int64_t sx = block % grid_x;
  block /= grid_x;
  const int64_t sy = block % grid_y;
  const int64_t b = block / grid_y;
  const int64_t sub_h = (height - sy + atrous - 1) / atrous, sub_w = (width - sx + atrous - 1) / atrous;
  const int tx = threadIdx.x % kTileX, ty = threadIdx.x / kTileX;
  const int cell = ty * kStripCols + tx + kHalf;  // strip cell of dx_local = 0
  const int64_t i0 = tile_y * kTileY, j0 = tile_x * kTileX;
  const int64_t i = i0 + ty, j = j0 + tx;  // this thread's query pixel in the sub-grid
  // Inactive threads (beyond the sub-grid) stage and synchronise, nothing else.
  const bool active = i < sub_h && j < sub_w;
  const int64_t pixels = height * width;
  const int64_t y = sy + i * atrous, x = sx + j * atrous;
  const int64_t p = active ? y * width + x : 0;
  const T* prev = previous + b * channels * pixels;
  const T* q_pixel = query + b * channels * pixels + p;  // channel c at q_pixel[c * pixels]
  const int64_t* frame_labels = labels + b * pixels;

  A* row_dist;
  int32_t* row_index;
  int64_t row_stride;
  if (shared_state) {
    row_dist = reinterpret_cast<A*>(shared_words) + threadIdx.x;
    row_index = reinterpret_cast<int32_t*>(reinterpret_cast<A*>(shared_words) + num_labels * kThreads) + threadIdx.x;
    row_stride = kThreads;
  } else {
    row_dist = state_dist + b * pixels + p;
    row_index = state_index + b * pixels + p;
    row_stride = batch * pixels;
  }

  // Window state (l, w) at out + l * label_stride + w * pixels: the distance in `dist`, the index in argmin.
  const int64_t label_stride = num_windows * pixels;
  const int64_t out = b * num_labels * label_stride + p;
  if (active) {
    for (int k = 0; k < table.count; ++k) {
      const int64_t o = out + table.window[k] * pixels;
      for (int64_t l = 0; l < num_labels; ++l) {
        dist[o + l * label_stride] = A(0);
        argmin[o + l * label_stride] = kNoCandidate;
      }
    }
  }

  const int radius = table.max_radius;
  const int segments = radius <= kHalf ? 1 : (radius + kHalf - 1) / kHalf;
  A acc[kSlots];
  A q[kChunk];
  for (int dy = -radius; dy <= radius; ++dy) {
    if (i0 + dy + kTileY <= 0 || i0 + dy >= sub_h) continue;  // no candidate row for the whole block
    const int ady = dy < 0 ? -dy : dy;
    const int64_t row_start = (y + dy * atrous) * width + x;  // candidate index at dx = 0
    if (active) {
      for (int64_t l = 0; l < num_labels; ++l) {
        row_dist[l * row_stride] = A(0);
        row_index[l * row_stride] = kNoCandidate;
      }
    }
    int next = 0;  // first window to merge into: rows with |dy| > radius do not belong to it
    while (next < table.count && table.radius[next] < ady) ++next;

    for (int seg = 0; seg < segments; ++seg) {
      const int a_max = radius - seg * kHalf < kHalf ? radius - seg * kHalf : kHalf;
      const int shift = seg * kHalf;
      __syncthreads();  // the previous walk has read the labels
      for (int side = 0; side < (seg == 0 ? 1 : 2); ++side) {
        const int64_t col0 = j0 - kHalf + (side == 0 ? -shift : shift);
        for (int e = threadIdx.x; e < kStripCells; e += kThreads) {
          const int64_t ii = i0 + e / kStripCols + dy, jj = col0 + e % kStripCols;
          int32_t label = -1;
          if (ii >= 0 && ii < sub_h && jj >= 0 && jj < sub_w) {
            const int64_t value = frame_labels[(sy + ii * atrous) * width + sx + jj * atrous];
            if (is_valid_label(value, num_labels)) label = static_cast<int32_t>(value);
          }
          strip.labels[side][e] = label;
        }
      }
#pragma unroll
      for (int s = 0; s < kSlots; ++s) acc[s] = A(0);

      bool staged = false;
      const int passes = seg == 0 ? 1 : 2;
      for (int pass = 0; pass < passes; ++pass) {
        const Pass kind = seg == 0 ? kCentre : (pass == 0 ? kLeft : kRight);
        const int64_t col0 = j0 - kHalf + (kind == kLeft ? -shift : shift);
        const int lo = kind == kRight ? kHalf + 1 : kHalf - a_max;
        const int hi = kind == kLeft ? kHalf + kTileX - 2 : kHalf + kTileX - 1 + a_max;
        if (col0 + hi < 0 || col0 + lo >= sub_w) continue;  // no candidate column for the whole block
        // Source of each strip cell this thread stages (channel 0), or null for zeros.
        const T* source[kStagesPerThread];
#pragma unroll
        for (int k = 0; k < kStagesPerThread; ++k) {
          const int e = threadIdx.x + k * kThreads;
          const int col = e % kStripCols;
          const int64_t ii = i0 + e / kStripCols + dy, jj = col0 + col;
          const bool inside = e < kStripCells && col >= lo && col <= hi && ii >= 0 && ii < sub_h && jj >= 0 &&
                              jj < sub_w;
          source[k] = inside ? prev + (sy + ii * atrous) * width + sx + jj * atrous : nullptr;
        }
        for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
          if (staged) __syncthreads();  // the previous chunk has been used
#pragma unroll
          for (int k = 0; k < kStagesPerThread; ++k) {
            const int e = threadIdx.x + k * kThreads;
            if (e >= kStripCells) continue;
            if (source[k] == nullptr) {
#pragma unroll
              for (int c = 0; c < kChunk; ++c) strip.values[c][e] = A(0);
            } else {
              const T* src = source[k] + c0 * pixels;
#pragma unroll
              for (int c = 0; c < kChunk; ++c, src += pixels) {
                strip.values[c][e] = c0 + c < channels ? static_cast<A>(*src) : A(0);
              }
            }
          }
          const T* qc = q_pixel + c0 * pixels;
#pragma unroll
          for (int c = 0; c < kChunk; ++c, qc += pixels) q[c] = active && c0 + c < channels ? static_cast<A>(*qc) : A(0);
          __syncthreads();
          staged = true;
          if (!active) continue;
          if (kind == kCentre) {
            accumulate<kCentre>(acc, q, strip.values, cell, a_max);
          } else if (kind == kLeft) {
            accumulate<kLeft>(acc, q, strip.values, cell, a_max);
          } else {
            accumulate<kRight>(acc, q, strip.values, cell, a_max);
          }
        }
      }
      if (!staged) __syncthreads();  // the labels are visible
      if (!active) continue;

      // Outward walk of this segment; the windows of radius seg * kHalf + a are complete at a.
      const int32_t* left_labels = strip.labels[0];
      const int32_t* right_labels = strip.labels[seg == 0 ? 0 : 1];
#pragma unroll
      for (int a = 0; a <= kHalf; ++a) {
        if (a > a_max) break;
        if (a == 0) {
          if (seg > 0) continue;  // |dx| = seg * kHalf belongs to the previous segment
          visit(acc[0], left_labels[cell], row_start, row_dist, row_index, row_stride);
        } else {
          const int64_t step = (shift + a) * atrous;
          visit(acc[2 * a - 1], left_labels[cell - a], row_start - step, row_dist, row_index, row_stride);
          visit(acc[2 * a], right_labels[cell + a], row_start + step, row_dist, row_index, row_stride);
        }
        while (next < table.count && table.radius[next] == shift + a) {
          const int64_t o = out + table.window[next] * pixels;
          for (int64_t l = 0; l < num_labels; ++l) {
            const int32_t index = row_index[l * row_stride];
            if (index < 0) continue;
            const A d = row_dist[l * row_stride];
            const int64_t w = o + l * label_stride;
            if (is_better(d, static_cast<int64_t>(index), dist[w], static_cast<int64_t>(argmin[w]))) {
              dist[w] = d;
              argmin[w] = index;
            }
          }
          ++next;
        }
      }
    }
  }

  if (!active) return;
  const A fg_b = *fg_bias, bg_b = *bg_bias;
  for (int k = 0; k < table.count; ++k) {
    const int64_t o = out + table.window[k] * pixels;
    write_pixel_scores_strided<T, A, int32_t>(dist + o, argmin + o, label_stride, num_labels, fg_b, bg_b, fg + o,
                                              bg + o, argmin + o, label_stride);
  }
}

template <typename T>
cudaError_t run_local_match(const LocalMatchArgs& a, cudaStream_t stream) {
  using A = acc_t<T>;
  const bool shared_state = state_fits_shared<A>(a.num_labels);
  const size_t shared_bytes = shared_state ? state_bytes<A>(a.num_labels) : 0;
  // Sub-grids (sy, sx) in [0, min(atrous, H)) x [0, min(atrous, W)); the largest is ceil(H / r) x ceil(W / r).
  const int64_t grid_y = std::min(a.atrous, a.height), grid_x = std::min(a.atrous, a.width);
  const int64_t sub_h = (a.height + a.atrous - 1) / a.atrous, sub_w = (a.width + a.atrous - 1) / a.atrous;
  const int64_t tiles_y = (sub_h + kTileY - 1) / kTileY, tiles_x = (sub_w + kTileX - 1) / kTileX;
  const int64_t blocks = a.batch * grid_y * grid_x * tiles_y * tiles_x;
  if (blocks >= (int64_t(1) << 31)) return cudaErrorInvalidConfiguration;

  // Offsets beyond the frame's radius are outside it: larger windows equal the capped one.
  std::vector<int64_t> radius(a.num_windows);
  for (int64_t w = 0; w < a.num_windows; ++w) radius[w] = frame_window_radius(a.windows[w], a.atrous, a.height, a.width);
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
    local_match_kernel<T><<<static_cast<unsigned int>(blocks), kThreads, shared_bytes, stream>>>(
        static_cast<const T*>(a.query), static_cast<const T*>(a.previous), a.labels, a.batch, a.height, a.width,
        a.channels, a.num_labels, a.atrous, a.num_windows, grid_y, grid_x, tiles_y, tiles_x,
        static_cast<const A*>(a.fg_bias), static_cast<const A*>(a.bg_bias), shared_state,
        static_cast<A*>(a.state_dist), a.state_index, static_cast<A*>(a.dist), static_cast<T*>(a.fg),
        static_cast<T*>(a.bg), a.argmin, table);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

bool local_match_state_in_shared(DType dtype, int64_t num_labels) {
  return dtype == DType::kFloat64 ? state_fits_shared<double>(num_labels) : state_fits_shared<float>(num_labels);
}

cudaError_t launch_local_match(const LocalMatchArgs& args, cudaStream_t stream) {
  if (args.batch == 0 || args.height == 0 || args.width == 0 || args.num_windows == 0) return cudaSuccess;
  CFBI_CUDA_DISPATCH(args.dtype, return run_local_match<scalar_t>(args, stream));
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace cfbi
