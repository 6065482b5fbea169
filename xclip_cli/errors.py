"""Errors a user can cause, each with the exit code the CLI ends with.

The CLI turns every :class:`XClipError` into one line on stderr and ``exit_code`` (in one place,
``cli.XClipGroup``); anything else is a bug and keeps its traceback.

==== ===================================================================================================
code meaning
==== ===================================================================================================
1    some inputs failed (their rows carry the error), or a report could not be written to the end
2    usage: a bad option value, unusable labels or data, a report or run folder that exists, is locked or
     is not ours, a frame count the checkpoint cannot take
3    the model could not be loaded (unknown name, missing or corrupt weights, a file that would run code,
     an architecture that does not fit together)
130  interrupted (Ctrl-C, SIGTERM) after saving what was done
==== ===================================================================================================
"""

from __future__ import annotations

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class XClipError(Exception):
    """Base class for user-facing errors; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_SOME_FAILED


class UsageError(XClipError, ValueError):
    """An option value that cannot work (checked before anything heavy starts)."""

    exit_code = EXIT_USAGE


class WeightsError(XClipError):
    """A model source that cannot be resolved or loaded (unknown name, missing file, offline, corrupt)."""

    exit_code = EXIT_MODEL


class FrameCountError(XClipError, ValueError):
    """Frames given to a model that was built for another number of frames."""

    exit_code = EXIT_USAGE


class FileLockedError(XClipError):
    """Another xclip process is writing this report or run folder."""

    exit_code = EXIT_USAGE
