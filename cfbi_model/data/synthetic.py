"""Synthetic videos for training and testing VOS models without downloading a data set.

Every video has a smooth textured background, 1..max_objects textured objects (ellipses or polygons) that move,
rotate, deform (oscillating axes), occlude each other (a fixed depth order), and may leave the frame and come
back (objects bounce off walls placed beyond the frame border); look-alike distractors (same colours and
texture as an object, never labelled) move in the background. The output is in the DAVIS-2017 layout:

    root/JPEGImages/480p/<seq>/00000.jpg   root/Annotations/480p/<seq>/00000.png   root/ImageSets/2017/{train,val}.txt

Generation is deterministic from the seed (numpy's Generator, Pillow's JPEG encoder).

    write_synthetic_davis("data/synth", num_train=40, num_val=8, seed=0)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..io.masks import write_mask

__all__ = ["SyntheticConfig", "render_video", "write_synthetic_davis"]


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and content of the synthetic videos.

    Attributes:
        height, width: frame size.
        num_frames: frames per video (a random length in [num_frames[0], num_frames[1]]).
        max_objects: labelled objects per video (at least 1).
        max_distractors: unlabelled look-alikes per video.
        exit_probability: chance that an object's walls lie outside the frame far enough for it to leave and
            re-enter.
    """

    height: int = 120
    width: int = 160
    num_frames: tuple[int, int] = (16, 24)
    max_objects: int = 3
    max_distractors: int = 2
    exit_probability: float = 0.35


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Noise in [0, 1] of about `cells` cells along the long side, bilinearly upsampled."""
    gh = max(2, int(round(cells * height / max(height, width))) + 1)
    gw = max(2, int(round(cells * width / max(height, width))) + 1)
    grid = (rng.random((gh, gw)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(40, 216, size=3).astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    coarse = _smooth_noise(rng, height, width, 4)
    fine = _smooth_noise(rng, height, width, 24)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq, angle = rng.uniform(0.05, 0.25), rng.uniform(0, np.pi)
    stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    for c in range(3):
        tint = rng.uniform(-60, 60)
        image[..., c] = base[c] + tint * (coarse - 0.5) * 2 + 25 * (fine - 0.5) + 12 * stripes
    return image


@dataclass
class _Sprite:
    colour_a: np.ndarray
    colour_b: np.ndarray
    texture_freq: float
    texture_angle: float
    kind: str  # "ellipse" or "polygon"
    radii: np.ndarray  # ellipse: (ry, rx); polygon: per-vertex radius
    position: np.ndarray  # (y, x)
    velocity: np.ndarray
    angle: float
    spin: float
    wobble_freq: float
    wobble_amp: float
    walls: tuple[float, float, float, float]  # y_min, y_max, x_min, x_max of the centre


def _make_sprite(
    rng: np.random.Generator, cfg: SyntheticConfig, size_scale: float, may_exit: bool, like: _Sprite | None = None
) -> _Sprite:
    h, w = cfg.height, cfg.width
    short = min(h, w)
    if like is None:
        colour_a = rng.integers(0, 256, size=3).astype(np.float32)
        colour_b = rng.integers(0, 256, size=3).astype(np.float32)
        freq, tangle = rng.uniform(0.2, 0.8), rng.uniform(0, np.pi)
        kind = "ellipse" if rng.random() < 0.5 else "polygon"
    else:  # a look-alike distractor: same appearance, its own motion
        colour_a, colour_b = like.colour_a + rng.normal(0, 8, 3), like.colour_b + rng.normal(0, 8, 3)
        freq, tangle, kind = like.texture_freq, like.texture_angle + rng.normal(0, 0.2), like.kind
    base = short * size_scale * rng.uniform(0.12, 0.22)
    if kind == "ellipse":
        radii = np.array([base * rng.uniform(0.6, 1.0), base * rng.uniform(0.8, 1.4)])
    else:
        radii = base * rng.uniform(0.6, 1.3, size=int(rng.integers(5, 9)))
    margin = -1.6 * base if may_exit else 0.5 * base  # negative margin: the centre can go beyond the border
    walls = (margin, h - margin, margin, w - margin)
    position = np.array(
        [rng.uniform(max(0.0, margin), h - max(0.0, margin)), rng.uniform(max(0.0, margin), w - max(0.0, margin))]
    )
    speed = short * rng.uniform(0.015, 0.05)
    direction = rng.uniform(0, 2 * np.pi)
    return _Sprite(
        colour_a,
        colour_b,
        freq,
        tangle,
        kind,
        radii,
        position,
        speed * np.array([np.sin(direction), np.cos(direction)]),
        rng.uniform(0, 2 * np.pi),
        rng.uniform(-0.12, 0.12),
        rng.uniform(0.15, 0.45),
        rng.uniform(0.05, 0.25),
        walls,
    )


def _sprite_mask(sprite: _Sprite, t: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    dy, dx = yy - sprite.position[0], xx - sprite.position[1]
    angle = sprite.angle + sprite.spin * t
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    wobble = 1.0 + sprite.wobble_amp * np.sin(sprite.wobble_freq * t)
    if sprite.kind == "ellipse":
        ry, rx = sprite.radii[0] / wobble, sprite.radii[1] * wobble
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    theta = np.arctan2(v, u)
    n = len(sprite.radii)
    pos = (theta + np.pi) / (2 * np.pi) * n
    i0 = np.floor(pos).astype(int) % n
    frac = pos - np.floor(pos)
    radius = sprite.radii[i0] * (1 - frac) + sprite.radii[(i0 + 1) % n] * frac
    radius = radius * (1.0 + sprite.wobble_amp * np.sin(sprite.wobble_freq * t + 2 * theta))
    return np.hypot(u, v) <= radius


def _sprite_texture(sprite: _Sprite, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    dy, dx = yy - sprite.position[0], xx - sprite.position[1]
    angle = sprite.texture_angle
    s = 0.5 + 0.5 * np.sin(sprite.texture_freq * (dx * np.cos(angle) + dy * np.sin(angle)))
    return sprite.colour_a[None, None] * s[..., None] + sprite.colour_b[None, None] * (1 - s[..., None])


def _advance(sprite: _Sprite) -> None:
    sprite.position = sprite.position + sprite.velocity
    y_min, y_max, x_min, x_max = sprite.walls
    for axis, (lo, hi) in enumerate(((y_min, y_max), (x_min, x_max))):
        if sprite.position[axis] < lo or sprite.position[axis] > hi:
            sprite.velocity[axis] = -sprite.velocity[axis]
            sprite.position[axis] = float(np.clip(sprite.position[axis], lo, hi))


def render_video(seed: int, config: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, H, W, 3] uint8 RGB, labels [T, H, W] uint8) of one synthetic video. The first frame holds
    every object (each at least 1 % of the frame), so it can serve as the annotated first frame."""
    cfg = config
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        frames, labels = _render(rng, cfg)
        ids = np.unique(labels[0])
        num_objects = int(labels.max())
        areas = [(labels[0] == k).sum() for k in range(1, num_objects + 1)]
        if len(ids) == num_objects + 1 and min(areas) >= 0.01 * cfg.height * cfg.width:
            return frames, labels
    return frames, labels  # pragma: no cover - practically unreachable


def _render(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    h, w = cfg.height, cfg.width
    length = int(rng.integers(cfg.num_frames[0], cfg.num_frames[1] + 1))
    background = _background(rng, h, w)
    bg_velocity = rng.normal(0, 0.4, size=2)  # slow camera pan
    num_objects = int(rng.integers(1, cfg.max_objects + 1))
    objects = [_make_sprite(rng, cfg, 1.0, rng.random() < cfg.exit_probability) for _ in range(num_objects)]
    distractors = [
        _make_sprite(rng, cfg, 0.8, False, like=objects[int(rng.integers(num_objects))])
        for _ in range(int(rng.integers(0, cfg.max_distractors + 1)))
    ]
    # Depth: distractors behind all objects; objects in a random order (later = in front).
    order = rng.permutation(num_objects)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((length, h, w, 3), np.uint8)
    labels = np.zeros((length, h, w), np.uint8)
    for t in range(length):
        shift = np.round(bg_velocity * t).astype(int)
        image = np.roll(background, shift=(int(shift[0]), int(shift[1])), axis=(0, 1)).copy()
        label = np.zeros((h, w), np.uint8)
        for sprite in distractors:
            mask = _sprite_mask(sprite, t, yy, xx)
            image[mask] = _sprite_texture(sprite, yy, xx)[mask]
        for index in order:
            sprite = objects[index]
            mask = _sprite_mask(sprite, t, yy, xx)
            image[mask] = _sprite_texture(sprite, yy, xx)[mask]
            label[mask] = index + 1
        noise = rng.normal(0, 4, size=image.shape)
        frames[t] = np.clip(image + noise, 0, 255).astype(np.uint8)
        labels[t] = label
        for sprite in objects + distractors:
            _advance(sprite)
    return frames, labels


def write_synthetic_davis(
    root: str | os.PathLike,
    num_train: int = 40,
    num_val: int = 8,
    seed: int = 0,
    config: SyntheticConfig = SyntheticConfig(),
    prefix: str = "synth",
) -> dict[str, list[str]]:
    """Write num_train + num_val videos in the DAVIS-2017 layout under root; returns {"train": [...],
    "val": [...]} sequence names. Video i uses seed (seed, i), so the same arguments give the same files."""
    root = os.fspath(root)
    names = {
        "train": [f"{prefix}_train_{i:04d}" for i in range(num_train)],
        "val": [f"{prefix}_val_{i:04d}" for i in range(num_val)],
    }
    os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
    for split_index, split in enumerate(("train", "val")):
        for i, name in enumerate(names[split]):
            frames, labels = render_video(
                int(np.random.SeedSequence([seed, split_index, i]).generate_state(1)[0]), config
            )
            image_dir = os.path.join(root, "JPEGImages", "480p", name)
            mask_dir = os.path.join(root, "Annotations", "480p", name)
            os.makedirs(image_dir, exist_ok=True)
            os.makedirs(mask_dir, exist_ok=True)
            for t in range(len(frames)):
                Image.fromarray(frames[t]).save(os.path.join(image_dir, f"{t:05d}.jpg"), quality=95)
                write_mask(os.path.join(mask_dir, f"{t:05d}.png"), labels[t], None)
        with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "w") as handle:
            handle.write("".join(f"{n}\n" for n in names[split]))
    return names
