"""Public matching operators: validation, backend choice, torch custom ops (fake kernels + autograd) and the
torch.autograd.Function entry points, all sharing one backward implementation.

Backends (README, "The operators"; docs/design.md):
- ``"compiled"``: the cfbi:: custom ops of the extension cfbi_ops._C (CPU and CUDA kernels);
- ``"reference"``: the plain-PyTorch implementation in cfbi_ops.reference (differentiable by torch autograd);
- ``"auto"`` (default): ``"compiled"`` when the extension is loaded, else ``"reference"``.
A call chooses with ``backend=...``; a process with the environment variable ``CFBI_OPS_BACKEND``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _validate
from . import reference as _reference

try:
    from . import _C  # noqa: F401  (loading it registers the cfbi:: ops)

    HAS_EXTENSION = True
    EXTENSION_ERROR: str | None = None
except ImportError as error:  # exercised with the import blocked (tests/test_ops_backends.py)
    HAS_EXTENSION = False
    EXTENSION_ERROR = str(error)
    warnings.warn(
        f"cfbi_ops: the compiled extension could not be loaded ({error}); using the slower pure-PyTorch "
        "reference implementation. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

# The CUDA kernels live in their own library, loaded where torch has CUDA (cfbi_ops/_libraries.py).
from ._libraries import load_cuda_kernels  # noqa: E402

HAS_CUDA_KERNELS, CUDA_KERNELS_ERROR = load_cuda_kernels(HAS_EXTENSION)

DEFAULT_WINDOWS = (4, 8, 12, 16, 20, 24)
BACKENDS = ("auto", "compiled", "reference")
_logger = logging.getLogger("cfbi_ops")
_logged: set[str] = set()


def _check_backend(value: object, source: str) -> str:
    if value not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value  # type: ignore[return-value]


# The process-wide choice, read once at import (an invalid value fails the import with a clear message).
DEFAULT_BACKEND = _check_backend(os.environ.get("CFBI_OPS_BACKEND", "auto"), "CFBI_OPS_BACKEND")


def resolve_backend(backend: str | None = None) -> str:
    """The backend a call runs on: ``"compiled"`` or ``"reference"``.

    backend: ``None`` (the process default, ``CFBI_OPS_BACKEND``, else ``"auto"``), ``"auto"``, ``"compiled"``
    or ``"reference"``. The first use of each backend is logged once (logger ``cfbi_ops``, level INFO).
    """
    choice = DEFAULT_BACKEND if backend is None else _check_backend(backend, "backend")
    if choice == "auto":
        choice = "compiled" if HAS_EXTENSION else "reference"
    if choice == "compiled" and not HAS_EXTENSION:
        raise RuntimeError(
            f"backend 'compiled' asked for, but the extension cfbi_ops._C could not be loaded: {EXTENSION_ERROR}"
        )
    if choice not in _logged:
        _logged.add(choice)
        reason = (
            "the compiled extension is not loaded"
            if not HAS_EXTENSION
            else (f"chosen by {'CFBI_OPS_BACKEND' if backend is None else 'backend='}")
        )
        _logger.info("cfbi_ops: running on the %s backend (%s)", choice, reason)
    return choice


def _grad_or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _differentiable_backward(
    query: Tensor,
    candidates: Tensor,
    fg: Tensor,
    argmin: Tensor,
    fg_bias: Tensor,
    bg_bias: Tensor,
    grad_fg: Tensor | None,
    grad_bg: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward of both ops in differentiable torch terms, for second derivatives (create_graph=True).

    The distance to the saved argmin candidate is piecewise quadratic, so writing its first derivative with torch
    ops through that candidate gives the exact second derivative (within a piece, as every derivative here).
    query [B, C, H, W]; candidates [B, C, M] (flattened candidate order of argmin); fg, argmin [B, L, *S]
    (S = (H, W) or (K, H, W)). Returns the gradients of query, candidates [B, C, M], fg_bias and bg_bias.
    It holds [B, C, L * prod(S)] tensors: the memory rule of the kernels is kept by the first-order path only.
    """
    dtype = query.dtype
    wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # 16-bit computed in float32
    batch, channels = query.shape[:2]
    num_labels, out_shape = fg.shape[1], fg.shape
    q, cand = query.to(wide), candidates.to(wide)
    pixels = query.shape[2] * query.shape[3]
    groups = math.prod(fg.shape[1:-2])  # L * K outputs per query pixel, the pixel innermost
    entries = groups * pixels
    # Explicit sizes throughout: with B = 0 or C = 0 a -1 would be ambiguous.
    found = argmin >= 0
    index = argmin.clamp(min=0).long().reshape(batch, 1, entries)
    chosen = cand.gather(2, index.expand(batch, channels, entries))  # [B, C, L * prod(S)]
    q = q.reshape(batch, channels, 1, pixels).expand(batch, channels, groups, pixels).reshape(batch, channels, entries)
    diff = torch.where(found.reshape(batch, 1, entries), q - chosen, 0.0)
    dist = (diff * diff).sum(1).reshape(out_shape)
    label_shape = (1, num_labels) + (1,) * (fg.dim() - 2)
    bias = torch.cat([bg_bias.reshape(1).to(wide), fg_bias.reshape(1).to(wide).expand(num_labels - 1)])
    score = torch.sigmoid(dist + bias.reshape(label_shape)) * 2 - 1
    # d score / d (distance + bias) = (1 - score^2) / 2; the background map of l is the fg of source_l.
    g_fg = _grad_or_zeros(grad_fg, fg).to(wide)
    g_bg = _grad_or_zeros(grad_bg, fg).to(wide)
    source = _reference.background_source(fg.detach())
    coef = g_fg.scatter_add(1, source, g_bg) if num_labels > 1 else g_fg + g_bg
    coef = torch.where(found, coef * (1 - score * score) / 2, 0.0)
    grad_pairs = 2 * coef.reshape(batch, 1, entries) * diff  # d / d query of each (label, pixel) term
    grad_query = grad_pairs.reshape(batch, channels, groups, pixels).sum(2).reshape(query.shape)
    grad_cand = torch.zeros_like(cand).scatter_add(2, index.expand_as(grad_pairs), -grad_pairs)
    per_label = coef.sum(0).reshape(num_labels, entries // num_labels).sum(1)
    grad_bg_bias = per_label[0].reshape(bg_bias.shape)
    grad_fg_bias = per_label[1:].sum().reshape(fg_bias.shape)
    return grad_query.to(dtype), grad_cand.to(dtype), grad_fg_bias.to(fg_bias.dtype), grad_bg_bias.to(bg_bias.dtype)


def _double_backward_wanted(*tensors: Tensor | None) -> bool:
    """True inside a backward with create_graph=True whose result can be differentiated again."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _global_backward(
    query: Tensor,
    reference_: Tensor,
    fg: Tensor,
    argmin: Tensor,
    fg_bias: Tensor,
    bg_bias: Tensor,
    grad_fg: Tensor | None,
    grad_bg: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _double_backward_wanted(query, reference_, fg_bias, bg_bias, grad_fg, grad_bg):
        batch, frames, channels, height, width = reference_.shape
        candidates = reference_.transpose(1, 2).reshape(batch, channels, frames * height * width)  # order (t, y, x)
        gq, gc, gfb, gbb = _differentiable_backward(query, candidates, fg, argmin, fg_bias, bg_bias, grad_fg, grad_bg)
        return gq, gc.reshape(batch, channels, frames, height, width).transpose(1, 2), gfb, gbb
    det = torch.are_deterministic_algorithms_enabled()  # the CUDA backward sorts instead of adding atomically
    gq, gr, gfb, gbb = torch.ops.cfbi.global_match_backward(
        _grad_or_zeros(grad_fg, fg), _grad_or_zeros(grad_bg, fg), fg, argmin, query, reference_, fg_bias, bg_bias, det
    )
    return gq, gr, gfb.reshape(fg_bias.shape).to(fg_bias.dtype), gbb.reshape(bg_bias.shape).to(bg_bias.dtype)


def _local_backward(
    query: Tensor,
    previous: Tensor,
    fg: Tensor,
    argmin: Tensor,
    fg_bias: Tensor,
    bg_bias: Tensor,
    grad_fg: Tensor | None,
    grad_bg: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _double_backward_wanted(query, previous, fg_bias, bg_bias, grad_fg, grad_bg):
        candidates = previous.reshape(previous.shape[0], previous.shape[1], previous.shape[2] * previous.shape[3])
        gq, gc, gfb, gbb = _differentiable_backward(query, candidates, fg, argmin, fg_bias, bg_bias, grad_fg, grad_bg)
        return gq, gc.reshape(previous.shape), gfb, gbb
    det = torch.are_deterministic_algorithms_enabled()
    gq, gp, gfb, gbb = torch.ops.cfbi.local_match_backward(
        _grad_or_zeros(grad_fg, fg), _grad_or_zeros(grad_bg, fg), fg, argmin, query, previous, fg_bias, bg_bias, det
    )
    return gq, gp, gfb.reshape(fg_bias.shape).to(fg_bias.dtype), gbb.reshape(bg_bias.shape).to(bg_bias.dtype)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "cfbi:: backward ops have no derivative of their own: differentiate twice through cfbi_ops.global_match / "
        "local_match or GlobalMatchFunction / LocalMatchFunction, whose backward is differentiable"
    )


if HAS_EXTENSION:

    @torch.library.register_fake("cfbi::global_match")
    def _global_match_fake(query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels):
        _validate.raw_op_args(query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous)
        shape = (query.shape[0], num_labels, query.shape[2], query.shape[3])
        return query.new_empty(shape), query.new_empty(shape), query.new_empty(shape, dtype=torch.int32)

    @torch.library.register_fake("cfbi::local_match")
    def _local_match_fake(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous):
        _validate.raw_op_args(query, previous, prev_labels, num_labels, fg_bias, bg_bias, atrous)
        shape = (query.shape[0], num_labels, len(windows), query.shape[2], query.shape[3])
        return query.new_empty(shape), query.new_empty(shape), query.new_empty(shape, dtype=torch.int32)

    # The kernels return each gradient in the layout of its input (as empty_like).
    @torch.library.register_fake("cfbi::global_match_backward")
    def _global_match_backward_fake(grad_fg, grad_bg, fg, argmin, query, reference_, fg_bias, bg_bias, _det=False):
        return torch.empty_like(query), torch.empty_like(reference_), query.new_empty(1), query.new_empty(1)

    @torch.library.register_fake("cfbi::local_match_backward")
    def _local_match_backward_fake(grad_fg, grad_bg, fg, argmin, query, previous, fg_bias, bg_bias, _det=False):
        return torch.empty_like(query), torch.empty_like(previous), query.new_empty(1), query.new_empty(1)

    def _setup_context(ctx, inputs, output):
        query, candidates, _, _, fg_bias, bg_bias = inputs[:6]
        fg, _, argmin = output
        ctx.save_for_backward(query, candidates, fg, argmin, fg_bias, bg_bias)

    def _global_match_autograd(ctx, grad_fg, grad_bg, _grad_argmin):
        gq, gr, gfb, gbb = _global_backward(*ctx.saved_tensors, grad_fg, grad_bg)
        return gq, gr, None, None, gfb, gbb, None, None

    def _local_match_autograd(ctx, grad_fg, grad_bg, _grad_argmin):
        gq, gp, gfb, gbb = _local_backward(*ctx.saved_tensors, grad_fg, grad_bg)
        return gq, gp, None, None, gfb, gbb, None, None

    torch.library.register_autograd("cfbi::global_match", _global_match_autograd, setup_context=_setup_context)
    torch.library.register_autograd("cfbi::local_match", _local_match_autograd, setup_context=_setup_context)
    # Called directly and differentiated again, the backward ops raise rather than give silent zeros.
    for _name in ("cfbi::global_match_backward", "cfbi::local_match_backward"):
        torch.library.register_autograd(_name, _no_double_backward, setup_context=lambda ctx, inputs, output: None)


def global_match(
    query: Tensor,
    reference: Tensor,
    ref_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor | float,
    bg_bias: Tensor | float,
    *,
    atrous: int = 1,
    atrous_min_pixels: int = 0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-object global nearest-neighbour matching (CFBI eq. 1-3, atrous eq. 8-9).

    Args:
        query: [B, C, H, W] embeddings of the current frame.
        reference: [B, C, Hr, Wr], or [B, T, C, Hr, Wr] for T reference frames forming one candidate set.
        ref_labels: [B, Hr, Wr] or [B, T, Hr, Wr] integer labels; values outside [0, num_labels) are ignored.
        num_labels: L, background label 0 included.
        fg_bias, bg_bias: one-element tensors (or numbers); label 0 uses bg_bias, the others fg_bias.
        atrous: only candidates with y % atrous == 0 and x % atrous == 0 count ...
        atrous_min_pixels: ... unless their label has at most atrous_min_pixels * atrous**2 pixels in that frame.
        backend: "auto", "compiled" or "reference"; None takes the process default (see resolve_backend).

    Returns:
        (fg, bg), each [B, L, H, W]: fg_l = 1 - 2 / (1 + exp(min_q ||e_p - e_q||^2 + b_l)) over the candidates of
        label l (1.0 when there is none); bg_l = min over j != l of fg_j (bg = fg when L == 1).
    """
    query, reference_, ref_labels = _validate.global_args(
        query, reference, ref_labels, num_labels, atrous, atrous_min_pixels
    )
    fg_bias = _validate.bias(fg_bias, "fg_bias", query)
    bg_bias = _validate.bias(bg_bias, "bg_bias", query)
    if resolve_backend(backend) == "reference":
        return _reference.global_match(
            query,
            reference_,
            ref_labels,
            num_labels,
            fg_bias,
            bg_bias,
            atrous=atrous,
            atrous_min_pixels=atrous_min_pixels,
        )
    fg, bg, _ = torch.ops.cfbi.global_match(
        query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels
    )
    return fg, bg


def local_match(
    query: Tensor,
    previous: Tensor,
    prev_labels: Tensor,
    num_labels: int,
    fg_bias: Tensor | float,
    bg_bias: Tensor | float,
    *,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    atrous: int = 1,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-window local nearest-neighbour matching against the previous frame (CFBI eq. 4-7, 10-12).

    Args:
        query, previous: [B, C, H, W] embeddings of the current and the previous frame.
        prev_labels: [B, H, W] integer labels of the previous frame; values outside [0, num_labels) are ignored.
        num_labels: L, background label 0 included.
        fg_bias, bg_bias: one-element tensors (or numbers); label 0 uses bg_bias, the others fg_bias.
        windows: K window sizes; window k holds the offsets (i*atrous, j*atrous) with |i|, |j| <= k // atrous.
            Offsets outside the frame are not candidates.
        atrous: stride of the window offsets.
        backend: "auto", "compiled" or "reference"; None takes the process default (see resolve_backend).

    Returns:
        (fg, bg), each [B, L, K, H, W], windows in the order given; scores as in global_match.
    """
    query, previous, prev_labels, windows = _validate.local_args(
        query, previous, prev_labels, num_labels, windows, atrous
    )
    fg_bias = _validate.bias(fg_bias, "fg_bias", query)
    bg_bias = _validate.bias(bg_bias, "bg_bias", query)
    if resolve_backend(backend) == "reference":
        return _reference.local_match(
            query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows=windows, atrous=atrous
        )
    fg, bg, _ = torch.ops.cfbi.local_match(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous)
    return fg, bg


class GlobalMatchFunction(torch.autograd.Function):
    """`GlobalMatchFunction.apply(query, reference, ref_labels, num_labels, fg_bias, bg_bias, atrous=1,
    atrous_min_pixels=0) -> (fg, bg)`: global_match as an autograd.Function (same backward as the op)."""

    @staticmethod
    def forward(ctx, query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous=1, atrous_min_pixels=0):
        query, ref5, ref_labels = _validate.global_args(
            query, reference_, ref_labels, num_labels, atrous, atrous_min_pixels
        )
        fg, bg, argmin = torch.ops.cfbi.global_match(
            query, ref5, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels
        )
        # The input itself is saved (ref5 is a view made here): a double backward must reach the caller's graph.
        ctx.save_for_backward(query, reference_, fg, argmin, fg_bias, bg_bias)
        return fg, bg

    @staticmethod
    def backward(ctx, grad_fg, grad_bg):
        query, reference_, fg, argmin, fg_bias, bg_bias = ctx.saved_tensors
        ref5 = reference_.unsqueeze(1) if reference_.dim() == 4 else reference_
        gq, gr, gfb, gbb = _global_backward(query, ref5, fg, argmin, fg_bias, bg_bias, grad_fg, grad_bg)
        return gq, gr.reshape(reference_.shape), None, None, gfb, gbb, None, None

    @classmethod
    def apply(cls, query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous=1, atrous_min_pixels=0):
        fg_bias = _validate.bias(fg_bias, "fg_bias", query)
        bg_bias = _validate.bias(bg_bias, "bg_bias", query)
        if resolve_backend() == "reference":
            return global_match(
                query,
                reference_,
                ref_labels,
                num_labels,
                fg_bias,
                bg_bias,
                atrous=atrous,
                atrous_min_pixels=atrous_min_pixels,
            )
        return super().apply(query, reference_, ref_labels, num_labels, fg_bias, bg_bias, atrous, atrous_min_pixels)


class LocalMatchFunction(torch.autograd.Function):
    """`LocalMatchFunction.apply(query, previous, prev_labels, num_labels, fg_bias, bg_bias,
    windows=(4, ..., 24), atrous=1) -> (fg, bg)`: local_match as an autograd.Function (same backward as the op)."""

    @staticmethod
    def forward(ctx, query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows=DEFAULT_WINDOWS, atrous=1):
        query, previous, prev_labels, windows = _validate.local_args(
            query, previous, prev_labels, num_labels, windows, atrous
        )
        fg, bg, argmin = torch.ops.cfbi.local_match(
            query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous
        )
        ctx.save_for_backward(query, previous, fg, argmin, fg_bias, bg_bias)
        return fg, bg

    @staticmethod
    def backward(ctx, grad_fg, grad_bg):
        gq, gp, gfb, gbb = _local_backward(*ctx.saved_tensors, grad_fg, grad_bg)
        return gq, gp, None, None, gfb, gbb, None, None

    @classmethod
    def apply(cls, query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows=DEFAULT_WINDOWS, atrous=1):
        fg_bias = _validate.bias(fg_bias, "fg_bias", query)
        bg_bias = _validate.bias(bg_bias, "bg_bias", query)
        if resolve_backend() == "reference":
            return local_match(
                query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows=windows, atrous=atrous
            )
        return super().apply(query, previous, prev_labels, num_labels, fg_bias, bg_bias, windows, atrous)
