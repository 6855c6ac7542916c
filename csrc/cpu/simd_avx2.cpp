// The SIMD kernels compiled for AVX2 + FMA (x86-64 only); chosen at run time when the CPU has them.
#include <cstdint>

#include "simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace cfbi {
namespace simd_avx2 {
#define CFBI_SIMD_NAME "avx2"
#define CFBI_SIMD_LANES 8
#include "simd_kernels.h"
#undef CFBI_SIMD_NAME
#undef CFBI_SIMD_LANES
const SimdKernels* get() { return &kernels; }
}  // namespace simd_avx2
}  // namespace cfbi
#pragma GCC pop_options
#else
namespace cfbi {
namespace simd_avx2 {
const SimdKernels* get() { return nullptr; }
}  // namespace simd_avx2
}  // namespace cfbi
#endif
