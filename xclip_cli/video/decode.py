"""Probe videos and decode only the frames a model needs: the dispatch between two backends.

* :mod:`.decord_backend` (the official X-CLIP decoder): fast random access to a handful of frames. It
  cannot open some inputs (GIF, WebM without a duration, AV1, 1x1-pixel video).
* :mod:`.ffmpeg_backend` (the ffmpeg command-line tool): slower to start, but it reads anything ffmpeg
  reads. Used whenever decord is missing or cannot open or decode a file.

A packet the decoder rejects (a damaged file) is an error in both backends, not a frame to conceal.

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
from .base import VideoError, VideoInfo

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
) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``[N, H, W, 3]``, upright, in the order asked.

    Indices may repeat and be unsorted. Indices past the last decodable frame (headers often
    overstate the count) are clamped to it. With ``short_side``, the decoder downscales so that the
    shorter side is ``short_side`` pixels (aspect ratio kept; never upscales), which saves most of
    the memory and resize work for HD video. ``info`` (from :func:`probe`) saves a second probe.
    ``threads``: decord's decoding threads (None: :data:`DECODER_THREADS`).

    Raises:
        VideoError: the video cannot be read.
        ValueError: ``indices`` is empty or has negative values.
    """
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("no frame indices requested")
    if wanted.min() < 0:
        raise ValueError(f"negative frame index {int(wanted.min())}")
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
