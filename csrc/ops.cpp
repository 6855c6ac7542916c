// Operator schemas of cfbi_ops: the one place where the cfbi:: ops are declared.
//
// The public Python functions (cfbi_ops.global_match / local_match) validate their arguments, reshape
// them to the canonical forms below and register fake kernels and autograd for these ops.
#include <torch/csrc/stable/library.h>

#include <string>

#include "cpu/simd.h"

STABLE_TORCH_LIBRARY(cfbi, m) {
  // query [B, C, H, W]; reference [B, T, C, Hr, Wr]; ref_labels [B, T, Hr, Wr] (integer);
  // fg_bias, bg_bias: one element each.
  // Returns fg, bg [B, L, H, W] and argmin [B, L, H, W] (int32 index into T*Hr*Wr, -1 = none).
  m.def(
      "global_match(Tensor query, Tensor reference, Tensor ref_labels, SymInt num_labels, Tensor fg_bias, "
      "Tensor bg_bias, int atrous, int atrous_min_pixels) -> (Tensor, Tensor, Tensor)");
  // Returns grad_query, grad_reference, grad_fg_bias [1], grad_bg_bias [1]. The biases of the forward call give
  // float16 / bfloat16 the slope of the score computed in float (the stored score is rounded). deterministic:
  // torch.are_deterministic_algorithms_enabled() of the caller (the stable ABI cannot read it from C++); the
  // CPU kernels are always deterministic, the CUDA kernels then sort instead of adding atomically.
  m.def(
      "global_match_backward(Tensor grad_fg, Tensor grad_bg, Tensor fg, Tensor argmin, Tensor query, "
      "Tensor reference, Tensor fg_bias, Tensor bg_bias, bool deterministic=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // query, previous [B, C, H, W]; prev_labels [B, H, W] (integer); windows: K window sizes.
  // Returns fg, bg [B, L, K, H, W] and argmin [B, L, K, H, W] (int32 index into H*W, -1 = none).
  m.def(
      "local_match(Tensor query, Tensor previous, Tensor prev_labels, SymInt num_labels, Tensor fg_bias, "
      "Tensor bg_bias, int[] windows, int atrous) -> (Tensor, Tensor, Tensor)");
  m.def(
      "local_match_backward(Tensor grad_fg, Tensor grad_bg, Tensor fg, Tensor argmin, Tensor query, "
      "Tensor previous, Tensor fg_bias, Tensor bg_bias, bool deterministic=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // The instruction set of the float32 CPU kernels in use ("avx2" or "portable").
  m.def("cpu_isa() -> str");
}

namespace {
std::string cpu_isa() { return cfbi::simd_kernels().name; }
}  // namespace

STABLE_TORCH_LIBRARY_IMPL(cfbi, CompositeExplicitAutograd, m) { m.impl("cpu_isa", TORCH_BOX(&cpu_isa)); }
