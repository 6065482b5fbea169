"""Video input: probing, frame decoding, frame-index sampling and model-input transforms.

Knows nothing about models: it turns files into uint8 frames and frames into normalised tensors.
"""

from .decode import Video, VideoError, VideoInfo, open_video, probe, read_frames
from .sampling import range_to_frames, segment_indices, view_indices, windows
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    short_side_for,
    test_views,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Video",
    "VideoError",
    "VideoInfo",
    "normalize",
    "open_video",
    "probe",
    "range_to_frames",
    "read_frames",
    "segment_indices",
    "short_side_for",
    "test_views",
    "train_transform",
    "view_indices",
    "windows",
]
