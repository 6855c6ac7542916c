// Body of the SIMD kernels declared in simd.h. Included once per instruction set, inside
// `namespace cfbi::simd_<isa>`, after <cstdint> and simd.h, with CFBI_SIMD_NAME and CFBI_SIMD_LANES defined:
// it must include nothing itself, so that no shared inline function is compiled with the wider instruction set.
// GCC vector extensions: the same source becomes SSE2, AVX2/FMA or AVX-512 code depending on the target.

constexpr int64_t kLanes = CFBI_SIMD_LANES;

typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

static inline vfloat load(const float* p) {
  vfloat v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

static void global_tile_min(const float* queries, const float* query_norms, const float* packed,
                            const float* packed_norms, int64_t block_begin, int64_t block_end, int64_t channels,
                            float* best_dist, int64_t* best_pos, float* second_dist) {
  const float inf = __builtin_inff();
  vfloat best[kQueryTile], second[kQueryTile];
  vint best_lane_pos[kQueryTile];
  for (int64_t i = 0; i < kQueryTile; ++i) {
    best[i] = vfloat{} + inf;
    second[i] = vfloat{} + inf;
    best_lane_pos[i] = vint{} - 1;
  }
  vint lane_ids;
  for (int64_t lane = 0; lane < kLanes; ++lane) lane_ids[lane] = static_cast<int32_t>(lane);
  for (int64_t block = block_begin; block < block_end; ++block) {
    const float* cand = packed + block * channels * kLanes;
    vfloat acc[kQueryTile] = {};
    for (int64_t c = 0; c < channels; ++c) {
      const vfloat r = load(cand + c * kLanes);
      for (int64_t i = 0; i < kQueryTile; ++i) acc[i] += queries[i * channels + c] * r;
    }
    const vfloat norms = load(packed_norms + block * kLanes);
    const vint pos = lane_ids + static_cast<int32_t>(block * kLanes);
    for (int64_t i = 0; i < kQueryTile; ++i) {
      const vfloat d = (norms + query_norms[i]) - 2.0f * acc[i];
      const vint better = d < best[i];  // strict: a lane keeps its earliest (lowest) position on ties
      // The lane's second smallest value, for the rounding test (selection_is_certain): min(second, max(d, best)).
      const vfloat loser = better ? best[i] : d;
      second[i] = loser < second[i] ? loser : second[i];
      best[i] = better ? d : best[i];
      best_lane_pos[i] = better ? pos : best_lane_pos[i];
    }
  }
  for (int64_t i = 0; i < kQueryTile; ++i) {
    // s: the second smallest over the lanes (every lane's second, and the best of every lane but the winner's).
    float d = inf, s = inf;
    int64_t p = -1;
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const int64_t lp = best_lane_pos[i][lane];
      if (lp < 0) continue;
      const float value = best[i][lane];
      s = second[i][lane] < s ? second[i][lane] : s;
      if (p < 0 || value < d || (value == d && lp < p)) {
        s = d < s ? d : s;
        d = value;
        p = lp;
      } else {
        s = value < s ? value : s;
      }
    }
    best_dist[i] = d;
    best_pos[i] = p;
    second_dist[i] = s;
  }
}

// Exact squared distances (q - r)^2 summed channel by channel, of one query against the packed blocks
// [block_begin, block_end) of the values as given (layout of `packed`); positions >= limit are padding. The smallest
// and its position (lowest on ties; -1 when there is none).
static void global_exact_min(const float* query, const float* exact, int64_t block_begin, int64_t block_end,
                             int64_t limit, int64_t channels, float* best_dist, int64_t* best_pos) {
  const float inf = __builtin_inff();
  vfloat best = vfloat{} + inf;
  vint best_lane_pos = vint{} - 1;
  vint lane_ids;
  for (int64_t lane = 0; lane < kLanes; ++lane) lane_ids[lane] = static_cast<int32_t>(lane);
  for (int64_t block = block_begin; block < block_end; ++block) {
    const float* cand = exact + block * channels * kLanes;
    vfloat acc = {};
    for (int64_t c = 0; c < channels; ++c) {
      const vfloat diff = query[c] - load(cand + c * kLanes);
      acc += diff * diff;
    }
    const vint pos = lane_ids + static_cast<int32_t>(block * kLanes);
    const vint take = (pos < static_cast<int32_t>(limit)) & ((acc < best) | (best_lane_pos < 0));
    best = take ? acc : best;
    best_lane_pos = take ? pos : best_lane_pos;
  }
  float d = inf;
  int64_t p = -1;
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const int64_t lp = best_lane_pos[lane];
    if (lp < 0) continue;
    if (p < 0 || best[lane] < d || (best[lane] == d && lp < p)) {
      d = best[lane];
      p = lp;
    }
  }
  *best_dist = d;
  *best_pos = p;
}

static inline void store(float* p, vfloat v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Offsets handled together: each query vector loaded once feeds kOffsetBlock accumulators.
constexpr int64_t kOffsetBlock = 8;

static void local_row_distances(const float* query, const float* previous, int64_t channel_stride,
                                int64_t channels, int64_t width, int64_t radius, float* dist) {
  const int64_t span = 2 * radius + 1;
  for (int64_t x = 0; x < width; x += kLanes) {
    for (int64_t first = 0; first < span; first += kOffsetBlock) {
      const int64_t count = span - first < kOffsetBlock ? span - first : kOffsetBlock;
      const float* shifted = previous + x + first - radius;
      vfloat acc[kOffsetBlock] = {};
      if (count == kOffsetBlock) {  // the common case, fully unrolled
        for (int64_t c = 0; c < channels; ++c) {
          const vfloat q = load(query + c * channel_stride + x);
          const float* p = shifted + c * channel_stride;
          for (int64_t k = 0; k < kOffsetBlock; ++k) {
            const vfloat diff = q - load(p + k);
            acc[k] += diff * diff;
          }
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const vfloat q = load(query + c * channel_stride + x);
          const float* p = shifted + c * channel_stride;
          for (int64_t k = 0; k < count; ++k) {
            const vfloat diff = q - load(p + k);
            acc[k] += diff * diff;
          }
        }
      }
      for (int64_t k = 0; k < count; ++k) store(dist + (first + k) * width + x, acc[k]);
    }
  }
}

static inline vint load_int(const int32_t* p) {
  vint v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

static inline void store_int(int32_t* p, vint v) { __builtin_memcpy(p, &v, sizeof(v)); }

static void local_ring_update(const float* dist, const int32_t* labels, int64_t width, int64_t num_labels,
                              int64_t label_stride, int32_t index_base, int32_t index_step, float* ring_dist,
                              int32_t* ring_index) {
  vint lane_steps;
  for (int64_t lane = 0; lane < kLanes; ++lane) lane_steps[lane] = static_cast<int32_t>(lane) * index_step;
  for (int64_t x = 0; x < width; x += kLanes) {
    const vfloat d = load(dist + x);
    const vint label = load_int(labels + x);
    const vint index = lane_steps + (index_base + static_cast<int32_t>(x) * index_step);
    for (int64_t l = 0; l < num_labels; ++l) {
      float* best = ring_dist + l * label_stride + x;
      int32_t* best_index = ring_index + l * label_stride + x;
      const vfloat old = load(best);
      const vint take = (label == static_cast<int32_t>(l)) & (d < old);
      store(best, take ? d : old);
      store_int(best_index, take ? index : load_int(best_index));
    }
  }
}

static const SimdKernels kernels = {CFBI_SIMD_NAME,       kLanes,           &global_tile_min, &local_row_distances,
                                    &local_ring_update, &global_exact_min};
