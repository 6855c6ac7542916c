"""Video files: reading frames (imageio with the imageio-ffmpeg plugin, optional:
`pip install imageio imageio-ffmpeg`) and writing overlay videos (.mp4) or animations (.gif, Pillow)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from .frames import MediaError

__all__ = ["iter_video", "video_fps", "OverlayWriter"]


def _imageio():
    try:
        import imageio.v3 as iio  # noqa: PLC0415
    except ImportError as error:
        raise MediaError(
            "reading or writing video files needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg)"
        ) from error
    return iio


def iter_video(path: str) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file."""
    if not os.path.isfile(path):
        raise MediaError(f"video {path!r} does not exist")
    iio = _imageio()
    try:
        for frame in iio.imiter(path):
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[:, :, None], 3, axis=2)
            yield np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8)
    except MediaError:
        raise
    except Exception as error:  # plugin errors come in many types
        raise MediaError(f"cannot read video {path!r}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    """A decoder error in one line: ffmpeg's messages carry its whole version banner; keep the first line and
    ffmpeg's last (the reason, e.g. "Invalid data found when processing input")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ({lines[-1]})"


def video_fps(path: str, default: float = 24.0) -> float:
    try:
        meta = _imageio().immeta(path)
        fps = float(meta.get("fps", default))
        return fps if fps > 0 else default
    except Exception:  # noqa: BLE001 - metadata is optional
        return default


class OverlayWriter:
    """Writes overlay frames to an .mp4 (imageio-ffmpeg) or .gif (Pillow) file."""

    def __init__(self, path: str, fps: float = 24.0) -> None:
        self.path = path
        self.fps = fps
        extension = os.path.splitext(path)[1].lower()
        if extension not in (".mp4", ".gif"):
            raise MediaError(f"overlay {path!r} must end with .mp4 or .gif")
        self.kind = extension[1:]
        self._frames: list[Image.Image] = []
        self._writer = None
        if self.kind == "mp4":
            _imageio()
            import imageio  # noqa: PLC0415

            try:
                self._writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=7)
            except Exception as error:  # noqa: BLE001
                raise MediaError(f"cannot write video {path!r}: {error}") from error

    def add(self, frame: np.ndarray) -> None:
        if self._writer is not None:
            # libx264 with yuv420p needs even sides.
            h, w = frame.shape[:2]
            self._writer.append_data(np.ascontiguousarray(frame[: h - h % 2, : w - w % 2]))
        else:
            self._frames.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE))

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            elif self._frames:
                self._frames[0].save(
                    self.path,
                    save_all=True,
                    append_images=self._frames[1:],
                    duration=max(int(round(1000 / self.fps)), 20),
                    loop=0,
                )
        except Exception as error:  # noqa: BLE001
            raise MediaError(f"cannot write overlay {self.path!r}: {error}") from error
