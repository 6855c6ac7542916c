// CPU forward of cfbi::global_match: per-object nearest neighbour over label-bucketed candidates.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../matching.h"
#include "backward_cpu.h"
#include "simd.h"

namespace cfbi {
namespace {

// Candidate pixels of one batch element, bucketed by label with a counting sort. Inside a bucket the
// flattened candidate indices (t * Hr * Wr + y * Wr + x) increase, so a strict "<" scan keeps the
// lowest index on ties.
struct LabelBuckets {
  std::vector<int64_t> start;  // num_labels + 1 offsets into index
  std::vector<int64_t> index;
};

LabelBuckets bucket_candidates(const int64_t* labels, int64_t frames, int64_t height, int64_t width,
                               int64_t num_labels, int64_t atrous, int64_t min_pixels) {
  const int64_t frame_pixels = height * width;
  std::vector<int64_t> frame_counts(num_labels);
  std::vector<char> keep(frames * frame_pixels, 0);
  LabelBuckets buckets;
  buckets.start.assign(num_labels + 1, 0);
  for (int64_t t = 0; t < frames; ++t) {
    const int64_t* frame = labels + t * frame_pixels;
    std::fill(frame_counts.begin(), frame_counts.end(), 0);
    for (int64_t i = 0; i < frame_pixels; ++i) {
      if (is_valid_label(frame[i], num_labels)) ++frame_counts[frame[i]];
    }
    for (int64_t i = 0; i < frame_pixels; ++i) {
      const int64_t label = frame[i];
      if (!is_valid_label(label, num_labels)) continue;
      if (keeps_global_candidate(i / width, i % width, atrous, frame_counts[label], min_pixels)) {
        keep[t * frame_pixels + i] = 1;
        ++buckets.start[label + 1];
      }
    }
  }
  for (int64_t l = 0; l < num_labels; ++l) buckets.start[l + 1] += buckets.start[l];
  buckets.index.resize(buckets.start[num_labels]);
  std::vector<int64_t> cursor(buckets.start.begin(), buckets.start.end() - 1);
  for (int64_t i = 0; i < frames * frame_pixels; ++i) {
    if (keep[i]) buckets.index[cursor[labels[i]]++] = i;
  }
  return buckets;
}

struct GlobalProblem {
  int64_t pixels, channels, frames, ref_height, ref_width, num_labels, atrous, min_pixels;
};

// Reads the embedding of candidate `index` (t * Hr * Wr + pixel) of a [T, C, Hr * Wr] reference.
struct ReferenceView {
  int64_t frame_pixels, channels;
  template <typename T>
  const T* at(const T* reference, int64_t index) const {
    return reference + (index / frame_pixels) * channels * frame_pixels + index % frame_pixels;
  }
  int64_t stride() const { return frame_pixels; }  // between channels
};

// float64 and non-finite inputs: per query pixel and label, a scan of the label's bucket with exact distances.
// query [C, N] and reference [T, C, Hr * Wr] of one batch element, as stored (no channels-last copies).
template <typename scalar_t>
void global_match_exact(const scalar_t* query, const scalar_t* reference, const int64_t* labels,
                        const GlobalProblem& pb, acc_t<scalar_t> fg_bias, acc_t<scalar_t> bg_bias, scalar_t* fg,
                        scalar_t* bg, int32_t* argmin) {
  using A = acc_t<scalar_t>;
  const int64_t channels = pb.channels, num_labels = pb.num_labels;
  const ReferenceView view{pb.ref_height * pb.ref_width, channels};
  const LabelBuckets buckets =
      bucket_candidates(labels, pb.frames, pb.ref_height, pb.ref_width, num_labels, pb.atrous, pb.min_pixels);
  // Candidate embeddings gathered in bucket order, so each label's scan reads contiguous memory.
  std::vector<scalar_t> candidates(buckets.index.size() * channels);
  for (size_t k = 0; k < buckets.index.size(); ++k) {
    const scalar_t* r = view.at(reference, buckets.index[k]);
    for (int64_t c = 0; c < channels; ++c) candidates[k * channels + c] = r[c * view.stride()];
  }
  torch::stable::parallel_for(0, pb.pixels, 16, [&](int64_t begin, int64_t end) {
    std::vector<A> best_dist(num_labels);
    std::vector<int64_t> best_index(num_labels);
    std::vector<scalar_t> q(channels);
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t c = 0; c < channels; ++c) q[c] = query[c * pb.pixels + p];
      for (int64_t l = 0; l < num_labels; ++l) {
        A best = A(0);
        int64_t best_k = -1;
        for (int64_t k = buckets.start[l]; k < buckets.start[l + 1]; ++k) {
          const A d = squared_distance<scalar_t, A>(q.data(), 1, candidates.data() + k * channels, 1, channels);
          if (best_k < 0 || nan_first_less(d, best)) {  // the NaN rule of matching.h
            best = d;
            best_k = k;
          }
        }
        best_dist[l] = best;
        best_index[l] = best_k < 0 ? kNoCandidate : buckets.index[best_k];
      }
      write_pixel_scores<scalar_t, A>(best_dist.data(), best_index.data(), num_labels, fg_bias, bg_bias, fg + p,
                                      bg + p, argmin + p, pb.pixels);
    }
  });
}

// float32, float16, bfloat16 (computed in float32: 16-bit values are converted as they are packed and as the
// query tiles are filled): the search is a blocked GEMM-like pass (||q'||^2 + ||r'||^2 - 2 q'.r' over candidate
// blocks that stay in cache, with a running min and second min per label; q', r' centred on the candidates' mean,
// see selection_centre), then the exact distance to each selected candidate from the values as given. Where the
// gap between the two smallest values does not exceed twice the rounding bound (selection_is_certain; an outlier
// that moves the centre, a near-tie), the label is scanned again for that query with exact distances.
template <typename In>
void global_match_batch_simd(const In* query, const In* reference, const int64_t* labels, const GlobalProblem& pb,
                             float fg_bias, float bg_bias, In* fg, In* bg, int32_t* argmin) {
  const int64_t channels = pb.channels, num_labels = pb.num_labels;
  const ReferenceView view{pb.ref_height * pb.ref_width, channels};
  const LabelBuckets buckets =
      bucket_candidates(labels, pb.frames, pb.ref_height, pb.ref_width, num_labels, pb.atrous, pb.min_pixels);
  std::vector<double> sums(channels, 0.0), sum_squares(channels, 0.0);
  std::vector<int64_t> counts(channels, 0);
  for (const int64_t index : buckets.index) {
    const In* r = view.at(reference, index);
    for (int64_t c = 0; c < channels; ++c) {
      const double value = static_cast<float>(r[c * view.stride()]);
      if (counts_for_centre(value)) {
        sums[c] += value;
        sum_squares[c] += value * value;
        ++counts[c];
      }
    }
  }
  std::vector<float> centre(channels);
  for (int64_t c = 0; c < channels; ++c) centre[c] = selection_centre(sums[c], sum_squares[c], counts[c]);
  const SimdKernels& simd = simd_kernels();
  const int64_t kLanes = simd.lanes;
  // Pack every label's candidates (centred) into whole blocks of kLanes; padding lanes have an infinite norm.
  // `exact` keeps each candidate's values as given, in the same layout, for the recomputation of the winner and the
  // exact scans. `label_norm` is the largest centred squared norm of each label (for selection_error_bound).
  std::vector<int64_t> label_blocks(num_labels + 1, 0);
  for (int64_t l = 0; l < num_labels; ++l) {
    label_blocks[l + 1] = label_blocks[l] + (buckets.start[l + 1] - buckets.start[l] + kLanes - 1) / kLanes;
  }
  const int64_t slots = label_blocks[num_labels] * kLanes;
  std::vector<float> packed(slots * channels, 0.0f), exact(slots * channels, 0.0f);
  std::vector<float> packed_norms(slots, std::numeric_limits<float>::infinity());
  std::vector<int64_t> packed_index(slots, kNoCandidate);
  std::vector<float> label_norm(num_labels, 0.0f);
  for (int64_t l = 0; l < num_labels; ++l) {
    for (int64_t k = buckets.start[l]; k < buckets.start[l + 1]; ++k) {
      const int64_t slot = label_blocks[l] * kLanes + (k - buckets.start[l]);
      const int64_t block = slot / kLanes, lane = slot % kLanes;
      const In* r = view.at(reference, buckets.index[k]);
      float norm = 0.0f;
      for (int64_t c = 0; c < channels; ++c) {
        const float value = static_cast<float>(r[c * view.stride()]), centred = value - centre[c];
        packed[(block * channels + c) * kLanes + lane] = centred;
        exact[(block * channels + c) * kLanes + lane] = value;
        norm += centred * centred;
      }
      packed_norms[slot] = norm;
      label_norm[l] = std::max(label_norm[l], norm);
      packed_index[slot] = buckets.index[k];
    }
  }
  auto exact_at = [&](int64_t slot) {  // channel c at [c * kLanes]
    return exact.data() + ((slot / kLanes) * channels) * kLanes + slot % kLanes;
  };
  const int64_t tiles = (pb.pixels + kQueryTile - 1) / kQueryTile;
  torch::stable::parallel_for(0, tiles, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(kQueryTile * channels), centred(kQueryTile * channels), centred_norms(kQueryTile);
    std::vector<float> dist(kQueryTile), second(kQueryTile);
    std::vector<int64_t> pos(kQueryTile);
    std::vector<float> best_dist(num_labels * kQueryTile);
    std::vector<int64_t> best_index(num_labels * kQueryTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * kQueryTile, count = std::min(kQueryTile, pb.pixels - first);
      std::fill(tile.begin(), tile.end(), 0.0f);
      std::fill(centred.begin(), centred.end(), 0.0f);
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t i = 0; i < count; ++i) {
          tile[i * channels + c] = static_cast<float>(query[c * pb.pixels + first + i]);
          centred[i * channels + c] = tile[i * channels + c] - centre[c];
        }
      }
      for (int64_t i = 0; i < kQueryTile; ++i) {
        float norm = 0.0f;
        for (int64_t c = 0; c < channels; ++c) norm += centred[i * channels + c] * centred[i * channels + c];
        centred_norms[i] = norm;
      }
      for (int64_t l = 0; l < num_labels; ++l) {
        simd.global_tile_min(centred.data(), centred_norms.data(), packed.data(), packed_norms.data(),
                             label_blocks[l], label_blocks[l + 1], channels, dist.data(), pos.data(), second.data());
        const int64_t first_slot = label_blocks[l] * kLanes;
        const int64_t label_count = buckets.start[l + 1] - buckets.start[l];
        for (int64_t i = 0; i < count; ++i) {
          const float* q = tile.data() + i * channels;
          int64_t winner = pos[i];
          float winner_dist = winner < 0 ? 0.0f : squared_distance<float, float>(q, 1, exact_at(winner), kLanes, channels);
          // Where rounding could have picked the wrong candidate (selection_is_certain), or picked none of an
          // existing label (values whose products overflow), the label is scanned with exact distances.
          if (label_count > 0 && (winner < 0 || selection_needs_exact_scan(dist[i], second[i], centred_norms[i],
                                                                            winner_dist, channels, label_norm[l]))) {
            simd.global_exact_min(q, exact.data(), label_blocks[l], label_blocks[l + 1], first_slot + label_count,
                                  channels, &winner_dist, &winner);
            if (winner >= 0) winner_dist = squared_distance<float, float>(q, 1, exact_at(winner), kLanes, channels);
          }
          best_index[i * num_labels + l] = winner < 0 ? kNoCandidate : packed_index[winner];
          best_dist[i * num_labels + l] = winner < 0 ? 0.0f : winner_dist;
        }
      }
      for (int64_t i = 0; i < count; ++i) {
        write_pixel_scores<In, float>(best_dist.data() + i * num_labels, best_index.data() + i * num_labels,
                                         num_labels, fg_bias, bg_bias, fg + first + i, bg + first + i,
                                         argmin + first + i, pb.pixels);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> global_match_cpu(const Tensor& query, const Tensor& reference,
                                                    const Tensor& ref_labels, int64_t num_labels,
                                                    const Tensor& fg_bias, const Tensor& bg_bias, int64_t atrous,
                                                    int64_t atrous_min_pixels) {
  check_global_args(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels);
  const int64_t batch = query.size(0), channels = query.size(1);
  const int64_t pixels = query.size(2) * query.size(3);
  const int64_t frames = reference.size(1), ref_height = reference.size(3), ref_width = reference.size(4);
  const Tensor query_c = dense(query), reference_c = dense(reference);
  const Tensor labels = dense(to_dtype(ref_labels, ScalarType::Long));
  const auto out_sizes = std::vector<int64_t>{batch, num_labels, query.size(2), query.size(3)};
  Tensor fg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor bg = empty_output(out_sizes, query.scalar_type(), query, num_labels);
  Tensor argmin = empty_output(out_sizes, ScalarType::Int, query, num_labels);

  CFBI_DISPATCH_FLOATING_AND_HALF(query.scalar_type(), "global_match_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A fg_b = host_scalar<A>(fg_bias), bg_b = host_scalar<A>(bg_bias);
    const int64_t ref_pixels = frames * ref_height * ref_width;
    const GlobalProblem problem{pixels, channels, frames, ref_height, ref_width, num_labels, atrous,
                                atrous_min_pixels};
    const scalar_t* query_data = query_c.const_data_ptr<scalar_t>();
    const scalar_t* reference_data = reference_c.const_data_ptr<scalar_t>();
    // float64, and non-finite embeddings of any dtype, take the exact scan, which applies the NaN rule (the
    // GEMM-like pass would skip NaN distances and turn inf into NaN).
    const bool exact = std::is_same_v<scalar_t, double> ||
                       !(all_finite(query_data, query_c.numel()) && all_finite(reference_data, reference_c.numel()));
    for (int64_t b = 0; b < batch; ++b) {
      const scalar_t* q = query_data + b * pixels * channels;
      const scalar_t* r = reference_data + b * ref_pixels * channels;
      const int64_t* l = labels.const_data_ptr<int64_t>() + b * ref_pixels;
      scalar_t* fg_b_out = fg.mutable_data_ptr<scalar_t>() + b * num_labels * pixels;
      scalar_t* bg_b_out = bg.mutable_data_ptr<scalar_t>() + b * num_labels * pixels;
      int32_t* argmin_b = argmin.mutable_data_ptr<int32_t>() + b * num_labels * pixels;
      if (exact) {
        global_match_exact<scalar_t>(q, r, l, problem, fg_b, bg_b, fg_b_out, bg_b_out, argmin_b);
      } else if constexpr (!std::is_same_v<scalar_t, double>) {
        global_match_batch_simd<scalar_t>(q, r, l, problem, fg_b, bg_b, fg_b_out, bg_b_out, argmin_b);
      }
    }
  });
  return {fg, bg, argmin};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> global_match_backward_cpu(
    const Tensor& grad_fg, const Tensor& grad_bg, const Tensor& fg, const Tensor& argmin, const Tensor& query,
    const Tensor& reference, const Tensor& fg_bias, const Tensor& bg_bias, bool /*deterministic: always*/) {
  CFBI_CHECK(reference.dim() == 5, "reference must be [B, T, C, Hr, Wr]");
  const Tensor candidates = global_reference_as_candidates(reference);
  check_backward_args(grad_fg, grad_bg, fg, argmin, query, candidates);
  check_argmin_range(argmin, candidates);
  check_bias(fg_bias, "fg_bias", query);
  check_bias(bg_bias, "bg_bias", query);
  auto [grad_query, grad_candidates, grad_fg_bias, grad_bg_bias] =
      matching_backward_cpu(grad_fg, grad_bg, fg, argmin, query, candidates, fg_bias, bg_bias);
  const Tensor grad_reference = candidates_as_global_reference(grad_candidates, reference);
  return {like_input(grad_query, query), like_input(grad_reference, reference), grad_fg_bias, grad_bg_bias};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cfbi, CPU, m) {
  m.impl("global_match", TORCH_BOX(&global_match_cpu));
  m.impl("global_match_backward", TORCH_BOX(&global_match_backward_cpu));
}

}  // namespace cfbi
