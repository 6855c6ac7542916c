"""Label masks: palette (or greyscale) PNGs whose pixel values are object ids, and the DAVIS palette."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .frames import READ_ERRORS, MediaError

__all__ = ["default_palette", "read_mask", "write_mask", "PARTIAL_SUFFIX"]

# A folder of masks still being written is named <name>.partial and renamed to <name> when complete, so a
# folder named after a video is always complete (cfbi_model.inference.sinks.MaskFolderWriter).
PARTIAL_SUFFIX = ".partial"

_LABEL_MODES = ("P", "L", "I", "I;16", "1")


def default_palette() -> list[int]:
    """The 256-colour PASCAL VOC / DAVIS palette (bits of the index spread over R, G, B)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [r, g, b]
    return palette


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, list[int] | None]:
    """Label map [H, W] uint8 and its palette (None when the file has none).

    Palette ('P'), greyscale ('L', 'I', 'I;16') and bilevel ('1') images hold the label values directly; colour
    images and values above 255 are refused. MediaError names the file when it is missing or unreadable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"missing mask: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            palette = image.getpalette() if mode == "P" else None
            labels = np.asarray(image)
    except READ_ERRORS as error:
        raise MediaError(f"cannot read mask {path!r}: {error}") from None
    if mode not in _LABEL_MODES:
        raise MediaError(f"mask {path!r} must be a palette or greyscale image of label ids, got mode {mode!r}")
    if labels.max(initial=0) > 255:
        raise MediaError(f"mask {path!r} has label values above 255")
    return labels.astype(np.uint8), palette


def write_mask(path: str | os.PathLike, labels: np.ndarray, palette: list[int] | None) -> None:
    """Write labels [H, W] as a palette PNG (the DAVIS palette when `palette` is None)."""
    path = os.fspath(path)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(palette if palette else default_palette())
    try:
        image.save(path)
    except OSError as error:
        raise MediaError(f"cannot write mask {path!r}: {error}") from error
