// CPU emulation of the parts of the CUDA execution model the cfbi_ops kernels use, so that the .cu sources
// can be compiled by g++ and run without a GPU (tools/cuda_emulation/run.py). Every thread of a block is a
// std::thread, __syncthreads is a std::barrier, __shared__ arrays are function statics (blocks run one
// after another), atomics are std::atomic_ref. Only a development aid: it checks indexing and logic, not
// performance, warp-level behaviour or the GPU memory model.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned int x_, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t) { return "emulated CUDA error"; }
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
// A small device, so that work splitting across blocks happens on the small test cases.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = 4;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {
struct State {
  dim3 thread, block, block_dim, grid_dim;
  std::barrier<>* bar = nullptr;
  void* dyn = nullptr;
};
inline thread_local State tls;

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <class... Args>
  void operator()(Args&&... args) {
    const unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024) throw std::runtime_error("emulated launch: bad block size");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) throw std::runtime_error("emulated launch: empty grid");
    if (smem > 48 * 1024) throw std::runtime_error("emulated launch: dynamic shared memory over 48 KiB");
    std::vector<double> dyn((smem + 7) / 8 + 1);
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> bar(n);
          std::fill(dyn.begin(), dyn.end(), std::numeric_limits<double>::quiet_NaN());  // uninitialised
          std::vector<std::thread> threads;
          threads.reserve(n);
          for (unsigned t = 0; t < n; ++t) {
            threads.emplace_back([&, t] {
              tls.thread = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              tls.block = dim3(bx, by, bz);
              tls.block_dim = block;
              tls.grid_dim = grid;
              tls.bar = &bar;
              tls.dyn = dyn.data();
              kernel(args...);
              bar.arrive_and_drop();
            });
          }
          for (auto& th : threads) th.join();
        }
  }
};
template <class... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Launcher<P...>{kernel, grid, block, smem};
}
template <class T>
T* dynamic_shared() {
  return static_cast<T*>(tls.dyn);
}
}  // namespace emu

#define threadIdx (::emu::tls.thread)
#define blockIdx (::emu::tls.block)
#define blockDim (::emu::tls.block_dim)
#define gridDim (::emu::tls.grid_dim)
inline void __syncthreads() { ::emu::tls.bar->arrive_and_wait(); }

template <class T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> ref(*p);
  T old = ref.load();
  while (v < old && !ref.compare_exchange_weak(old, v)) {
  }
  return old;
}
