"""Files as a whole: their SHA-256 (what a run records of the checkpoint or the weights it started from)."""

from __future__ import annotations

import hashlib
import os

from .frames import MediaError

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks; MediaError naming the file when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise MediaError(f"cannot read {os.fspath(path)!r}: {error}") from None
    return digest.hexdigest()
