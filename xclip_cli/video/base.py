"""What every decoder backend shares: the error a video that cannot be read raises, and what a probe reports.

:mod:`.decode` re-exports both; the backends import them from here (not from the dispatcher, which
imports the backends).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import XClipError


class VideoError(XClipError):
    """A video that cannot be read, with one human-readable cause.

    ``str(error)`` is ``"<path>: <reason>"``. Built as ``VideoError(path, reason)``; the one-argument
    form (a whole message) also works, so that the error survives re-raising across processes.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return self.path if self.reason is None else f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder reports about a video's (best) video stream.

    ``width``/``height`` are as displayed, i.e. after ``rotation`` (clockwise degrees from the
    container's display matrix) has been applied. ``duration`` is ``num_frames / fps``, the length
    the frame indices span; it is None only when the frame rate is unknown.
    """

    path: str
    num_frames: int
    fps: float
    duration: float | None
    width: int
    height: int
    rotation: int
