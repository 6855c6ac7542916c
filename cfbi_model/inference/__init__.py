"""Segmenting videos with a trained model: the engine (VideoSegmenter: test-time views, annotations on any frame,
the object ids), the one driver that feeds it a video (run_video, propagate), the sinks the predictions go to,
and `segment_video`, the one-call entry point."""

from ..config import InferenceConfig
from ..io.source import Video, open_video
from ..modeling.preprocess import preprocess
from .driver import VideoResult, load_annotations, propagate, run_video, segment_video
from .segmenter import AnnotationError, FramePrediction, LabelMap, StepResult, VideoSegmenter, inference_size
from .sinks import MaskCollector, MaskFolderWriter, OverlaySink

__all__ = [
    "InferenceConfig",
    "Video",
    "open_video",
    "preprocess",
    "VideoResult",
    "load_annotations",
    "propagate",
    "run_video",
    "segment_video",
    "AnnotationError",
    "FramePrediction",
    "LabelMap",
    "StepResult",
    "VideoSegmenter",
    "inference_size",
    "MaskCollector",
    "MaskFolderWriter",
    "OverlaySink",
]
