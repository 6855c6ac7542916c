// The SIMD kernels compiled for AVX-512 (F, VL, BW, DQ) with 16-float vectors (x86-64 only); chosen at run time
// when the CPU has them.
#include <cstdint>

#include "simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace cfbi {
namespace simd_avx512 {
#define CFBI_SIMD_NAME "avx512"
#define CFBI_SIMD_LANES 16
#include "simd_kernels.h"
#undef CFBI_SIMD_NAME
#undef CFBI_SIMD_LANES
const SimdKernels* get() { return &kernels; }
}  // namespace simd_avx512
}  // namespace cfbi
#pragma GCC pop_options
#else
namespace cfbi {
namespace simd_avx512 {
const SimdKernels* get() { return nullptr; }
}  // namespace simd_avx512
}  // namespace cfbi
#endif
