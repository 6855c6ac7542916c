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
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
