"""Frames as image files: listing a frame folder and reading one frame as RGB (Pillow)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import InputError

__all__ = ["MediaError", "IMAGE_EXTENSIONS", "READ_ERRORS", "list_frames", "read_frame", "image_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# What Pillow raises for files it cannot read; UnidentifiedImageError is an OSError, and a header announcing
# more pixels than Image.MAX_IMAGE_PIXELS allows (a decompression bomb) raises DecompressionBombError.
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class MediaError(InputError):
    """An input that cannot be read or an output that cannot be written (the message names the file)."""


def list_frames(folder: str) -> list[str]:
    """Image files of a folder, sorted by name."""
    if not os.path.isdir(folder):
        raise MediaError(f"frame folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise MediaError(f"frame folder {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in names]


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file; MediaError naming the file when it is missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"missing frame: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except READ_ERRORS as error:
        raise MediaError(f"cannot read image {path!r}: {error}") from None


def image_size(path: str | os.PathLike, what: str = "image") -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding it (checks a folder before a long run);
    MediaError naming the file when it is missing, unreadable or a decompression bomb."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"missing {what}: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except READ_ERRORS as error:
        raise MediaError(f"cannot read {what} {path!r}: {error}") from None
