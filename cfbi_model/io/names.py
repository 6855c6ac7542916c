"""Names that become path components: a video name from meta.json or a split file, `name=`, `--name`.

A name from data or an argument is not a path. It becomes at most one plain component, checked here, where it
meets the file system: no separator, not "." or "..", not absolute, not empty.
"""

from __future__ import annotations

import os

from .frames import MediaError

__all__ = ["plain_name", "split_file_name"]


def plain_name(name: object, what: str = "name") -> str:
    """`name` itself when it is one plain path component; MediaError (one line, naming `what`) otherwise."""
    if not isinstance(name, str):
        raise MediaError(f"{what} must be a string, got {type(name).__name__}")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or name in (".", "..") or any(s in name for s in separators) or "\0" in name:
        raise MediaError(f"{what} {name!r} is not a plain folder name (no separator, not '.' or '..', not empty)")
    return name


def split_file_name(line: str) -> str:
    """A line of a split file as a video name: surrounding whitespace and trailing '/' stripped (as `ls -d */`
    writes them); "" for a blank line. Not yet checked: plain_name does that where it meets the file system."""
    return line.strip().rstrip("/").strip()
