"""Arguments shared by several sub-commands, with their defaults taken from the configuration dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from ..config import InferenceConfig, config_names
from ..errors import UsageError

__all__ = [
    "HelpFormatter",
    "positive_int",
    "add_inference_arguments",
    "inference_config",
    "add_config_arguments",
    "given_config_values",
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


def _shown(value: object) -> object:
    """A default as it is typed on the command line."""
    if dataclasses.is_dataclass(value):
        return value.name  # a configuration, given by name
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return value


def add_config_arguments(
    group: argparse._ActionsContainer,
    cls: type,
    *,
    note: Callable[[str], str] | None = None,
) -> None:
    """One option per field of a configuration dataclass (TrainConfig, ClipConfig), spelled as the field's
    metadata says (cfbi_model.config._option; default: --field-name), its help from the metadata followed by
    note(field name) and the field's default. Nested dataclass fields and `skip` get none.

    An option the command line does not give stays out of the namespace (argparse.SUPPRESS), so that
    given_config_values tells the given ones apart, e.g. those that override a recipe."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, meta = hints[f.name], f.metadata
        if "help" not in meta:
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if meta.get("square"):
            default = default[0]
        text = meta["help"] + (note(f.name) if note is not None else "") + f" (default: {_shown(default)})"
        name = "--" + meta.get("flag", f.name).replace("_", "-")
        options: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if "metavar" in meta:
            options["metavar"] = meta["metavar"]
        if kind is bool:
            group.add_argument(name, action=argparse.BooleanOptionalAction, **options)
            continue
        scalar = kind
        if typing.get_origin(kind) is tuple:
            scalar = typing.get_args(kind)[0]
            if not meta.get("square"):
                options["nargs"] = len(typing.get_args(kind))
        elif dataclasses.is_dataclass(kind):
            scalar = str  # a configuration name
        elif typing.get_args(kind):  # X | None
            scalar = next(a for a in typing.get_args(kind) if a is not type(None))
        if meta.get("minimum") == 1:
            scalar = positive_int
        if "choices" not in meta:  # argparse shows the choices otherwise
            options.setdefault("metavar", meta.get("flag", f.name).upper())
        group.add_argument(name, type=scalar, choices=meta.get("choices"), **options)


def given_config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of the options of add_config_arguments(cls) that the command line gave, by field name, as
    the field takes them (a tuple for a tuple, None for a zero_is_none 0, (n, n) for a square n)."""
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name) or "help" not in f.metadata:
            continue
        value = getattr(args, f.name)
        if f.metadata.get("square"):
            value = (value, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif f.metadata.get("zero_is_none") and value == 0:
            value = None
        values[f.name] = value
    return values


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
