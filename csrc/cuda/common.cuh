// Device-side helpers shared by the .cu files: 16-bit storage types usable with the templates of
// matching.h, launch-size helpers and the dtype switch. Kept free of torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cassert>
#include <cstdint>

#include "../matching.h"
#include "launchers.h"

namespace cfbi {
namespace cuda {

// 16-bit storage types with the conversions the templates of matching.h need (static_cast to and from
// float). torch builds device code with __CUDA_NO_HALF_CONVERSIONS__, so __half itself has none.
// Layout-compatible with at::Half / at::BFloat16 (raw IEEE binary16 / bfloat16 bits); conversions
// round to nearest even like c10's.
struct Float16 {
  __half value;
  Float16() = default;
  __host__ __device__ Float16(float f) : value(__float2half_rn(f)) {}
  __host__ __device__ operator float() const { return __half2float(value); }
};
struct BFloat16 {
  __nv_bfloat16 value;
  BFloat16() = default;
  __host__ __device__ BFloat16(float f) : value(__float2bfloat16_rn(f)) {}
  __host__ __device__ operator float() const { return __bfloat162float(value); }
};
static_assert(sizeof(Float16) == 2 && alignof(Float16) == 2, "Float16 must be 2 bytes");
static_assert(sizeof(BFloat16) == 2 && alignof(BFloat16) == 2, "BFloat16 must be 2 bytes");

constexpr int64_t kMaxGridBlocks = int64_t(1) << 20;

// Blocks of a grid-stride loop over n items (at least 1 block; callers skip n == 0).
inline unsigned int grid_stride_blocks(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxGridBlocks) blocks = kMaxGridBlocks;
  return static_cast<unsigned int>(blocks);
}

// Index of the first item of this thread and the stride of a grid-stride loop, in int64.
__device__ __forceinline__ int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace cuda
}  // namespace cfbi

// Device-side check of an argument the host cannot see without synchronising (like torch's
// CUDA_KERNEL_ASSERT: a failure is reported as "device-side assert triggered"). Active under NDEBUG too.
#define CFBI_DEVICE_CHECK(cond, message)                                                  \
  do {                                                                                    \
    if (!(cond)) __assert_fail(message, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
  } while (0)

// Runs `...` with scalar_t bound to the storage type of `dtype`; returns cudaErrorInvalidValue for an
// unknown dtype.
#define CFBI_CUDA_DISPATCH(dtype, ...)                              \
  switch (dtype) {                                                  \
    case ::cfbi::cuda::DType::kFloat32: {                           \
      using scalar_t = float;                                       \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    case ::cfbi::cuda::DType::kFloat64: {                           \
      using scalar_t = double;                                      \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    case ::cfbi::cuda::DType::kFloat16: {                           \
      using scalar_t = ::cfbi::cuda::Float16;                       \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    case ::cfbi::cuda::DType::kBFloat16: {                          \
      using scalar_t = ::cfbi::cuda::BFloat16;                      \
      __VA_ARGS__;                                                  \
      break;                                                        \
    }                                                               \
    default:                                                        \
      return cudaErrorInvalidValue;                                 \
  }
