"""`cfbi evaluate`: DAVIS-2017 semi-supervised J&F of predicted masks against ground-truth masks (the rules:
cfbi_model.evaluation.folders); with --checkpoint/--data/--split it first segments a DAVIS split with the
checkpoint's model (cfbi_model.evaluation.run.segment_split) and then evaluates that output; with --data/--split
and --pred (no checkpoint) it scores existing predictions on the sequences of that split."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..evaluation import metrics
from ..evaluation.folders import evaluate_folders, format_report, split_sequences, write_csv, write_json
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


def _error(message: str, code: int) -> int:
    print(f"cfbi evaluate: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Entry point of `cfbi evaluate`: returns 0, 1 for bad input data, 2 for a bad command line."""
    if args.checkpoint is None and args.pred is None:
        return _error("--pred is required (or --checkpoint with --data)", 2)
    if args.checkpoint is None and args.gt is None and args.data is None:
        return _error("--gt (or --data, the DAVIS root) is required", 2)
    if args.checkpoint is not None and args.data is None:
        return _error("--checkpoint needs --data (the DAVIS root)", 2)
    for option, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None and path.is_dir():
            return _error(f"{option} {str(path)!r} is a folder; give a file name", 2)
    try:
        inference = inference_config(args)
    except ValueError as error:
        return _error(str(error), 2)
    try:
        with tempfile.TemporaryDirectory(prefix="cfbi-eval-") as scratch:
            sequences = None
            gt_root, pred_root = args.gt, _prediction_root(args.pred)
            if args.data is not None:
                gt_root = gt_root or args.data / "Annotations" / "480p"
                sequences = split_sequences(args.data, args.split)
            if args.checkpoint is not None:
                pred_root = pred_root or Path(scratch)
                _segment_split(args, pred_root, sequences, inference)
            result = evaluate_folders(
                gt_root, pred_root, workers=args.workers, bound_th=args.bound_th, sequences=sequences
            )
    except MediaError as exc:  # EvaluationError, DataError and unreadable files
        return _error(str(exc), 1)
    if not result.objects:
        return _error(f"no objects to evaluate: the first ground-truth frames under {gt_root} are all background", 1)
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
        return _error(f"cannot write the results: {error}", 1)
    return 0


def _prediction_root(pred: Path | None) -> Path | None:
    """`cfbi predict --out DIR` writes DIR/Annotations/<video>/: accept DIR itself when that is all it holds."""
    if pred is None or not (pred / "Annotations").is_dir():
        return pred
    others = [p for p in pred.iterdir() if p.is_dir() and p.name != "Annotations"]
    return pred / "Annotations" if not others else pred


def _segment_split(args: argparse.Namespace, pred_root: Path, sequences: list[str] | None, inference) -> None:
    """Run the checkpoint's model over the split (imported only now, so that `cfbi evaluate --gt --pred` needs
    neither torch nor the model); checkpoint problems are reported like bad input data."""
    from ..build import CheckpointError  # noqa: PLC0415
    from ..evaluation import run as evaluation_run  # noqa: PLC0415
    from ._options import apply_runtime  # noqa: PLC0415

    try:
        device = apply_runtime(args)
    except ValueError as error:
        raise MediaError(str(error)) from None
    try:
        evaluation_run.segment_split(
            args.checkpoint,
            args.data,
            args.split,
            pred_root,
            sequences,
            inference=inference,
            config=args.config,
            device=device,
        )
    except CheckpointError as error:
        raise MediaError(str(error)) from None
