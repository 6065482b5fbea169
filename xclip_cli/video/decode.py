"""Probe videos and decode only the frames a model needs: the dispatch between two backends.

* :mod:`.decord_backend` (the official X-CLIP decoder): fast random access to a handful of frames. It
  cannot open some inputs (GIF, WebM without a duration, AV1, 1x1-pixel video).
* :mod:`.ffmpeg_backend` (the ffmpeg command-line tool): slower to start, but it reads anything ffmpeg
  reads. Used whenever decord is missing or cannot open or decode a file.

A packet the decoder rejects (a damaged file) is an error in both backends, not a frame to conceal.

:func:`read_frames` opens the file for one read; :func:`open_video` keeps it open (a :class:`Video`)
for several, e.g. every window of a file, read through one reader in one pass.

Both backends return frames upright (rotation metadata applied: decord >= 0.6 and ffmpeg's
autorotate both honour it) and pick the same stream when a file has several video streams (ffmpeg's
"best" stream, the one with the highest resolution).

Nothing here writes to the terminal (see the backends), and nothing here is a setting changed at run
time: options such as decoder threads are parameters of the call.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

import numpy as np

from . import decord_backend, ffmpeg_backend
from .base import Plan, VideoError, VideoInfo

log = logging.getLogger(__name__)

#: Default decord decoding threads per file (``read_frames(threads=None)``); 0 lets FFmpeg choose.
#: Decode workers pass 1: with one worker per core, extra decoder threads only add work (a threaded
#: decoder refills its pipeline after every seek).
DECODER_THREADS = 0


# ---------------------------------------------------------------------------------------------- helpers


def _check_file(path: str | os.PathLike[str]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "not found") from None
    except OSError as exc:
        raise VideoError(path, f"cannot access file ({exc.strerror})") from None
    # A FIFO or device would make readers block forever.
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "cannot read file (permission denied)")
    if st.st_size == 0:
        raise VideoError(path, "empty file")


def _scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """(width, height) with the shorter side at ``short_side``; None when no downscale is needed."""
    if short_side is None or min(width, height) <= short_side:
        return None
    if width <= height:
        return short_side, max(1, int(height * short_side / width + 0.5))
    return max(1, int(width * short_side / height + 0.5)), short_side


# --------------------------------------------------------------------------------------------- dispatch

#: decord itself, or None where it is not installed (then ffmpeg does all the work).
decord = decord_backend.decord


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's metadata cheaply (decord; ffmpeg when decord cannot open the file).

    Raises:
        VideoError: the file is missing, unreadable, has no video stream or cannot be decoded.
    """
    _check_file(path)
    if decord is not None:
        try:
            return decord_backend.probe(path)
        except Exception as exc:  # a native library raising assorted types
            log.debug("%s: decord cannot probe (%s); using ffmpeg", path, decord_backend.cause(exc))
    return ffmpeg_backend.probe(path)


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | np.ndarray,
    *,
    short_side: int | None = None,
    info: VideoInfo | None = None,
    threads: int | None = None,
    video: Video | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``[N, H, W, 3]``, upright, in the order asked.

    Indices may repeat and be unsorted. Indices past the last decodable frame (headers often
    overstate the count) are clamped to it. With ``short_side``, the decoder downscales so that the
    shorter side is ``short_side`` pixels (aspect ratio kept; never upscales), which saves most of
    the memory and resize work for HD video. ``info`` (from :func:`probe`) saves a second probe.
    ``threads``: decord's decoding threads (None: :data:`DECODER_THREADS`). ``video``: the file
    `path` already open (:func:`open_video`): its reader serves the read (``info`` and ``threads``
    are then its own), with no new reader, probe or pass over the file.

    Raises:
        VideoError: the video cannot be read.
        ValueError: ``indices`` is empty or has negative values.
    """
    wanted = _checked_indices(indices)
    if video is not None:
        return video.read(wanted, short_side=short_side)
    _check_file(path)
    if short_side is not None and info is None:
        info = probe(path)  # the target size depends on the source size
    if decord is not None:
        size = _scaled_size(info.width, info.height, short_side) if info is not None else None
        try:
            return decord_backend.read(path, wanted, size, DECODER_THREADS if threads is None else threads)
        except Exception as exc:  # a native library raising assorted types
            log.debug("%s: decord cannot decode (%s); using ffmpeg", path, decord_backend.cause(exc))
    if info is None:
        info = probe(path)
    return ffmpeg_backend.read(path, wanted, info, _scaled_size(info.width, info.height, short_side))


def open_video(path: str | os.PathLike[str], *, threads: int | None = None) -> Video:
    """Probe `path` and keep it open for any number of :meth:`Video.read` calls (close it, or use ``with``).

    Raises:
        VideoError: the file is missing, unreadable, has no video stream or cannot be decoded.
    """
    return Video(path, threads=threads)


class Video:
    """One video file, open: probed once (:attr:`info`), then read any number of times.

    What :func:`load_clips` uses for a file's windows, told in advance which reads will come
    (:meth:`plan`): decord keeps one reader for all of them (the probe's own when no downscale is
    needed) and walks forward through the file, fetching with each read the frames that later
    (overlapping) windows want before where the read ends, so that it never seeks back; ffmpeg
    decodes the file once for all of them. The choice of backend is the one :func:`probe` and
    :func:`read_frames` make: decord, and ffmpeg where decord cannot open or decode the file (from
    the read that failed on, for the rest of the file).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        _check_file(path)
        self.path = os.fspath(path)
        self.threads = DECODER_THREADS if threads is None else threads
        self._decord: decord_backend.Reader | None = None
        self._ffmpeg: ffmpeg_backend.Reader | None = None
        self._plan: Plan | None = None
        self._kept: dict[int, np.ndarray] = {}  # decord frames a later planned read asks for
        self._kept_size: tuple[int, int] | None = None
        if decord is not None:
            try:
                self._decord = decord_backend.Reader(path, self.threads)
            except Exception as exc:  # a native library raising assorted types
                log.debug("%s: decord cannot probe (%s); using ffmpeg", path, decord_backend.cause(exc))
        self.info: VideoInfo = self._decord.info if self._decord is not None else ffmpeg_backend.probe(path)

    def plan(self, index_sets: Sequence[np.ndarray]) -> None:
        """The reads to come, in order, each as :meth:`read` will be given it. Reading other frames
        still works, at the cost of a seek (decord) or a pass over the file (ffmpeg) each."""
        self._plan = Plan(index_sets, self.info.num_frames)
        self._kept.clear()
        if self._ffmpeg is not None:
            self._ffmpeg.plan(self._plan)

    def read(self, indices: Sequence[int] | np.ndarray, *, short_side: int | None = None) -> np.ndarray:
        """The frames at ``indices``, as :func:`read_frames` returns them."""
        wanted = _checked_indices(indices)
        size = _scaled_size(self.info.width, self.info.height, short_side)
        if self._decord is not None:
            try:
                return self._read_decord(wanted, size)
            except Exception as exc:  # a native library raising assorted types
                log.debug("%s: decord cannot decode (%s); using ffmpeg", self.path, decord_backend.cause(exc))
                self._decord.close()
                self._decord = None
                self._kept.clear()
        if self._ffmpeg is None:
            self._ffmpeg = ffmpeg_backend.Reader(self.path, self.info)
            if self._plan is not None:
                self._ffmpeg.plan(self._plan)
        return self._ffmpeg.read(wanted, size)

    def _read_decord(self, wanted: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        unique, inverse = np.unique(np.minimum(wanted, max(self.info.num_frames - 1, 0)), return_inverse=True)
        at = self._plan.find(unique) if self._plan is not None else None
        if at is None:
            return self._decord.read(wanted, size)
        if size != self._kept_size:
            self._kept, self._kept_size = {}, size
        top = int(unique[-1])
        # This read, and what later reads want from the stretch it walks through.
        fetch = sorted((set(unique.tolist()) | self._plan.later(at, top)) - self._kept.keys())
        if fetch == unique.tolist():  # nothing kept from before, nothing extra: the batch is this read
            frames = self._decord.read(unique, size)
            self._kept.update(zip(fetch, frames))
        else:
            if fetch:
                self._kept.update(zip(fetch, self._decord.read(np.asarray(fetch, dtype=np.int64), size)))
            frames = np.stack([self._kept[i] for i in unique.tolist()])
        self._plan.next = at + 1
        keep = self._plan.later(at, max(self._kept)) if self._kept else set()
        self._kept = {n: f for n, f in self._kept.items() if n in keep}
        if len(inverse) == len(unique) and (inverse == np.arange(len(inverse))).all():
            return frames
        return frames[inverse]

    def close(self) -> None:
        """Let the readers go (and stop an ffmpeg still decoding planned frames)."""
        if self._decord is not None:
            self._decord.close()
        if self._ffmpeg is not None:
            self._ffmpeg.close()
        self._kept.clear()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checked_indices(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("no frame indices requested")
    if wanted.min() < 0:
        raise ValueError(f"negative frame index {int(wanted.min())}")
    return wanted
