"""`cfbi export`: the per-frame computation of single-scale inference as two AOTInductor packages.

The video's state is cut out of the network, so that the loop, the annotations and the object ids stay in the
host program (cfbi_model.inference.exported in Python, examples/cpp/segment_video.cpp in C++):

    encode.pt2   encode(frame uint8 [H, W, 3] RGB, grid [h, w, 0])
                   -> e4 [1, E, h/4+, w/4+], e8 [1, E, ...], e16 [1, E, ...], low_level [1, C1, h4, w4]
                 normalisation (BGR, ImageNet mean / std) and the bicubic resize to the network size h x w inside;
                 h, w = 16k + 1 come from the long-edge rule (inference_size), computed by the host, and reach the
                 package as the shape of `grid` (zero elements): a size must be a shape to be dynamic.
    segment.pt2  segment(e4, e8, e16, low_level, ref4, ref8, ref16, ref_labels4, ref_labels8, ref_labels16,
                         prev4, prev8, prev16, prev_labels4, prev_labels8, prev_labels16, ids [L], frame_grid [H, W, 0])
                   -> probs [L, H, W] float32 (softmax over the labels at frame size), labels [H, W] int64 (argmax)
                 references per scale [T, C_s, h_s, w_s] (C_s = reference_channels[s]) with labels [T, h_s, w_s];
                 previous frame per scale [E, h_s, w_s] with labels [h_s, w_s]; L = ids.shape[0] labels
                 (background included; the values of ids are not read).

The host's state update: previous = the frame's embeddings, previous labels = the final labels (after an
annotation's corrections) nearest-resized to each grid; an annotated frame also appends its embeddings (the first
reference_channels[s] channels) and labels to the references. Frame size, network size, T and L are dynamic
(torch.export.Dim) within the bounds written to export.json.

Not exported: multi-scale and flip test-time augmentation (several network sizes per frame and an average over
views); they stay in VideoSegmenter (Python).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MIN_GRID_STEPS, ExportBounds, InferenceConfig
from ..errors import InputError
from ..modeling.network import CFBIPlus, FrameFeatures
from ..modeling.precision import autocast, compute_dtype
from ..modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ExportBounds", "ExportError", "export_model", "MANIFEST", "FORMAT_VERSION"]

MANIFEST = "export.json"
FORMAT_VERSION = 1


class ExportError(InputError):
    """An exported package that cannot be used here (missing, another torch, bounds, op library); one line."""


class _Encode(nn.Module):
    """encode(frame, grid): uint8 RGB [H, W, 3] -> FrameFeatures at the network size grid.shape[:2]."""

    def __init__(self, model: CFBIPlus, compute_dtype: torch.dtype | None, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        self.device_type = device_type
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, frame: Tensor, grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # As preprocess(): RGB -> BGR, /255, normalised; then the engine's bicubic resize (an identity at equal size).
        x = frame.permute(2, 0, 1).flip(0).unsqueeze(0).float() / 255.0
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        x = F.interpolate(x, size=(grid.shape[0], grid.shape[1]), mode="bicubic", align_corners=False)
        with autocast(self.compute_dtype is not None, self.compute_dtype, self.device_type):
            features = self.model.extract_features(x)
        e4, e8, e16 = features.embeddings
        return e4, e8, e16, features.low_level


class _Segment(nn.Module):
    """segment(current features, references, previous, ids, frame_grid) -> probs [L, H, W], labels [H, W]."""

    def __init__(
        self, model: CFBIPlus, config: InferenceConfig, compute_dtype: torch.dtype | None, device_type: str
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.compute_dtype = compute_dtype
        self.device_type = device_type

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        e4, e8, e16, low_level = inputs[0:4]
        references, reference_labels = inputs[4:7], inputs[7:10]
        previous, previous_labels = inputs[10:13], inputs[13:16]
        ids, frame_grid = inputs[16], inputs[17]
        with autocast(self.compute_dtype is not None, self.compute_dtype, self.device_type):
            logits = self.model.segment(
                FrameFeatures((e4, e8, e16), low_level),
                [r.unsqueeze(0) for r in references],
                [r.unsqueeze(0) for r in reference_labels],
                [p.unsqueeze(0) for p in previous],
                [p.unsqueeze(0) for p in previous_labels],
                ids.shape[0],
                global_atrous=self.config.global_atrous,
                min_matching_pixels=self.config.min_matching_pixels,
            )[0]
        # As VideoSegmenter._advance: bilinear (align_corners) to the frame size in float32, softmax, argmax.
        logits = F.interpolate(
            logits.unsqueeze(0).float(),
            size=(frame_grid.shape[0], frame_grid.shape[1]),
            mode="bilinear",
            align_corners=True,
        )
        probs = torch.softmax(logits, dim=1)[0]
        return probs, probs.argmax(dim=0)


def _dim(name: str, low: int, high: int) -> Any:
    """A dynamic size in [low, high], or the int itself where the bounds leave one value (a static size)."""
    return low if low == high else torch.export.Dim(name, min=low, max=high)


def export_model(
    model: CFBIPlus,
    out: str | os.PathLike,
    *,
    config: InferenceConfig | None = None,
    bounds: ExportBounds | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Export `model` (weights loaded, on the device the packages are for) to OUT/encode.pt2, OUT/segment.pt2 and
    OUT/export.json; returns the manifest. config: the single-scale inference settings baked in (global_atrous,
    min_matching_pixels, precision: 16-bit under autocast as in VideoSegmenter, `auto` resolved for the export
    device) and the long-edge cap the host applies."""
    config = config if config is not None else InferenceConfig()
    bounds = bounds if bounds is not None else ExportBounds()
    if config.scales != (1.0,) or config.flip:
        raise ValueError("only single-scale inference without flip can be exported (scales=(1.0,), flip=False)")
    say = log or (lambda _text: None)
    model = model.eval()
    parameter = next(model.parameters())
    device = parameter.device
    compute = compute_dtype(config.precision, device)
    dtype = "float32" if compute is None else str(compute).removeprefix("torch.")
    cfg = model.config
    embedding_dim = cfg.embedding_dim
    reference_channels = [embedding_dim, cfg.matching_dims[1], cfg.matching_dims[2]]

    # Dynamic sizes. Network size h = 16 kh + 1; the grids of the three scales are 4 kh + 1, 2 kh + 1, kh + 1.
    max_steps = (bounds.max_network_side - 1) // 16
    kh, kw = _dim("kh", MIN_GRID_STEPS, max_steps), _dim("kw", MIN_GRID_STEPS, max_steps)
    frame_h, frame_w = _dim("frame_h", 17, bounds.max_side), _dim("frame_w", 17, bounds.max_side)
    refs = _dim("references", 1, bounds.max_references)
    labels_dim = _dim("labels", 2, bounds.max_objects + 1)
    grids = [(4 * kh + 1, 4 * kw + 1), (2 * kh + 1, 2 * kw + 1), (kh + 1, kw + 1)]

    # Example inputs inside the bounds, two sides of different sizes where the bounds allow (equal examples could
    # tie two dynamic sizes together).
    frame_size = (max(17, min(100, bounds.max_side - 1)), min(140, bounds.max_side))
    net_steps = (max(MIN_GRID_STEPS, min(6, max_steps - 1)), min(9, max_steps))
    net = tuple(16 * k + 1 for k in net_steps)
    num_labels, num_refs = min(4, bounds.max_objects + 1), min(2, bounds.max_references)
    frame = torch.randint(0, 256, (*frame_size, 3), dtype=torch.uint8, device=device)
    grid = torch.empty((*net, 0), dtype=torch.uint8, device=device)
    encoder = _Encode(model, compute, device.type).to(device)
    segmenter = _Segment(model, config, compute, device.type)

    started = time.perf_counter()
    # Size-oblivious tracing: a dynamic size is not specialised where it could be 1 (e.g. one object, L - 1 = 1),
    # so one graph serves every size in the bounds.
    with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
        encode_ep = torch.export.export(
            encoder,
            (frame, grid),
            dynamic_shapes={"frame": {0: frame_h, 1: frame_w}, "grid": {0: 16 * kh + 1, 1: 16 * kw + 1}},
            strict=False,
        )
        e4, e8, e16, low_level = encoder(frame, grid)
        generator = torch.Generator(device=device).manual_seed(0)
        labels = [torch.randint(0, num_labels, e.shape[-2:], generator=generator, device=device) for e in (e4, e8, e16)]
        references = tuple(torch.cat([e[:, :c]] * num_refs) for e, c in zip((e4, e8, e16), reference_channels))
        reference_labels = tuple(torch.stack([lab] * num_refs) for lab in labels)
        previous = tuple(e[0] for e in (e4, e8, e16))
        ids = torch.arange(num_labels, device=device)
        frame_grid = torch.empty((*frame_size, 0), dtype=torch.uint8, device=device)
        segment_inputs = (e4, e8, e16, low_level, *references, *reference_labels, *previous, *labels, ids, frame_grid)
        feature = [{0: torch.export.Dim.STATIC, 2: g[0], 3: g[1]} for g in grids]
        segment_shapes = (
            *feature,
            {0: torch.export.Dim.STATIC, 2: grids[0][0], 3: grids[0][1]},
            *({0: refs, 2: g[0], 3: g[1]} for g in grids),
            *({0: refs, 1: g[0], 2: g[1]} for g in grids),
            *({1: g[0], 2: g[1]} for g in grids),
            *({0: g[0], 1: g[1]} for g in grids),
            {0: labels_dim},
            {0: frame_h, 1: frame_w},
        )
        segment_ep = torch.export.export(segmenter, segment_inputs, dynamic_shapes=(segment_shapes,), strict=False)
    export_seconds = time.perf_counter() - started
    say(f"traced in {export_seconds:.1f} s; compiling the packages (AOTInductor)")

    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    # Write into a temporary folder beside OUT, then move: a failed compile leaves OUT's earlier packages alone.
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        for name, program in (("encode", encode_ep), ("segment", segment_ep)):
            torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(scratch, f"{name}.pt2"))
        for name in ("encode", "segment"):
            os.replace(os.path.join(scratch, f"{name}.pt2"), os.path.join(out, f"{name}.pt2"))
    compile_seconds = time.perf_counter() - started

    import cfbi_ops  # noqa: PLC0415

    manifest = {
        "format": "cfbi-export",
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "device": device.type,
        "dtype": dtype,
        "model_config": cfg.name,
        "packages": {"encode": "encode.pt2", "segment": "segment.pt2"},
        # The packages call the cfbi:: custom ops through the dispatcher: load this library before them.
        "op_library": os.path.abspath(cfbi_ops._C.__file__) if cfbi_ops.HAS_EXTENSION else None,
        "ops": ["cfbi::global_match", "cfbi::local_match"],
        "frame": {"layout": "HWC", "dtype": "uint8", "channels": "RGB", "min_side": 17, "max_side": bounds.max_side},
        "normalisation": {
            "channel_order": "BGR",
            "scale": 1 / 255,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "long_edge_cap": config.long_edge_cap,
        "network_size": "cap the long edge at long_edge_cap (factor cap / long edge), truncate, round each side to "
        "the nearest 16k + 1 (halves to even), at least 17; bicubic resize inside encode",
        "min_network_side": 16 * MIN_GRID_STEPS + 1,
        "max_network_side": bounds.max_network_side,
        "max_objects": bounds.max_objects,
        "max_references": bounds.max_references,
        "reference_channels": reference_channels,
        "ids": "annotation ids: 0 background, 1..254 objects, 255 ignored; label l of the network is ids[l], new ids "
        "appended in increasing order as annotations bring them; probs channel l is label l",
        "inference": {"global_atrous": config.global_atrous, "min_matching_pixels": config.min_matching_pixels},
        "export_seconds": round(export_seconds, 1),
        "compile_seconds": round(compile_seconds, 1),
    }
    with open(os.path.join(out, MANIFEST + ".tmp"), "w") as handle:
        json.dump(manifest, handle, indent=2)
    os.replace(os.path.join(out, MANIFEST + ".tmp"), os.path.join(out, MANIFEST))
    return manifest
