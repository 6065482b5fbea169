"""From a file to model-ready views: the one decode -> sample -> normalise path of tag, eval and finetune.

:class:`ClipSpec` says how (frames, views, windows, and training mode: TSN random offsets plus the official
augmentation); :func:`load_clips` does it for any record with ``path``, ``start`` and ``end``: a
:class:`VideoTask` or an ``xclip_cli.data.records.VideoRecord``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .. import workers
from ..data.records import VideoRecord
from ..options import MAX_WINDOWS_PER_FILE, parse_views  # noqa: F401 - parse_views: re-exported
from .decode import VideoError, open_video, probe, read_frames  # noqa: F401 - probe: part of this namespace
from .sampling import range_to_frames, segment_indices, view_indices, windows
from .transforms import IMAGENET_MEAN, IMAGENET_STD, short_side_for, test_views, train_transform


@dataclass(frozen=True)
class ClipSpec:
    """How to turn a video (or a time range of it) into views: ``clips x crops`` of ``frames`` frames.

    With ``window`` the range is cut into consecutive windows of that many seconds (every ``stride``
    seconds), each scored on its own. ``train`` is training mode: one view, a random frame of each TSN
    segment and, with ``augment``, the official augmentation (:func:`~xclip_cli.video.train_transform`);
    its randomness comes from the ``rng`` and ``generator`` given to :func:`load_clips`.
    """

    frames: int
    image_size: int
    clips: int = 1
    crops: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    window: float | None = None
    stride: float | None = None
    train: bool = False
    augment: bool = True

    def __post_init__(self) -> None:
        if self.train and (self.clips, self.crops, self.window) != (1, 1, None):
            raise ValueError("training mode takes one view (1x1) of the whole range, no windows")

    @property
    def num_views(self) -> int:
        """Views per video (or window): clips x crops."""
        return self.clips * self.crops

    @property
    def views(self) -> str:
        """The views as written on the command line and in reports: ``"CLIPSxCROPS"``."""
        return f"{self.clips}x{self.crops}"


class Span(Protocol):
    """What the loader needs of a record: a file and an optional ``[start, end)`` range in seconds."""

    @property
    def path(self) -> str: ...
    @property
    def start(self) -> float | None: ...
    @property
    def end(self) -> float | None: ...


#: One input to decode: the one record type of every command (a file, its label if any, an optional
#: ``[start, end)`` range in seconds). Tagging keys its cache and rows on ``path``, ``start`` and ``end``.
VideoTask = VideoRecord


@dataclass
class Clip:
    """The views of one video or one window of it: ``views`` is float32 ``[clips*crops, T, 3, S, S]``."""

    start: float | None
    end: float | None
    duration: float | None
    indices: list[int]
    views: torch.Tensor


def spans_of(task: Span, duration: float | None, spec: ClipSpec) -> list[tuple[float | None, float | None]]:
    """The time ranges of a task that get one row each: the task's range, or its windows."""
    if spec.window is None:
        return [(task.start, task.end)]
    if duration is None:
        raise VideoError(task.path, "unknown duration; cannot cut it into windows")
    start = task.start or 0.0
    end = min(task.end, duration) if task.end is not None else duration
    length, stride = max(0.0, end - start), spec.stride or spec.window
    if length / stride > MAX_WINDOWS_PER_FILE:
        raise VideoError(
            task.path,
            f"{length:.0f} s in windows every {stride:g} s would be more than "
            f"{MAX_WINDOWS_PER_FILE} windows; use a longer --stride",
        )
    return [(start + s, start + e) for s, e in windows(length, spec.window, spec.stride)]


def load_clips(
    task: Span,
    spec: ClipSpec,
    *,
    rng: np.random.Generator | None = None,
    generator: torch.Generator | None = None,
    threads: int | None = None,
    shared: bool | None = None,
) -> Iterator[Clip]:
    """Probe `task`'s file and yield its clips one window at a time, decoding only the sampled frames.

    The file is opened once (:func:`~xclip_cli.video.decode.open_video`) and every window is read
    through that one reader, in order. In training mode (``spec.train``) `rng` draws the frame of each
    segment and `generator` the augmentation (fresh unseeded ones when None); otherwise the clips are
    placed deterministically. ``threads``: decord's decoding threads, passed to :func:`read_frames`
    (decode workers use 1). ``shared``: put the views in shared memory (see
    :func:`~xclip_cli.video.test_views`); None: when running in a decode worker
    (:func:`xclip_cli.workers.in_worker`), whose clips go to the parent process.
    """
    shared = workers.in_worker() if shared is None else shared
    short_side = short_side_for(spec.image_size, spec.crops)
    with open_video(task.path, threads=threads) as video:
        info = video.info
        if spec.window is not None and info.fps > 0 and spec.window < 1.0 / info.fps:
            raise VideoError(
                task.path, f"--window {spec.window:g} s is shorter than one frame ({1.0 / info.fps:.3g} s)"
            )
        planned = []
        for start, end in spans_of(task, info.duration, spec):
            first, count = range_to_frames(info, start, end)
            if spec.train:
                indices = segment_indices(count, spec.frames, train=True, rng=rng) + first
            else:
                indices = (view_indices(count, spec.frames, spec.clips) + first).reshape(-1)
            planned.append((start, end, indices))
        if len(planned) > 1:
            video.plan([indices for _, _, indices in planned])
        for start, end, indices in planned:
            frames = read_frames(
                task.path, indices, short_side=short_side, info=info, threads=threads, video=video
            )
            if spec.train and spec.augment:
                if generator is None:
                    generator = torch.Generator()
                    generator.seed()
                views = train_transform(
                    frames, image_size=spec.image_size, generator=generator, mean=spec.mean, std=spec.std
                )[None]
            else:
                views = test_views(
                    frames,
                    image_size=spec.image_size,
                    crops=spec.crops,
                    mean=spec.mean,
                    std=spec.std,
                    shared=shared,
                )
                views = views.reshape(spec.crops * spec.clips, spec.frames, *views.shape[2:])
            yield Clip(start, end, info.duration, indices.tolist(), views)
