"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class XClipError(Exception):
    """Base class for user-facing errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class WeightsError(XClipError):
    """A model source that cannot be resolved or loaded (unknown name, missing file, offline, corrupt)."""


class FrameCountError(XClipError, ValueError):
    """Frames given to a model that was built for another number of frames."""

    exit_code = 2
