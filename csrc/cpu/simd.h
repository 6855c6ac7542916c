// Hot inner loops of the float32 CPU kernels (float16 / bfloat16 inputs are converted to float32 for them),
// compiled once per instruction set (simd_kernels.h is included by simd_base.cpp, simd_avx2.cpp and
// simd_avx512.cpp) and picked at run time from what the CPU supports.
#pragma once

#include <cstdint>

namespace cfbi {

// Vector width of a build (SimdKernels::lanes, called kLanes below): 8 floats for the portable and AVX2 builds,
// 16 for AVX-512. Candidates of the global kernel are packed in blocks of kLanes, channel-major inside a block:
// packed[(block * C + c) * kLanes + lane]. A label's candidates occupy whole blocks (padding lanes have
// norm +inf, so they never win).
// Query pixels handled together by one call of the global tile kernel.
constexpr int64_t kQueryTile = 6;

struct SimdKernels {
  const char* name;
  int64_t lanes;  // kLanes of this build
  // For kQueryTile queries (queries [kQueryTile][C], their squared norms), the smallest
  // ||q||^2 + ||r||^2 - 2 q.r over the packed blocks [block_begin, block_end) and its packed position
  // (lowest on ties; -1 when every candidate is padding), and the second smallest value (+inf when there is none).
  void (*global_tile_min)(const float* queries, const float* query_norms, const float* packed,
                          const float* packed_norms, int64_t block_begin, int64_t block_end, int64_t channels,
                          float* best_dist, int64_t* best_pos, float* second_dist);
  // Local matching, one query row against one previous-frame row at a vertical offset. Rows are padded:
  // width is a multiple of kLanes and previous[x + dx] is readable for x < width, |dx| <= radius.
  // dist[(dx + radius) * width + x] = sum_c (query[c * channel_stride + x] - previous[c * channel_stride + x + dx])^2.
  void (*local_row_distances)(const float* query, const float* previous, int64_t channel_stride, int64_t channels,
                              int64_t width, int64_t radius, float* dist);
  // Local matching, one offset: for x < width (a multiple of kLanes), the candidate with label labels[x] (-1: none)
  // at distance dist[x] replaces entry (label, x) of ring_dist / ring_index (label stride label_stride) when
  // strictly closer; its index is index_base + x * index_step. Entries start at +inf / -1 and candidates arrive by
  // increasing index, so ties keep the lowest.
  void (*local_ring_update)(const float* dist, const int32_t* labels, int64_t width, int64_t num_labels,
                            int64_t label_stride, int32_t index_base, int32_t index_step, float* ring_dist,
                            int32_t* ring_index);
  // Global matching, the exact scan of one label for one query (query [C]) where the dot-product selection may have
  // been decided by rounding: the smallest sum_c (q_c - r_c)^2 over the blocks [block_begin, block_end) of `exact`
  // (the values as given, laid out as `packed`), positions >= limit left out, and its position (lowest on ties).
  void (*global_exact_min)(const float* query, const float* exact, int64_t block_begin, int64_t block_end,
                           int64_t limit, int64_t channels, float* best_dist, int64_t* best_pos);
};

// The best implementation for this CPU (AVX-512 F/VL/BW/DQ, else AVX2 + FMA, else the portable one), or the one
// named by the environment variable CFBI_CPU_ISA (portable, avx2, avx512; an error if the CPU lacks it).
const SimdKernels& simd_kernels();

}  // namespace cfbi
