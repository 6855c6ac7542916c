"""Reading and writing media: frames, label masks (palette PNG), video files and overlays, one reader per format."""

from .frames import IMAGE_EXTENSIONS, MediaError, image_size, list_frames, read_frame
from .masks import default_palette, read_mask, write_mask
from .overlay import colorize, overlay
from .video import OverlayWriter, iter_video, video_fps

__all__ = [
    "IMAGE_EXTENSIONS",
    "MediaError",
    "image_size",
    "list_frames",
    "read_frame",
    "default_palette",
    "read_mask",
    "write_mask",
    "colorize",
    "overlay",
    "OverlayWriter",
    "iter_video",
    "video_fps",
]
