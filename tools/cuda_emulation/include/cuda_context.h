// Emulation of csrc/cuda/cuda_context.h: no device to guard, the null stream, error codes of emu.h.
#pragma once

#include "checks.h"
#include "emu.h"

namespace cfbi {
namespace cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(const Tensor&) {}
};

inline cudaStream_t current_stream(const Tensor&) { return nullptr; }

inline void check_cuda_error(cudaError_t error) { CFBI_CHECK(error == cudaSuccess, "CUDA error ", int(error)); }

}  // namespace cuda
}  // namespace cfbi
