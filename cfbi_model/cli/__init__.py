"""The `cfbi` command line: one thin module per sub-command (parse the arguments, call the library)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `cfbi` parser; every public module of this package (name not starting with "_") adds a sub-command
    through its `add_parser(subparsers)`."""
    parser = argparse.ArgumentParser(prog="cfbi", description="CFBI+ video object segmentation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; one failure path for all of them: `cfbi <command>: error: <message>` on stderr and exit
    code 2 for a command-line mistake (argparse's own errors included: an unknown, malformed or missing option,
    options that contradict each other), 1 for bad input (a missing, unreadable or malformed file or folder,
    checkpoint, annotation, or bad data inside it), 130 when interrupted."""
    from ..errors import InputError, UsageError  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    prog = f"cfbi {args.command}"
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
