"""Checks of option values shared by the commands and their library functions, run before anything heavy.

Each raises :class:`~xclip_cli.errors.UsageError` (exit 2) with one line naming the option. Light on
purpose (no torch): the CLI calls them before it imports the model.
"""

from __future__ import annotations

import math
import re

from .errors import UsageError

#: Frames per view a model may be asked for: the published models use 8, 16 and 32.
MAX_FRAMES = 64
#: Clips per video for multi-view testing (the paper uses 4).
MAX_CLIPS = 32
#: The shortest window: one frame at 100 fps. Each file is also checked against its own frame rate.
MIN_WINDOW_S = 0.01
#: Windows one file may be cut into (a 24-hour video in 1-second windows is 86,400).
MAX_WINDOWS_PER_FILE = 100_000
#: Seconds: a per-file timeout longer than a day is a typo, not a wish.
MAX_TIMEOUT_S = 86_400.0
#: Decoding processes.
MAX_WORKERS = 256


def number(
    name: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """`value` (when given) is a finite number within [low, high] (``(low, high]`` with `low_open`)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise UsageError(
            f"{name} must be {'greater than' if low_open else 'at least'} {low:g}, got {value:g}"
        )
    if high is not None and value > high:
        raise UsageError(f"{name} must be at most {high:g}, got {value:g}")


def integer(name: str, value: int | None, *, low: int = 1, high: int | None = None) -> None:
    """`value` (when given) is an int within [low, high]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be a whole number, got {value!r}")
    number(name, value, low=low, high=high)


def check_frames(frames: int | None) -> None:
    integer("--frames", frames, low=1, high=MAX_FRAMES)


def check_window(window: float | None, stride: float | None) -> None:
    """A window of at least MIN_WINDOW_S seconds; a stride only with a window, no longer than a day."""
    if stride is not None and window is None:
        raise UsageError("--stride needs --window (it spaces the windows)")
    number("--window", window, low=MIN_WINDOW_S, high=MAX_TIMEOUT_S)
    number("--stride", stride, low=MIN_WINDOW_S, high=MAX_TIMEOUT_S)


def check_run(
    *,
    timeout: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    threads: int | None = None,
) -> None:
    """How a run executes: per-file timeout, batch size, decoding processes, CPU threads."""
    number("--timeout", timeout, low=0.0, high=MAX_TIMEOUT_S, low_open=True)
    integer("--batch-size", batch_size, low=1, high=4096)
    integer("--workers", workers, low=0, high=MAX_WORKERS)
    integer("--threads", threads, low=1, high=1024)


def check_scores(top_k: int | None = None, threshold: float | None = None) -> None:
    integer("--top-k", top_k, low=1)
    number("--threshold", threshold, low=0.0, high=1.0)


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` -> (4 clips, 3 crops). Crops are 1 (centre) or 3 (official three-crop)."""
    try:
        clips, crops = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"--views must look like CLIPSxCROPS, e.g. 1x1 or 4x3; got {text!r}") from None
    if not 1 <= clips <= MAX_CLIPS or crops not in (1, 3):
        raise UsageError(f"--views {text!r}: clips must be 1 to {MAX_CLIPS} and crops 1 or 3")
    return clips, crops


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::\d+)?)$")


def check_device_name(device: object) -> str:
    """`device` as a lower-case string naming a device (``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``);
    whether this machine has it is :func:`xclip_cli.model.check_device`'s question (it needs torch)."""
    text = str(device).strip().lower()
    if not _DEVICE.match(text):
        raise UsageError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    return text
