#pragma once
// Emulated nvcuda::wmma (the m16n16k16 half / bfloat16 -> float subset the kernels use). Every thread of a
// warp holds the whole tile, so load / mma / fill are exact; store is done by lane 0 only. Alignment and
// leading-dimension rules of the real API are checked, since a violation there is undefined on a device.
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = shape<Use, M, N, K>::rows, cols = shape<Use, M, N, K>::cols;
  T x[rows * cols];  // row-major copy of the whole tile
};

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void check_layout(const void* p, unsigned ldm, unsigned element_bytes) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) throw std::runtime_error("wmma: pointer not 256-bit aligned");
  if ((ldm * element_bytes) % 16 != 0) throw std::runtime_error("wmma: ldm not a multiple of 16 bytes");
}

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  check_layout(p, ldm, sizeof(T));
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int i = 0; i < F::rows; ++i)
    for (int j = 0; j < F::cols; ++j) f.x[i * F::cols + j] = row ? p[i * ldm + j] : p[i + j * ldm];
}

template <int M, int N, int K, class T>
void fill_fragment(fragment<accumulator, M, N, K, T>& f, T v) {
  for (auto& e : f.x) e = v;
}

template <int M, int N, int K, class TA, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.x[i * N + j];
      for (int k = 0; k < K; ++k) s += to_float(a.x[i * K + k]) * to_float(b.x[k * N + j]);
      out[i * N + j] = s;
    }
  for (int e = 0; e < M * N; ++e) d.x[e] = out[e];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_layout(p, ldm, sizeof(float));
  const dim3& t = ::emu::tls.thread;
  const dim3& d = ::emu::tls.block_dim;
  if ((t.x + d.x * (t.y + d.y * t.z)) % 32 != 0) return;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) (layout == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.x[i * N + j];
}
}  // namespace wmma
}  // namespace nvcuda
