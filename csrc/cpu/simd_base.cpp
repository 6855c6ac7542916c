// The portable build of the SIMD kernels, and the run-time choice between the builds.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "simd.h"

namespace cfbi {
namespace simd_base {
#define CFBI_SIMD_NAME "portable"
#include "simd_kernels.h"
#undef CFBI_SIMD_NAME
}  // namespace simd_base

namespace simd_avx2 {
const SimdKernels* get();
}

namespace {
bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
}  // namespace

// CFBI_CPU_ISA=portable forces the portable build (used by the tests to check it on any machine).
const SimdKernels& simd_kernels() {
  static const SimdKernels* chosen = [] {
    const char* forced = std::getenv("CFBI_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "portable") == 0) return &simd_base::kernels;
    return (cpu_has_avx2_fma() && simd_avx2::get() != nullptr) ? simd_avx2::get() : &simd_base::kernels;
  }();
  return *chosen;
}

}  // namespace cfbi
