"""Segmenting videos with a trained model: the engine and its test-time views (scales, flips)."""
from ..config import InferenceConfig
from ..modeling.preprocess import preprocess
from .segmenter import StepResult, VideoSegmenter, inference_size

__all__ = ["InferenceConfig", "StepResult", "VideoSegmenter", "inference_size", "preprocess"]
