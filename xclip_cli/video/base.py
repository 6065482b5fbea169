"""What every decoder backend shares: the error a video that cannot be read raises, what a probe reports,
and the bookkeeping of reads planned in advance (:class:`Plan`).

:mod:`.decode` re-exports both; the backends import them from here (not from the dispatcher, which
imports the backends).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


class Plan:
    """Reads announced before they come, in order (a file's windows): which planned read a request is,
    and which frames later reads share with it, so that a reader can walk the file forward once.

    Each read is kept as its sorted unique frame numbers, clamped to ``num_frames - 1`` as reads are.
    """

    def __init__(self, index_sets: Sequence[np.ndarray], num_frames: int) -> None:
        last = max(num_frames - 1, 0)
        self.reads = [
            sorted_unique(np.minimum(np.asarray(s, np.int64).reshape(-1), last)) for s in index_sets
        ]
        self.next = 0  # the first planned read not yet served

    def find(self, unique: np.ndarray) -> int | None:
        """Which planned read (from :attr:`next` on) asks for exactly the frames ``unique``; None if none."""
        for at in range(self.next, len(self.reads)):
            planned = self.reads[at]
            if len(planned) == len(unique) and (planned == unique).all():
                return at
        return None

    def later(self, at: int, upto: int, stop: int | None = None) -> set[int]:
        """Frames up to ``upto`` that the planned reads after ``at`` (and before ``stop``) ask for.

        Planned reads start in order (windows), so the search stops at the first that starts later.
        """
        found: set[int] = set()
        for planned in self.reads[at + 1 : stop]:
            if planned[0] > upto:
                break
            found.update(int(i) for i in planned[planned <= upto])
        return found


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-d array: ``np.unique``, without the ``numpy.ma`` import (11 ms,
    in every decode worker) that numpy 2's ``np.unique`` does on its first call without ``return_inverse``."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered
