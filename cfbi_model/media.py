"""Reading frames (image folders, video files) and masks, writing palette masks and overlays.

Images and masks go through Pillow; video files through imageio (with the imageio-ffmpeg plugin), which is
optional: `pip install imageio imageio-ffmpeg`.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
from PIL import Image

__all__ = ["MediaError", "IMAGE_EXTENSIONS", "list_frames", "read_image", "read_mask", "write_mask",
           "iter_video", "default_palette", "colorize", "overlay", "OverlayWriter"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class MediaError(RuntimeError):
    """An input that cannot be read or an output that cannot be written (the message names the file)."""


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


def list_frames(folder: str) -> list[str]:
    """Image files of a folder, sorted by name."""
    if not os.path.isdir(folder):
        raise MediaError(f"frame folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise MediaError(f"frame folder {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return [os.path.join(folder, n) for n in names]


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3]."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as error:
        raise MediaError(f"cannot read image {path!r}: {error}") from error


def read_mask(path: str) -> tuple[np.ndarray, list[int] | None]:
    """Label map [H, W] uint8 and its palette (None when the file has none). Palette ('P') and greyscale
    ('L') PNGs hold the label values directly; other modes are refused."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                palette = image.getpalette()
                return np.asarray(image, dtype=np.uint8).copy(), palette
            if image.mode in ("L", "I", "I;16"):
                labels = np.asarray(image)
                if labels.max(initial=0) > 255:
                    raise MediaError(f"mask {path!r} has label values above 255")
                return labels.astype(np.uint8), None
            raise MediaError(f"mask {path!r} must be a palette or greyscale image of label ids, got mode "
                             f"{image.mode!r}")
    except (OSError, ValueError) as error:
        raise MediaError(f"cannot read mask {path!r}: {error}") from error


def write_mask(path: str, labels: np.ndarray, palette: list[int] | None) -> None:
    """Write labels [H, W] as a palette PNG."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    image = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    image.putpalette(palette if palette else default_palette())
    try:
        image.save(path)
    except OSError as error:
        raise MediaError(f"cannot write mask {path!r}: {error}") from error


def _imageio():
    try:
        import imageio.v3 as iio  # noqa: PLC0415
    except ImportError as error:
        raise MediaError("reading or writing video files needs imageio and imageio-ffmpeg "
                         "(pip install imageio imageio-ffmpeg)") from error
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
        raise MediaError(f"cannot read video {path!r}: {error}") from error


def video_fps(path: str, default: float = 24.0) -> float:
    try:
        meta = _imageio().immeta(path)
        fps = float(meta.get("fps", default))
        return fps if fps > 0 else default
    except Exception:  # noqa: BLE001 - metadata is optional
        return default


def colorize(labels: np.ndarray, palette: list[int] | None) -> np.ndarray:
    table = np.asarray((palette or default_palette()) + [0] * 768, dtype=np.uint8)[:768].reshape(256, 3)
    return table[np.asarray(labels, dtype=np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette: list[int] | None, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured labels over the frame (background left untouched)."""
    colours = colorize(labels, palette).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colours * alpha
    out = np.where((np.asarray(labels) > 0)[:, :, None], blend, image.astype(np.float32))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
                self._writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1,
                                                  quality=7)
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
                self._frames[0].save(self.path, save_all=True, append_images=self._frames[1:],
                                     duration=max(int(round(1000 / self.fps)), 20), loop=0)
        except Exception as error:  # noqa: BLE001
            raise MediaError(f"cannot write overlay {self.path!r}: {error}") from error
