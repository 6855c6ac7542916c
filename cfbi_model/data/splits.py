"""Benchmark splits to predict: DAVIS-2017 (first-frame annotations) and YouTube-VOS 2018 / 2019 valid and test
(meta.json, first-appearance annotations, optionally every frame from <split>_all_frames); MOSE uses the
YouTube-VOS layout.

    DAVIS:        ROOT/ImageSets/2017/<split>.txt, ROOT/JPEGImages/480p/<video>/*.jpg,
                  ROOT/Annotations/480p/<video>/<first frame>.png
    YouTube-VOS:  ROOT/<split>/meta.json, ROOT/<split>/JPEGImages/<video>/*.jpg (the scored frames, every fifth),
                  ROOT/<split>/Annotations/<video>/<frame>.png (the frames where objects first appear),
                  ROOT/<split>_all_frames/JPEGImages/<video>/*.jpg (every frame, optional)

A PredictVideo lists the frames to run through, the annotations by frame index, and which frames' masks the
benchmark scores (the ones to write).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..io.frames import IMAGE_EXTENSIONS
from .datasets import DataError

__all__ = ["PredictVideo", "davis_split", "youtube_split", "LAYOUTS"]


@dataclass(frozen=True)
class PredictVideo:
    """One video to predict.

    frames: frame image paths in time order (the ones propagated through).
    annotations: {frame index: mask path}.
    outputs: indices of the frames whose masks are written (the scored frames), increasing.
    new_objects: {annotation frame index: the object ids that first appear there} when the split says so
        (YouTube-VOS meta.json); None: every object of an annotation is used.
    """

    name: str
    frames: tuple[str, ...]
    annotations: dict[int, str]
    outputs: tuple[int, ...]
    new_objects: dict[int, tuple[int, ...]] | None = None

    def stem(self, index: int) -> str:
        return os.path.splitext(os.path.basename(self.frames[index]))[0]

    def __len__(self) -> int:
        return len(self.frames)


def _images(folder: str, what: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"missing frame folder of {what}: {folder}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"frame folder {folder} of {what} holds no images")
    return [os.path.join(folder, n) for n in names]


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def davis_split(root: str | os.PathLike, split: str = "val", resolution: str = "480p") -> list[PredictVideo]:
    """The videos of a DAVIS-2017 split (ImageSets/2017/<split>.txt): every frame is propagated and written,
    from the first frame's annotation (the only one the semi-supervised task gives)."""
    root = os.fspath(root)
    listing = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
    if not os.path.isfile(listing):
        raise DataError(f"missing DAVIS split file: {listing}")
    with open(listing) as handle:
        names = [line.strip() for line in handle if line.strip()]
    if not names:
        raise DataError(f"DAVIS split file {listing} lists no sequences")
    videos = []
    for name in names:
        frames = _images(os.path.join(root, "JPEGImages", resolution, name), f"video {name!r}")
        mask = os.path.join(root, "Annotations", resolution, name, _stem(frames[0]) + ".png")
        if not os.path.isfile(mask):
            raise DataError(f"missing first-frame annotation of video {name!r}: {mask}")
        videos.append(PredictVideo(name, tuple(frames), {0: mask}, tuple(range(len(frames)))))
    return videos


def youtube_split(root: str | os.PathLike, split: str = "valid", all_frames: bool = False) -> list[PredictVideo]:
    """The videos of a YouTube-VOS (or MOSE) split listed in ROOT/<split>/meta.json. Objects start at their
    first annotated frame (meta.json's first frame of each object when it lists them); the scored frames are
    those of ROOT/<split>/JPEGImages. With all_frames, every frame of ROOT/<split>_all_frames is propagated
    (the annotations and the scored frames must be among them)."""
    root = os.fspath(root)
    base = os.path.join(root, split)
    meta_path = os.path.join(base, "meta.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"missing YouTube-VOS meta file: {meta_path}")
    try:
        with open(meta_path) as handle:
            meta = json.load(handle)["videos"]
        names = sorted(meta)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"corrupt YouTube-VOS meta file {meta_path}: {error!r}") from None
    if not names:
        raise DataError(f"YouTube-VOS meta file {meta_path} lists no videos")
    all_root = os.path.join(root, f"{split}_all_frames", "JPEGImages")
    if all_frames and not os.path.isdir(all_root):
        raise DataError(f"missing folder of all frames: {all_root}")
    videos = []
    for name in names:
        scored = _images(os.path.join(base, "JPEGImages", name), f"video {name!r}")
        frames = _images(os.path.join(all_root, name), f"video {name!r}") if all_frames else scored
        index = {_stem(p): i for i, p in enumerate(frames)}
        missing = [p for p in scored if _stem(p) not in index]
        if missing:
            raise DataError(f"scored frame {missing[0]} of video {name!r} is not among the frames of {all_root}")
        mask_dir = os.path.join(base, "Annotations", name)
        if not os.path.isdir(mask_dir):
            raise DataError(f"missing annotation folder of video {name!r}: {mask_dir}")
        annotations = {}
        for file in sorted(os.listdir(mask_dir)):
            if not file.lower().endswith(".png"):
                continue
            stem = os.path.splitext(file)[0]
            if stem not in index:
                raise DataError(f"annotation {os.path.join(mask_dir, file)} matches no frame of video {name!r}")
            annotations[index[stem]] = os.path.join(mask_dir, file)
        if not annotations:
            raise DataError(f"video {name!r} has no annotation in {mask_dir}")
        new_objects = _first_appearances(meta[name], index, name, meta_path)
        videos.append(
            PredictVideo(name, tuple(frames), annotations, tuple(sorted(index[_stem(p)] for p in scored)), new_objects)
        )
    return videos


def _first_appearances(
    entry: object, index: dict[str, int], name: str, meta_path: str
) -> dict[int, tuple[int, ...]] | None:
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


LAYOUTS = {"davis": davis_split, "youtube": youtube_split}
