"""Data set layouts, each file parsed in exactly one place, read into cfbi_model.io.Video records.

    DAVIS-2017:   ROOT/ImageSets/2017/<split>.txt, ROOT/JPEGImages/<res>/<video>/*.jpg,
                  ROOT/Annotations/<res>/<video>/<frame>.png (the task gives the first; all are ground truth)
    YouTube-VOS:  ROOT/<split>/meta.json, ROOT/<split>/JPEGImages/<video>/*.jpg (valid / test: the scored frames,
    2018 / 2019,  every fifth), ROOT/<split>/Annotations/<video>/<frame>.png (valid / test: the frames where
    and MOSE      objects first appear; train: every fifth), ROOT/<split>_all_frames/JPEGImages/<video>/*.jpg
                  (every frame, optional)

Video names from split files and meta.json are checked as plain folder names (io.names) before any path is
built from them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from ..io.frames import MediaError, list_frames
from ..io.names import plain_name, split_file_name
from ..io.source import Video

__all__ = ["DataError", "read_split_file", "read_youtube_meta", "davis", "youtube", "LAYOUTS"]


class DataError(MediaError):
    """A data set that cannot be read; the message names the file or folder."""


def read_split_file(root: str | os.PathLike, split: str) -> list[str]:
    """The video names of ROOT/ImageSets/2017/<split>.txt (DataError when it is missing, empty, or lists a name
    that is not a plain folder name)."""
    path = os.path.join(os.fspath(root), "ImageSets", "2017", f"{split}.txt")
    if not os.path.isfile(path):
        raise DataError(f"missing DAVIS split file: {path}")
    try:
        with open(path) as handle:
            names = [split_file_name(line) for line in handle]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read DAVIS split file {path}: {error}") from None
    names = [n for n in names if n]
    if not names:
        raise DataError(f"DAVIS split file {path} lists no sequences")
    for name in names:
        _checked(name, path)
    return names


def read_youtube_meta(root: str | os.PathLike, split: str) -> dict[str, Mapping]:
    """{video name: its meta.json entry} of ROOT/<split>/meta.json, sorted by name (DataError when it is missing,
    corrupt, lists no video, or names one that is not a plain folder name)."""
    path = os.path.join(os.fspath(root), split, "meta.json")
    if not os.path.isfile(path):
        raise DataError(f"missing YouTube-VOS meta file: {path}")
    try:
        with open(path) as handle:
            videos = json.load(handle)["videos"]
        if not isinstance(videos, dict):
            raise TypeError(f'"videos" is a {type(videos).__name__}, not an object of video names')
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"corrupt YouTube-VOS meta file {path}: {error!r}") from None
    if not videos:
        raise DataError(f"YouTube-VOS meta file {path} lists no videos")
    return {_checked(name, path): videos[name] for name in sorted(videos)}


def _checked(name: str, listing: str) -> str:
    try:
        return plain_name(name, "video name")
    except MediaError as error:
        raise DataError(f"{listing}: {error}") from None


def _frames(folder: str, name: str) -> tuple[str, ...]:
    try:
        return tuple(list_frames(folder))
    except MediaError as error:
        raise DataError(f"video {name!r}: {error}") from None


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _masks(folder: str, index: Mapping[str, int], name: str, strict: bool) -> dict[int, str]:
    """{frame index: mask file} of a folder of PNGs named after frames; with `strict`, a mask that matches no
    frame is a DataError."""
    out = {}
    for file in sorted(os.listdir(folder)):
        if not file.lower().endswith(".png"):
            continue
        stem = os.path.splitext(file)[0]
        if stem in index:
            out[index[stem]] = os.path.join(folder, file)
        elif strict:
            raise DataError(f"annotation {os.path.join(folder, file)} matches no frame of video {name!r}")
    return out


def davis(
    root: str | os.PathLike, split: str = "val", resolution: str = "480p", sequences: Sequence[str] | None = None
) -> list[Video]:
    """The videos of a DAVIS-2017 split (or the given sequence names): every frame is scored, the first frame's
    mask is the annotation, and every mask found is ground truth."""
    root = os.fspath(root)
    names = read_split_file(root, split) if sequences is None else [plain_name(s, "sequence") for s in sequences]
    videos = []
    for name in names:
        frames = _frames(os.path.join(root, "JPEGImages", resolution, name), name)
        stems = tuple(_stem(p) for p in frames)
        mask_dir = os.path.join(root, "Annotations", resolution, name)
        masks = _masks(mask_dir, {s: i for i, s in enumerate(stems)}, name, False) if os.path.isdir(mask_dir) else {}
        if 0 not in masks:
            raise DataError(f"missing first-frame annotation of video {name!r}: {mask_dir}/{stems[0]}.png")
        videos.append(Video(name, frames, {0: masks[0]}, masks, tuple(range(len(frames))), None, stems))
    return videos


def youtube(
    root: str | os.PathLike, split: str = "valid", all_frames: bool = False, *, strict: bool = True
) -> list[Video]:
    """The videos of a YouTube-VOS (or MOSE) split listed in ROOT/<split>/meta.json. Objects start at their first
    annotated frame (meta.json's first frame of each object when it lists them); the scored frames are those
    of ROOT/<split>/JPEGImages. With all_frames, every frame of ROOT/<split>_all_frames is propagated (the
    annotations and the scored frames must be among them). With `strict` (prediction), a mask that matches no
    frame, or a video without masks, is a DataError; training reads the frames that have masks."""
    root = os.fspath(root)
    base = os.path.join(root, split)
    meta = read_youtube_meta(root, split)
    all_root = os.path.join(root, f"{split}_all_frames", "JPEGImages")
    if all_frames and not os.path.isdir(all_root):
        raise DataError(f"missing folder of all frames: {all_root}")
    videos = []
    for name, entry in meta.items():
        scored = _frames(os.path.join(base, "JPEGImages", name), name)
        frames = _frames(os.path.join(all_root, name), name) if all_frames else scored
        index = {_stem(p): i for i, p in enumerate(frames)}
        missing = [p for p in scored if _stem(p) not in index]
        if missing:
            raise DataError(f"scored frame {missing[0]} of video {name!r} is not among the frames of {all_root}")
        mask_dir = os.path.join(base, "Annotations", name)
        if not os.path.isdir(mask_dir):
            raise DataError(f"missing annotation folder of video {name!r}: {mask_dir}")
        annotations = _masks(mask_dir, index, name, strict)
        if strict and not annotations:
            raise DataError(f"video {name!r} has no annotation in {mask_dir}")
        videos.append(
            Video(
                name,
                frames,
                annotations,
                annotations,
                tuple(sorted(index[_stem(p)] for p in scored)),
                _first_frames(entry, index, name, os.path.join(base, "meta.json")),
                tuple(index),
            )
        )
    return videos


def _first_frames(entry: object, index: dict[str, int], name: str, meta_path: str) -> dict[int, tuple[int, ...]] | None:
    """{frame index: ids of the objects whose first listed frame it is}, or None when meta.json lists no
    objects with frames for this video."""
    objects = entry.get("objects") if isinstance(entry, dict) else None
    if not isinstance(objects, dict) or not objects:
        return None
    firsts: dict[int, list[int]] = {}
    try:
        for object_id, info in objects.items():
            frames = info["frames"]
            if not frames:
                continue
            if frames[0] not in index:
                raise DataError(
                    f"{meta_path}: object {object_id} of video {name!r} starts at frame {frames[0]!r}, "
                    "which is not among its frames"
                )
            firsts.setdefault(index[frames[0]], []).append(int(object_id))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"corrupt YouTube-VOS meta file {meta_path} (video {name!r}): {error!r}") from None
    return {k: tuple(sorted(v)) for k, v in sorted(firsts.items())} or None


LAYOUTS = {"davis": davis, "youtube": youtube}
