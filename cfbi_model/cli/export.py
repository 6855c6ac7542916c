"""`cfbi export`: the model of a checkpoint as AOTInductor packages for deployment (cfbi_model.inference.export).

    cfbi export --checkpoint model.pth --out DIR [--device cpu|cuda] [--dtype float32|bfloat16|float16|auto]
                [--global-atrous N] [--min-matching-pixels N] [--max-long-edge PX] [bounds]

Writes DIR/encode.pt2, DIR/segment.pt2 and DIR/export.json. Run them with `cfbi segment --exported DIR`,
cfbi_model.load_exported(DIR) or examples/cpp/segment_video. Single-scale inference without flip: multi-scale and
flip test-time augmentation are not exported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..config import ExportBounds, InferenceConfig
from ..errors import UsageError
from ._options import HelpFormatter, add_config_argument, add_config_arguments, given_config_values

__all__ = ["add_parser", "run"]

_PROG = "cfbi export"
_INFERENCE_FIELDS = ("global_atrous", "min_matching_pixels", "max_long_edge")  # what single-scale export keeps


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to AOTInductor packages",
        description="Export the per-frame computation of a checkpoint's model (single scale, no flip) to two "
        "AOTInductor packages and export.json, for cfbi segment --exported, cfbi_model.load_exported and the C++ "
        "runner examples/cpp/segment_video.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="CFBI+ checkpoint (.pth)")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/encode.pt2, segment.pt2, export.json")
    add_config_argument(parser, "(default: the checkpoint's; resnet101 for a file that names none)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device the packages run on")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=InferenceConfig.__dataclass_fields__["precision"].metadata["choices"],
        help="compute precision, as InferenceConfig.precision / cfbi segment --precision (16-bit: the network under "
        "autocast, probabilities in float32; auto: bfloat16 where the export device computes it natively)",
    )
    inference = parser.add_argument_group("inference (defaults: cfbi_model.config.InferenceConfig)")
    for f in dataclasses.fields(InferenceConfig):
        if f.name in _INFERENCE_FIELDS:
            kind = float if f.name == "max_long_edge" else int
            inference.add_argument(
                "--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"]
            )
    add_config_arguments(parser.add_argument_group("bounds of the dynamic sizes"), ExportBounds)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Exit codes (cfbi_model.cli.main): 2 for a command-line mistake, 1 for bad input."""
    import torch  # noqa: PLC0415

    from ..build import load_model  # noqa: PLC0415
    from ..inference.export import export_model  # noqa: PLC0415
    from ..io.frames import MediaError  # noqa: PLC0415

    if not os.path.isfile(args.checkpoint):
        raise MediaError(f"checkpoint {args.checkpoint!r} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    try:
        bounds = ExportBounds(**given_config_values(args, ExportBounds))
        config = InferenceConfig(precision=args.dtype, **{name: getattr(args, name) for name in _INFERENCE_FIELDS})
    except ValueError as error:
        raise UsageError(str(error)) from None
    model = load_model(args.checkpoint, config=args.config, device=args.device)
    print(f"{_PROG}: tracing {model.config.name} ({args.dtype}, {args.device})", file=sys.stderr)
    manifest = export_model(
        model,
        args.out,
        config=config,
        bounds=bounds,
        log=lambda text: print(f"{_PROG}: {text}", file=sys.stderr),
    )
    sizes = sum(os.path.getsize(os.path.join(args.out, p)) for p in manifest["packages"].values())
    print(
        f"{_PROG}: wrote {args.out} ({sizes / 2**20:.1f} MiB of packages; compiled in "
        f"{manifest['compile_seconds']:.0f} s)",
        file=sys.stderr,
    )
    return 0
