"""Which frames to decode: TSN segment sampling (as official X-CLIP), views, and time windows.

X-CLIP samples with mmaction2's ``SampleFrames(clip_len=1, frame_interval=1, num_clips=T)``: the
video is cut into T equal segments and one frame is taken from each, the segment centre at test time
and a random frame of the segment in training.
"""

from __future__ import annotations

import math

import numpy as np

from .decode import VideoError, VideoInfo

# Float noise allowed when converting seconds to frame numbers (0.1 s * 30 fps = 3.0000000000000004).
_EPS = 1e-6


def segment_indices(
    num_frames: int, frames: int, *, train: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frame indices (int64, length ``frames``) of TSN segment sampling, as mmaction2 computes them.

    Test mode (``train=False``) is mmaction2's ``_get_test_clips``: the centre of each of the
    ``frames`` equal segments, deterministic. Train mode is ``_get_train_clips``: a random frame of
    each segment (videos shorter than ``frames`` use mmaction2's fallbacks), wrapped into the video
    like mmaction2's ``out_of_bound_opt='loop'``. ``rng`` defaults to a fresh unseeded generator.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    if not train:
        return view_indices(num_frames, frames, 1)[0]  # the one formula of deterministic placement

    rng = rng if rng is not None else np.random.default_rng()
    # mmaction2 with clip_len=1: ori_clip_len = 1, so "num_frames - ori_clip_len + 1" is num_frames.
    avg_interval = num_frames // frames
    if avg_interval > 0:
        offsets = np.arange(frames) * avg_interval + rng.integers(avg_interval, size=frames)
    elif num_frames > frames:  # unreachable with clip_len=1; kept to mirror mmaction2 branch for branch
        offsets = np.sort(rng.integers(num_frames, size=frames))
    elif avg_interval == 0:
        ratio = num_frames / frames
        offsets = np.around(np.arange(frames) * ratio)  # numpy rounds halves to even, as mmaction2
    else:
        offsets = np.zeros(frames)
    return np.mod(offsets.astype(np.int64), num_frames)


def view_indices(num_frames: int, frames: int, clips: int) -> np.ndarray:
    """Deterministic indices ``[clips, frames]`` for multi-clip testing.

    Clip ``c`` takes, in each of the ``frames`` equal segments, the frame at fraction
    ``(c + 0.5) / clips`` of the segment, so clips spread evenly inside segments and ``clips=1`` is
    exactly test-mode :func:`segment_indices`. (The official code draws these clips at random, which
    makes its multi-view scores vary from run to run.)
    """
    if clips <= 0:
        raise ValueError(f"clips must be positive, got {clips}")
    if num_frames <= 0 or frames <= 0:
        raise ValueError(f"num_frames and frames must be positive, got {num_frames} and {frames}")
    avg_interval = num_frames / float(frames)
    base = np.arange(frames) * avg_interval
    fraction = (np.arange(clips) + 0.5) / clips
    offsets = (base[None, :] + avg_interval * fraction[:, None]).astype(np.int64)
    return np.minimum(offsets, num_frames - 1)


def windows(duration: float, window: float, stride: float | None = None) -> list[tuple[float, float]]:
    """Consecutive ``[start, end)`` windows of ``window`` seconds, every ``stride`` (default: window).

    The last window is clipped to ``duration``, and no window starts once one has reached the end,
    so overlapping strides add no trailing sub-windows. A trailing remainder shorter than 5 % of a
    window (e.g. the 3 ms a soundtrack adds to 30 s of video) is merged into the previous window
    rather than reported on its own: it holds too few frames to classify. With ``stride <= window``
    the windows cover ``[0, duration]``; a zero duration has no windows.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    stride = window if stride is None else stride
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if duration < 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be a non-negative number, got {duration}")
    spans: list[tuple[float, float]] = []
    index = 0
    while duration > 0:
        start = index * stride  # multiply rather than accumulate, so no drift over long videos
        if start >= duration - _EPS:
            break
        end = min(start + window, duration)
        if spans and end - start < 0.05 * window:
            if spans[-1][1] >= start - _EPS:  # adjacent or overlapping: extend; after a gap: drop
                spans[-1] = (spans[-1][0], duration)
            break
        spans.append((start, end))
        if end >= duration - _EPS:
            break
        index += 1
    return spans


def range_to_frames(info: VideoInfo, start: float | None, end: float | None) -> tuple[int, int]:
    """First frame and frame count of the frames that start in ``[start, end)`` seconds.

    Frame ``i`` starts at ``i / fps`` (the average rate; variable-rate video is approximated), so
    consecutive ranges (e.g. :func:`windows`) split the frames without overlap. ``None`` means the
    start or the end of the video. A range too short to contain a frame start gets the one frame on
    screen at ``start``; a range reaching past the end is cut at the last frame.

    Raises:
        VideoError: the range is empty or reversed, starts after the video ends, or the frame rate
            needed to convert seconds is unknown.
    """
    num_frames, fps = info.num_frames, info.fps
    if num_frames <= 0:
        raise VideoError(info.path, "no video frames")
    if start is None and end is None:
        return 0, num_frames
    if fps <= 0:
        raise VideoError(info.path, "unknown frame rate; cannot select a time range")
    begin = 0.0 if start is None else max(0.0, start)
    if end is not None and end <= begin:
        raise VideoError(info.path, f"empty time range {begin:g}-{end:g} s")
    if begin * fps >= num_frames - _EPS:
        raise VideoError(
            info.path, f"time range starts at {begin:g} s, after the video ends ({num_frames / fps:.2f} s)"
        )
    first = math.ceil(begin * fps - _EPS)
    stop = num_frames if end is None else min(num_frames, math.ceil(end * fps - _EPS))
    if stop <= first:
        return min(math.floor(begin * fps + _EPS), num_frames - 1), 1
    return first, stop - first
