"""The paper's training recipes (docs/design.md, "Training"): `cfbi train --recipe NAME` starts from one, and
the flags given on the command line override it.

    config, account = recipe_train_config("ytvos", world_size=4)   # batch 2 per process, lr 0.01
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..config import ClipConfig, TrainConfig

__all__ = ["Recipe", "RECIPES", "recipe_fields", "recipe_train_config"]


@dataclass(frozen=True)
class Recipe:
    """A training preset of the paper (docs/design.md, "Training"): the settings below, every other one the
    TrainConfig / ClipConfig default (465 crop, scale 1.0-1.3, SGD momentum 0.9, hardest 15 %, frozen BN).

    Attributes:
        name, description: what `cfbi train --recipe` shows.
        global_batch: clips per optimizer step over all processes in the paper; another global batch scales
            the learning rate linearly (scaled_lr).
        gpus: the paper's number of GPUs (the batch per process is global_batch / gpus there).
        settings: TrainConfig fields (lr, steps, youtube_ratio, ...); clip: ClipConfig fields.
        needs: the data sources the recipe trains on ("davis", "youtube").
    """

    name: str
    description: str
    global_batch: int
    gpus: int
    settings: tuple[tuple[str, Any], ...]
    clip: tuple[tuple[str, Any], ...] = ()
    needs: tuple[str, ...] = ()

    def scaled_lr(self, global_batch: int) -> float:
        """The linear scaling rule: the recipe's lr times global_batch / the recipe's global batch."""
        lr = dict(self.settings)["lr"]
        return lr if global_batch == self.global_batch else lr * global_batch / self.global_batch


RECIPES = {
    "ytvos": Recipe(
        "ytvos",
        "YouTube-VOS: lr 0.01, 100k steps, batch 8 on 4 GPUs, N = 3",
        8,
        4,
        (("model", "resnet101"), ("lr", 0.01), ("steps", 100_000), ("youtube_ratio", 1.0)),
        (("num_current", 3),),
        ("youtube",),
    ),
    "davis": Recipe(
        "davis",
        "DAVIS-2017 only: lr 0.006, 50k steps, batch 6 on 2 GPUs, N = 3",
        6,
        2,
        (("model", "resnet101"), ("lr", 0.006), ("steps", 50_000), ("youtube_ratio", 0.0)),
        (("num_current", 3),),
        ("davis",),
    ),
    "davis-finetune": Recipe(
        "davis-finetune",
        "fine-tune a YouTube-VOS model (--init) on DAVIS mixed 1:2 with "
        "YouTube-VOS: lr 0.01, 50k steps, batch 8 on 4 GPUs, N = 5",
        8,
        4,
        (("model", "resnet101"), ("lr", 0.01), ("steps", 50_000), ("youtube_ratio", 2 / 3)),
        (("num_current", 5),),
        ("davis", "youtube"),
    ),
    "ytvos-2x": Recipe(
        "ytvos-2x",
        "YouTube-VOS with double batch and lr (the paper's 2x): lr 0.02, 100k steps, "
        "batch 16, N = 3 (the paper does not give the GPUs; 4 here)",
        16,
        4,
        (("model", "resnet101"), ("lr", 0.02), ("steps", 100_000), ("youtube_ratio", 1.0)),
        (("num_current", 3),),
        ("youtube",),
    ),
}


def recipe_fields() -> frozenset[str]:
    """The TrainConfig and ClipConfig fields some recipe sets (batch_size from its global batch): flags of these
    fields override the recipe."""
    names = {"batch_size"}
    for recipe in RECIPES.values():
        names.update(key for key, _ in recipe.settings + recipe.clip)
    return frozenset(names)


def recipe_train_config(recipe: str | None, world_size: int = 1, **given: Any) -> tuple[TrainConfig, str]:
    """The TrainConfig of a recipe (or of the defaults when None) with the `given` fields overriding it
    (clip: a dict of ClipConfig fields), and a one-line account of the global batch and learning rate.

    Unless given, batch_size is the recipe's global batch / (world_size x accumulate) (at least 1), and lr
    follows the linear scaling rule when the resulting global batch differs from the recipe's."""
    clip_given = dict(given.pop("clip", None) or {})
    accumulate = int(given.get("accumulate", 1))
    if recipe is None:
        config = TrainConfig(**given, clip=replace(ClipConfig(), **clip_given))
        total = world_size * config.batch_size * config.accumulate
        return config, (
            f"global batch {total} = {world_size} process(es) x {config.batch_size} clip(s) x "
            f"{config.accumulate} accumulation; lr {config.lr:g}"
        )
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    preset = RECIPES[recipe]
    values = dict(preset.settings)
    values.update(given)
    if "batch_size" not in given:
        values["batch_size"] = max(1, preset.global_batch // (world_size * accumulate))
    total = world_size * int(values["batch_size"]) * accumulate
    lr_note = f"lr {values['lr']:g} (given)"
    if "lr" not in given:
        values["lr"] = preset.scaled_lr(total)
        lr_note = (
            f"lr {values['lr']:g}"
            if total == preset.global_batch
            else f"lr {values['lr']:g} = {dict(preset.settings)['lr']:g} x {total}/{preset.global_batch} "
            "(linear scaling)"
        )
    clip = replace(ClipConfig(), **{**dict(preset.clip), **clip_given})
    config = TrainConfig(**values, clip=clip, recipe=recipe)
    message = (
        f"recipe {recipe}: global batch {total} = {world_size} process(es) x {config.batch_size} clip(s) x "
        f"{accumulate} accumulation (the paper's {preset.global_batch}); {lr_note}"
    )
    return config, message
