// The portable build of the SIMD kernels, and the run-time choice between the builds.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "simd.h"

namespace cfbi {
namespace simd_base {
#define CFBI_SIMD_NAME "portable"
#define CFBI_SIMD_LANES 8
#include "simd_kernels.h"
#undef CFBI_SIMD_NAME
#undef CFBI_SIMD_LANES
}  // namespace simd_base

namespace simd_avx2 {
const SimdKernels* get();
}
namespace simd_avx512 {
const SimdKernels* get();
}

namespace {
bool cpu_supports(const std::string& isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }
#endif
  return isa == "portable";
}

const SimdKernels* build_for(const std::string& isa) {
  const SimdKernels* build = isa == "avx512" ? simd_avx512::get()
                             : isa == "avx2" ? simd_avx2::get()
                             : isa == "portable" ? &simd_base::kernels
                                                 : nullptr;
  return build != nullptr && cpu_supports(isa) ? build : nullptr;
}

const SimdKernels* choose() {
  const char* forced = std::getenv("CFBI_CPU_ISA");
  if (forced != nullptr && forced[0] != '\0') {
    const SimdKernels* build = build_for(forced);
    if (build == nullptr) {
      throw std::runtime_error(std::string("CFBI_CPU_ISA=") + forced +
                               ": not a build of this library that the CPU supports (portable, avx2, avx512)");
    }
    return build;
  }
  for (const char* isa : {"avx512", "avx2"}) {
    if (const SimdKernels* build = build_for(isa)) return build;
  }
  return &simd_base::kernels;
}
}  // namespace

// Chosen once per process; the tests force each build through CFBI_CPU_ISA in a subprocess.
const SimdKernels& simd_kernels() {
  static const SimdKernels* chosen = choose();
  return *chosen;
}

}  // namespace cfbi
