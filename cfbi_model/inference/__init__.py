"""Segmenting videos with a trained model: the engine and its test-time views (scales, flips), propagation of
annotations on any frame with arbitrary object ids, and `segment_video`, the one-call entry point."""

from ..config import InferenceConfig
from ..modeling.preprocess import preprocess
from .propagate import AnnotationError, FramePrediction, LabelMap, propagate
from .segmenter import StepResult, VideoSegmenter, inference_size
from .video import FrameSource, MaskFolderWriter, VideoResult, load_annotations, open_source, segment_video

__all__ = [
    "InferenceConfig",
    "StepResult",
    "VideoSegmenter",
    "inference_size",
    "preprocess",
    "AnnotationError",
    "FramePrediction",
    "LabelMap",
    "propagate",
    "FrameSource",
    "MaskFolderWriter",
    "VideoResult",
    "load_annotations",
    "open_source",
    "segment_video",
]
