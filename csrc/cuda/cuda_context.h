// The device guard, the current stream and CUDA error checks of the CUDA registrations, through the stable C
// shim of torch (no libtorch C++ symbol). tools/cuda_emulation replaces this header with its own.
#pragma once

#include <cuda_runtime_api.h>

#include <torch/csrc/stable/accelerator.h>

#include <cstdint>

#include "../checks.h"

// The CUDA part of the shim (declared in torch/csrc/inductor/aoti_torch/c/shim.h under USE_CUDA); a C symbol of
// libtorch_cuda since torch 2.3.
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);

namespace cfbi {
namespace cuda {

// Makes the tensor's device current for the scope (torch::stable::accelerator::DeviceGuard, torch >= 2.9).
class DeviceGuard {
 public:
  explicit DeviceGuard(const Tensor& tensor) : guard_(tensor.get_device_index()) {}

 private:
  torch::stable::accelerator::DeviceGuard guard_;
};

// torch's current CUDA stream of the tensor's device.
inline cudaStream_t current_stream(const Tensor& tensor) {
  void* stream = nullptr;
  CFBI_CHECK(aoti_torch_get_current_cuda_stream(tensor.get_device_index(), &stream) == 0,
             "cfbi_ops: cannot get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

inline void check_cuda_error(cudaError_t error) {
  CFBI_CHECK(error == cudaSuccess, "CUDA error: ", cudaGetErrorString(error));
}

}  // namespace cuda
}  // namespace cfbi
