"""Where a video's predictions go: sinks that run_video (cfbi_model.inference.driver) feeds frame by frame.

A sink has add(prediction, frame, stem) for each frame, finish() after the last one, and close() when the run
stops early (it then leaves nothing that looks finished). Several sinks can be attached to one run.

* MaskFolderWriter: palette PNGs of object ids in out_root/<name>/, written through out_root/<name>.partial/ and
  renamed when complete, so a folder named after a video is always finished (`cfbi evaluate`, `cfbi predict
  --resume` rely on it). It marks the folders it makes and never deletes or replaces one it did not make.
* MaskCollector: the masks in memory, [T, H, W] uint8.
* OverlaySink: an overlay video (.mp4) or animation (.gif) of the predictions on the frames.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from ..config import IGNORE_LABEL
from ..io.frames import MediaError
from ..io.masks import PARTIAL_SUFFIX, write_mask
from ..io.names import plain_name
from ..io.overlay import overlay as draw_overlay
from ..io.video import OverlayWriter
from .segmenter import FramePrediction

__all__ = [
    "Sink",
    "MaskFolderWriter",
    "MaskCollector",
    "OverlaySink",
    "MARKER",
    "PARTIAL_SUFFIX",
    "written_by_cfbi",
    "check_replaceable",
]

# The file by which a mask folder says that this writer made it (and with which settings): only such a folder
# is ever replaced or removed.
MARKER = ".cfbi-masks"


class Sink(Protocol):
    def add(self, prediction: FramePrediction, frame: Any, stem: str) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


def written_by_cfbi(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a mask folder this writer made (it holds the marker)."""
    return Path(folder).is_dir() and (Path(folder) / MARKER).is_file()


def check_replaceable(path: str | os.PathLike) -> None:
    """MediaError (one line) unless `path` is absent or a folder this writer made: the one check of what may be
    replaced, used by the writer and, before any work, by the commands."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()) or written_by_cfbi(path):
        return
    kind = "was not written by cfbi" if path.is_dir() else "is not a folder (not written by cfbi)"
    raise MediaError(
        f"{str(path)!r} exists and {kind}; no {MARKER} file: refusing to replace it (move it away or choose another "
        "output folder or name)"
    )


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The settings recorded in a finished mask folder's marker (None: no marker, or unreadable)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


class MaskFolderWriter:
    """Writes out_root/<name>/<stem>.png (palette PNGs of object ids) through out_root/<name>.partial/, renamed by
    finish(); with per_object also <name>/objects/<id>/<stem>.png (0 / 255 greyscale).

    name: one plain folder name (io.names.plain_name; MediaError otherwise). scored: the frame indices to write
    (None: every frame). settings: what the marker file records (e.g. the checkpoint and inference settings
    of `cfbi predict`, checked by --resume). An existing out_root/<name> or <name>.partial is replaced only
    when it holds the marker, i.e. when this writer made it; anything else is refused before any work."""

    def __init__(
        self,
        out_root: str | os.PathLike,
        name: str,
        palette: list[int] | None = None,
        per_object: bool = False,
        scored: Collection[int] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        name = plain_name(name, "output name")
        self.folder = Path(out_root) / name
        self.partial = Path(out_root) / (name + PARTIAL_SUFFIX)
        self.palette = palette
        self.per_object = per_object
        self.scored = None if scored is None else set(scored)
        for existing in (self.folder, self.partial):
            check_replaceable(existing)
        try:
            if self.partial.exists():  # what an interrupted run of this writer left
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
            (self.partial / MARKER).write_text(json.dumps(dict(settings or {}), sort_keys=True) + "\n")
        except OSError as error:
            raise MediaError(f"cannot create output folder {str(self.partial)!r}: {error}") from None
        self.count = 0

    def add(self, prediction: FramePrediction, frame: Any = None, stem: str | None = None) -> None:
        if self.scored is not None and prediction.index not in self.scored:
            return
        stem = stem if stem is not None else f"{prediction.index:05d}"
        write_mask(self.partial / f"{stem}.png", prediction.labels, self.palette)
        if self.per_object:
            for object_id in prediction.ids:
                if object_id in (0, IGNORE_LABEL):
                    continue
                folder = self.partial / "objects" / f"{object_id:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                binary = np.where(prediction.labels == object_id, 255, 0).astype(np.uint8)
                try:
                    from PIL import Image  # noqa: PLC0415

                    Image.fromarray(binary, mode="L").save(folder / f"{stem}.png")
                except OSError as error:
                    raise MediaError(f"cannot write mask {str(folder / stem)!r}.png: {error}") from error
        self.count += 1

    def finish(self) -> None:
        """Rename the finished folder into place, replacing an older one only when this writer made it."""
        if self.folder.exists() or self.folder.is_symlink():
            if not written_by_cfbi(self.folder):
                raise MediaError(
                    f"{str(self.folder)!r} appeared during the run and was not written by cfbi: the masks stay in "
                    f"{str(self.partial)!r}"
                )
            shutil.rmtree(self.folder)
        os.replace(self.partial, self.folder)

    def close(self) -> None:
        """An unfinished run leaves its .partial folder (the next run of the same name replaces it)."""


class MaskCollector:
    """Keeps every frame's object ids in memory; masks: [T, H, W] uint8 once finished."""

    def __init__(self) -> None:
        self._masks: list[np.ndarray] = []
        self.masks: np.ndarray | None = None

    def add(self, prediction: FramePrediction, frame: Any = None, stem: str | None = None) -> None:
        self._masks.append(prediction.labels)

    def finish(self) -> None:
        self.masks = np.stack(self._masks)

    def close(self) -> None:
        self._masks = []


class OverlaySink:
    """An overlay of the predictions (colours of `palette`) on the frames, as .mp4 or .gif."""

    def __init__(self, path: str | os.PathLike, fps: float = 24.0, palette: list[int] | None = None) -> None:
        self.writer = OverlayWriter(os.fspath(path), fps)
        self.palette = palette

    def add(self, prediction: FramePrediction, frame: Any, stem: str | None = None) -> None:
        rgb = frame.cpu().numpy() if isinstance(frame, Tensor) else np.asarray(frame)
        self.writer.add(draw_overlay(rgb, prediction.labels, self.palette))

    def finish(self) -> None:
        self.writer.close()

    def close(self) -> None:
        self.writer.close()
