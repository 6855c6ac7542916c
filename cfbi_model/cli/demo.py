"""`cfbi demo`: segment a freshly generated synthetic clip with the shipped small checkpoint (offline).

Writes the frames (JPEG), the ground truth and the predicted masks (palette PNGs) and an overlay GIF, and
prints the DAVIS J&F of the prediction (and of copying the first mask) against the clip's ground truth.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ._options import HelpFormatter, add_inference_arguments, add_runtime_arguments, apply_runtime, inference_config

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="segment a synthetic clip with the shipped small model",
        description="Generate a synthetic video (textured objects that move, deform, occlude and leave the frame, "
        "plus look-alike distractors), segment it from its first-frame mask with the small CFBI+ "
        "checkpoint trained on synthetic videos, write masks and an overlay GIF, print J&F.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", default="cfbi_demo", metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic clip")
    parser.add_argument("--frames", type=int, default=24, help="frames in the clip")
    parser.add_argument("--checkpoint", default=None, metavar="PATH", help="weights (None: the shipped ones)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_arguments(parser)
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from ..build import load_model, shipped_weights
    from ..data.synthetic import SyntheticConfig, render_video
    from ..evaluation import metrics
    from ..inference.driver import run_video
    from ..inference.segmenter import VideoSegmenter
    from ..inference.sinks import MaskCollector
    from ..io.masks import default_palette, write_mask
    from ..io.overlay import overlay
    from ..io.source import open_video

    if args.frames < 3:
        raise UsageError("--frames must be at least 3")
    device = apply_runtime(args)
    inference = inference_config(args)
    model = load_model(args.checkpoint or shipped_weights(), device=device)
    frames, gt = render_video(args.seed, SyntheticConfig(num_frames=(args.frames, args.frames)))
    collector = MaskCollector()
    with tqdm(total=len(frames), unit="frame", desc="demo", disable=args.quiet, file=sys.stderr) as progress:
        run_video(
            VideoSegmenter(model, inference),
            open_video(frames),
            collector,
            annotations={0: gt[0]},
            on_frame=lambda _: progress.update(1),
        )
    pred = collector.masks
    palette = default_palette()
    folders = {name: os.path.join(args.out, name) for name in ("frames", "ground_truth", "masks")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    overlays = []
    for t in range(len(frames)):
        Image.fromarray(frames[t]).save(os.path.join(folders["frames"], f"{t:05d}.jpg"), quality=95)
        write_mask(os.path.join(folders["ground_truth"], f"{t:05d}.png"), gt[t], palette)
        write_mask(os.path.join(folders["masks"], f"{t:05d}.png"), pred[t], palette)
        overlays.append(
            Image.fromarray(
                np.concatenate([overlay(frames[t], gt[t], palette), overlay(frames[t], pred[t], palette)], axis=1)
            )
        )
    gif = os.path.join(args.out, "overlay.gif")
    overlays[0].save(gif, save_all=True, append_images=overlays[1:], duration=120, loop=0)
    ids = metrics.davis_object_ids(gt[0])
    result = metrics.evaluate_sequence(gt, pred, ids, name="demo")
    baseline = metrics.evaluate_sequence(gt, np.repeat(gt[:1], len(gt), 0), ids, name="copy")
    jf, jf_base = result.measures()["J&F-Mean"], baseline.measures()["J&F-Mean"]
    print(f"synthetic clip (seed {args.seed}): {len(frames)} frames, {len(ids)} object(s)")
    print(
        f"J&F {jf:.3f}  (J {result.measures()['J-Mean']:.3f}, F {result.measures()['F-Mean']:.3f}); "
        f"copying the first mask: J&F {jf_base:.3f}"
    )
    print(f"wrote {folders['masks']}/*.png and {gif} (left: ground truth, right: prediction)")
    return 0
