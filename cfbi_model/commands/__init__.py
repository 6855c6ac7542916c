"""Sub-commands of the `cfbi` command line: each module here defines `add_parser(subparsers)`, which adds
its sub-parser and sets `func` (called with the parsed arguments, returns an exit code)."""
import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
