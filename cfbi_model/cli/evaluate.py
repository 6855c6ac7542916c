"""`cfbi evaluate`: DAVIS-2017 semi-supervised J&F of predicted masks against ground-truth masks (the rules:
cfbi_model.evaluation.folders); with --checkpoint/--data/--split it first predicts a DAVIS split with the
checkpoint's model (cfbi_model.evaluation.predict, the same writer as `cfbi predict`) and then evaluates that
output; with --data/--split and --pred (no checkpoint) it scores existing predictions on the sequences of that
split (a split file that does not exist is an error)."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..evaluation import metrics
from ..evaluation.folders import evaluate_folders, format_report, write_csv, write_json
from ..io.frames import MediaError
from ._options import (
    HelpFormatter,
    add_config_argument,
    add_inference_arguments,
    add_runtime_arguments,
    inference_config,
    positive_int,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="DAVIS-2017 J&F of predicted masks against ground truth",
        description="Compute the DAVIS-2017 semi-supervised measures (J: region IoU, F: boundary F-measure; "
        "mean, recall and decay) of predicted palette PNGs against ground-truth palette PNGs, both in "
        "the DAVIS layout (one folder per sequence, frames 00000.png, ...). The first and last frames "
        "are not scored; the objects are ids 1..max of the first ground-truth frame.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--gt", type=Path, metavar="DIR", help="ground-truth folder (e.g. DAVIS/Annotations/480p)")
    parser.add_argument(
        "--pred", type=Path, metavar="DIR", help="folder of predicted masks, same layout and file names"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write global, per-sequence, per-object and per-frame results"
    )
    parser.add_argument("--csv", type=Path, metavar="FILE", help="write per-object, per-sequence and global measures")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="sequences evaluated in parallel processes (None: number of CPUs)",
    )
    parser.add_argument(
        "--bound-th",
        type=float,
        default=metrics.DEFAULT_BOUND_TH,
        help="boundary tolerance of F as a fraction of the image diagonal",
    )
    model = parser.add_argument_group(
        "a DAVIS split: score --pred on its sequences, or segment it first with a trained model"
    )
    model.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="trained model to run over the split before evaluating"
    )
    model.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="DAVIS root (JPEGImages/, Annotations/, ImageSets/); --gt defaults to its Annotations/480p",
    )
    model.add_argument("--split", default="val", help="DAVIS-2017 split (ImageSets/2017/<split>.txt) to score")
    add_config_argument(model, "(only for checkpoints without one; default: theirs, or resnet101)")
    add_runtime_arguments(model)
    add_inference_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point of `cfbi evaluate`. Exit codes (cfbi_model.cli.main): 2 for a command-line mistake, 1 for
    bad input data."""
    if args.checkpoint is None and args.pred is None:
        raise UsageError("--pred is required (or --checkpoint with --data)")
    if args.checkpoint is None and args.gt is None and args.data is None:
        raise UsageError("--gt (or --data, the DAVIS root) is required")
    if args.checkpoint is not None and args.data is None:
        raise UsageError("--checkpoint needs --data (the DAVIS root)")
    if not (math.isfinite(args.bound_th) and args.bound_th > 0):
        raise UsageError(f"--bound-th must be a positive number, got {args.bound_th}")
    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None and path.is_dir():
            raise UsageError(f"{option} {str(path)!r} is a folder; give a file name")
    inference = inference_config(args)
    with tempfile.TemporaryDirectory(prefix="cfbi-eval-") as scratch:
        sequences = None
        gt_root, pred_root = args.gt, _prediction_root(args.pred)
        if args.data is not None:
            from ..data.layouts import read_split_file  # noqa: PLC0415 - the data package imports torch

            gt_root = gt_root or args.data / "Annotations" / "480p"
            sequences = read_split_file(args.data, args.split)
        if args.checkpoint is not None:
            pred_root = pred_root or Path(scratch)
            _segment_split(args, pred_root, inference)
        result = evaluate_folders(gt_root, pred_root, workers=args.workers, bound_th=args.bound_th, sequences=sequences)
    if not result.objects:
        raise MediaError(f"no objects to evaluate: the first ground-truth frames under {gt_root} are all background")
    print(format_report(result))
    settings = {
        "gt": str(gt_root),
        "pred": str(pred_root),
        "bound_th": args.bound_th,
        "protocol": "DAVIS-2017 semi-supervised: objects 1..max id of the first ground-truth frame, "
        "first and last frames not scored, global measures averaged over objects",
    }
    try:
        if args.json is not None:
            write_json(result, args.json, settings)
        if args.csv is not None:
            write_csv(result, args.csv)
    except OSError as error:
        raise MediaError(f"cannot write the results: {error}") from None
    return 0


def _prediction_root(pred: Path | None) -> Path | None:
    """`cfbi predict --out DIR` writes DIR/Annotations/<video>/: accept DIR itself when that is all it holds."""
    if pred is None or not (pred / "Annotations").is_dir():
        return pred
    others = [p for p in pred.iterdir() if p.is_dir() and p.name != "Annotations"]
    return pred / "Annotations" if not others else pred


def _segment_split(args: argparse.Namespace, pred_root: Path, inference) -> None:
    """Predict the DAVIS split with the checkpoint's model into pred_root/<sequence>/ (imported only now, so
    that `cfbi evaluate --gt --pred` needs neither torch nor the model)."""
    from ..build import load_model  # noqa: PLC0415
    from ..data.layouts import davis  # noqa: PLC0415
    from ..evaluation.predict import predict_video  # noqa: PLC0415
    from ._options import apply_runtime  # noqa: PLC0415

    device = apply_runtime(args)
    model = load_model(args.checkpoint, config=args.config, device=device)
    pred_root.mkdir(parents=True, exist_ok=True)
    for video in davis(args.data, args.split):
        predict_video(model, video, pred_root, inference)
