"""The CFBI+ network: backbone, FPN, matching around cfbi_ops, attention, collaborative ensembler."""

from .network import CFBIPlus, FrameFeatures
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess

__all__ = ["CFBIPlus", "FrameFeatures", "IMAGENET_MEAN", "IMAGENET_STD", "preprocess"]
