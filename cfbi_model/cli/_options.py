"""Arguments shared by several sub-commands, with their defaults taken from the configuration dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import InferenceConfig, config_names
from ..errors import UsageError

__all__ = [
    "HelpFormatter",
    "positive_int",
    "add_inference_arguments",
    "inference_config",
    "add_config_argument",
    "add_runtime_arguments",
    "apply_runtime",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_inference_arguments(parser: argparse.ArgumentParser, prefix: str = "", title: str = "inference") -> None:
    """One option per InferenceConfig field (--global-atrous, --min-matching-pixels, --scales, --flip, --amp,
    --max-long-edge, --precision, --compile, each after `prefix`, e.g. "val-"), its default, help and choices
    taken from the field."""
    group = parser.add_argument_group(f"{title} (defaults: cfbi_model.config.InferenceConfig)")
    hints = typing.get_type_hints(InferenceConfig)
    for f in dataclasses.fields(InferenceConfig):
        kind, help_text = hints[f.name], f.metadata["help"]
        name = "--" + (prefix + f.name).replace("_", "-")
        if kind is bool:
            group.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(
                name, type=typing.get_args(kind)[0], nargs="+", default=list(f.default), metavar="S", help=help_text
            )
        else:
            scalar = next(a for a in typing.get_args(kind) if a is not type(None)) if typing.get_args(kind) else kind
            choices = f.metadata.get("choices")
            group.add_argument(name, type=scalar, default=f.default, choices=choices, help=help_text)


def inference_config(args: argparse.Namespace, prefix: str = "") -> InferenceConfig:
    """The InferenceConfig of arguments parsed with add_inference_arguments(prefix=...) (UsageError for invalid
    values)."""
    dest = prefix.replace("-", "_")
    try:
        return InferenceConfig(**{f.name: getattr(args, dest + f.name) for f in dataclasses.fields(InferenceConfig)})
    except ValueError as error:
        raise UsageError(str(error)) from None


def add_config_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--config",
        default=None,
        choices=config_names(),
        help=f"model configuration {what}; a checkpoint that names its own must agree with it",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads and --device, shared by every command that computes."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads (None: torch's choice; 1 is often fastest on a busy machine)",
    )
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="None: cuda when available")


def apply_runtime(args: argparse.Namespace) -> str:
    """Set the thread count; the device to run on ("cuda" / "cpu"). UsageError when CUDA is asked for and
    missing."""
    import torch  # noqa: PLC0415

    from ..runtime import default_device  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    return args.device or default_device()
