"""Where 16-bit inference loses labels: each precision variant against float32 and against the float64 oracle.

    python -m benchmarks.precision_sensitivity [--configs resnet101 small] [--size 240 432] [--frames 5]
                                               [--objects 3] [--checkpoint model.pth ...]
                                               [--out benchmarks/results/precision_sensitivity.json]

For each configuration (random weights from seed 0, as benchmarks.model_speed; `small` also with the shipped
weights) and each --checkpoint, one synthetic clip (benchmarks.model_speed.synthetic_clip) runs through
VideoSegmenter as:

    float64                 the oracle (the model in float64)
    float32                 today's default
    bfloat16                InferenceConfig(precision="bfloat16")
    bfloat16, backbone fp32 the same with the ResNet backbone kept in float32 (autocast off inside it)
    bfloat16, backbone only only the backbone in bfloat16 (autocast off everywhere else)
    float32, bf16 weights   float32 compute with every weight rounded to bfloat16

and reports the label agreement with float32 and with float64, the largest probability difference from float64,
and how decided float32 itself is: the share of pixels whose two most likely labels are within 0.05 and the
agreement on the pixels whose margin is at least 0.1. A variant that agrees with float32 as well as float32 agrees
with float64 loses nothing to its precision that float32 keeps.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from benchmarks.machine import machine_info
from benchmarks.model_speed import make_model, synthetic_clip
from cfbi_model import CFBIPlus, VideoSegmenter

VARIANTS = (
    "float64",
    "float32",
    "bfloat16",
    "bfloat16, backbone fp32",
    "bfloat16, backbone only",
    "float32, bf16 weights",
)


def _float32_inside(module: torch.nn.Module) -> None:
    """Run `module` with autocast off and its floating-point inputs in float32 (the rest stays under autocast)."""
    forward = module.forward

    def run(*args: object) -> object:
        with torch.autocast("cpu", enabled=False):
            return forward(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))

    module.forward = run


def _bfloat16_inside(module: torch.nn.Module) -> None:
    """Run `module` under bfloat16 autocast although the caller's autocast is off."""
    forward = module.forward

    def run(*args: object) -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(*args)
        return tuple(t.float() for t in out) if isinstance(out, tuple) else out.float()

    module.forward = run


def _model(variant: str, base: CFBIPlus) -> tuple[CFBIPlus, str]:
    """A fresh copy of `base` prepared for `variant`, and the VideoSegmenter precision to run it with."""
    model = CFBIPlus(base.config).eval()
    model.load_state_dict(base.state_dict())
    backbone = model.feature_extracter.backbone
    if variant == "float64":
        return model.double(), "float32"
    if variant == "bfloat16, backbone fp32":
        _float32_inside(backbone)
        return model, "bfloat16"
    if variant == "bfloat16, backbone only":
        _bfloat16_inside(backbone)
        return model, "float32"
    if variant == "float32, bf16 weights":
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.to(torch.bfloat16).float())
        return model, "float32"
    return model, variant


def _run(model: CFBIPlus, precision: str, frames: list[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, list]:
    seg = VideoSegmenter(model, precision=precision)
    results = [seg.step(frames[0], labels)] + [seg.step(f) for f in frames[1:]]
    return np.stack([r.labels for r in results[1:]]), [r.probs.double() for r in results[1:]]


def _margin(probs: list[torch.Tensor]) -> np.ndarray:
    top = torch.stack(probs).topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]).numpy()


def measure(name: str, base: CFBIPlus, args: argparse.Namespace) -> list[dict]:
    frames, labels = synthetic_clip(args.frames + 1, *args.size, args.objects)
    outputs = {v: _run(*_model(v, base), frames, labels) for v in VARIANTS}
    (labels64, probs64), (labels32, probs32) = outputs["float64"], outputs["float32"]
    margin = _margin(probs32)
    decided = margin >= 0.1
    rows = []
    for variant, (found, probs) in outputs.items():
        rows.append(
            {
                "model": name,
                "variant": variant,
                "agreement_float32": float((found == labels32).mean()),
                "agreement_float64": float((found == labels64).mean()),
                "agreement_float32_decided": float((found == labels32)[decided].mean()),
                "max_prob_diff_float64": max(float((a - b).abs().max()) for a, b in zip(probs, probs64)),
                "float32_share_margin_below_0.05": float((margin < 0.05).mean()),
                "float32_share_margin_at_least_0.1": float(decided.mean()),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="random-weight models (default: resnet101 small; none with --checkpoint)",
    )
    parser.add_argument("--size", nargs=2, type=int, default=[240, 432], metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=5, help="propagated frames (after the annotated one)")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--checkpoint", nargs="*", default=[], help="also measure these checkpoints' weights")
    parser.add_argument("--out", default="benchmarks/results/precision_sensitivity.json")
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = [] if args.checkpoint else ["resnet101", "small"]
    from cfbi_model.build import load_model, shipped_weights  # noqa: PLC0415

    models = [(f"{c} (random, seed 0)", make_model(c, torch.device("cpu"))) for c in args.configs]
    if "small" in args.configs:
        models.append(("small (shipped weights)", load_model(shipped_weights())))
    models += [(os.path.basename(path), load_model(path)) for path in args.checkpoint]
    load_before = os.getloadavg()[0]
    rows = []
    print(
        "| model | variant | labels = float32 | labels = float64 | = float32 where its margin >= 0.1 "
        "| max prob diff to float64 |"
    )
    print("|---|---|---|---|---|---|")
    for name, base in models:
        for row in measure(name, base, args):
            rows.append(row)
            print(
                f"| {name} | {row['variant']} | {row['agreement_float32']:.4f} | {row['agreement_float64']:.4f} "
                f"| {row['agreement_float32_decided']:.4f} | {row['max_prob_diff_float64']:.2e} |",
                flush=True,
            )
        print(
            f"float32 margins of {name}: {rows[-1]['float32_share_margin_below_0.05']:.1%} of pixels below 0.05, "
            f"{rows[-1]['float32_share_margin_at_least_0.1']:.1%} at least 0.1",
            flush=True,
        )
    info = machine_info("cpu")
    info["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    with open(args.out, "w") as handle:
        json.dump({"args": vars(args), "machine": info, "rows": rows}, handle, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
