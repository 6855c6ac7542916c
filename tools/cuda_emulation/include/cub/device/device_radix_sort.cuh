// Emulated cub::DeviceRadixSort::SortPairs: a stable sort on the key bits [begin_bit, end_bit).
#pragma once
#include <algorithm>
#include <numeric>
#include <vector>

#include "../../emu.h"

namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, N n, int begin_bit, int end_bit, cudaStream_t) {
    if (temp == nullptr) {
      bytes = 16;
      return cudaSuccess;
    }
    std::vector<long> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0L);
    const K mask = end_bit >= int(8 * sizeof(K)) ? ~K(0) : ((K(1) << end_bit) - 1);
    auto bits = [&](K k) { return (k & mask) >> begin_bit; };
    std::stable_sort(order.begin(), order.end(), [&](long a, long b) { return bits(keys_in[a]) < bits(keys_in[b]); });
    for (N i = 0; i < n; ++i) {
      keys_out[i] = keys_in[order[i]];
      values_out[i] = values_in[order[i]];
    }
    return cudaSuccess;
  }
};
}  // namespace cub
