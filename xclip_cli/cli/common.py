"""What the commands share: option declarations, enums, the SIGTERM handler, the progress reporter.

Command modules import this, never :mod:`xclip_cli.cli` (the package registers them, see its bottom). Light
on purpose: typer and the standard library only, so ``xclip --help`` stays fast.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.models import OptionInfo

from ..errors import EXIT_INTERRUPTED

log = logging.getLogger("xclip_cli")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# -- options shared by tag, eval and finetune ----------------------------------------------------------------
# Each is declared once: `Model` etc. are the aliases a command puts in its signature (the default stays in the
# signature, as typer wants); a command whose help or panel differs calls the factory with just that changed.
def _option(*names: str, **settings: Any) -> Callable[..., OptionInfo]:
    def make(**overrides: Any) -> OptionInfo:
        return typer.Option(*names, **{**settings, **overrides})

    return make


model_option = _option(
    "--model", "-m", envvar="XCLIP_MODEL", help="Registry name, checkpoint path, folder or hub id."
)
frames_option = _option("--frames", help="Frames per view; must match the checkpoint.")
views_option = _option("--views", help="CLIPSxCROPS views per video, e.g. 4x3 as in the paper.")
device_option = _option("--device", envvar="XCLIP_DEVICE", help="auto, cpu, cuda or cuda:N.")
precision_option = _option(
    "--precision",
    envvar="XCLIP_PRECISION",
    help="auto: bf16 on a CPU with AMX or AVX512-BF16, fp16 on CUDA, else fp32; or fp32, bf16, fp16.",
)
batch_size_option = _option("--batch-size", help="Videos per model batch.")
workers_option = _option(
    "--workers", help="Decoding processes (0: in the main process). Default: sized from the cores and device."
)
threads_option = _option("--threads", help="CPU threads for the model.")
timeout_option = _option("--timeout", help="Seconds before a file that hangs a decoder is abandoned.")
progress_option = _option(
    "--progress/--no-progress",
    help="Progress on stderr: a bar on a terminal, else a line every tenth of the work.",
)

Model = Annotated[str, model_option()]
Frames = Annotated[int | None, frames_option()]
Views = Annotated[str, views_option()]
Device = Annotated[str, device_option()]
PrecisionOpt = Annotated[Precision, precision_option()]
BatchSize = Annotated[int, batch_size_option()]
Workers = Annotated[int | None, workers_option()]
Threads = Annotated[int | None, threads_option()]
Timeout = Annotated[float, timeout_option()]
ShowProgress = Annotated[bool, progress_option()]


# -- running ------------------------------------------------------------------------------------------------
class Interrupts:
    """Ctrl-C and SIGTERM (e.g. from a job scheduler) end a run alike: finish writing, exit 130.

    Each raises KeyboardInterrupt and is also remembered, because Python drops an exception raised while a
    destructor runs (a decoder's ``__del__``): ``check()`` between two results raises it again.
    """

    def __init__(self) -> None:
        self.seen = False

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def install(self) -> Interrupts:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
            signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)
        return self

    def check(self) -> None:
        if self.seen:
            raise KeyboardInterrupt


def raise_on_sigterm() -> Interrupts:
    """Install :class:`Interrupts` for this run and return it."""
    return Interrupts().install()


def interrupted(message: str) -> typer.Exit:
    """Say what an interruption kept (one line on stderr); the caller raises the returned Exit (130)."""
    typer.echo(f"xclip: {message}", err=True)
    return typer.Exit(EXIT_INTERRUPTED)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


#: The fields of a per-video display: the name of the file just done.
ITEM = {"item": "{}"}


class Reporter:
    """The one progress display of every command, on stderr (stdout stays for results).

    On a terminal: a rich bar (transient) with the title, done/total, time left and `fields`. Otherwise (a log
    file, a pipe, a test): one line each time another tenth of the work is done, none with ``-q``. `fields`
    maps a name to its format (``{"loss": "loss {:.4f}"}``; default: the name of the file just done, `item`);
    :meth:`update` sets values, None hides one.
    Disabled (``--no-progress``), it shows nothing but still passes :meth:`echo` lines through.
    """

    def __init__(
        self,
        title: str,
        *,
        done_verb: str,
        unit: str,
        enabled: bool = True,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.title, self.done_verb, self.unit = title, done_verb, unit
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.quiet = not log.isEnabledFor(logging.WARNING)
        self.fields = dict(ITEM if fields is None else fields)
        self.values: dict[str, Any] = {}
        self.total: int | None = None
        self.completed = 0
        self._tenth = 0
        self._started = time.monotonic()  # the work starts now: what loads before start() counts too
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, total: int, completed: int = 0, **values: Any) -> None:
        """Begin (or re-begin) a display of `total` units, `completed` of them already done (a resumed run)."""
        self.total, self.completed = total, completed
        self._tenth = self._tenths(completed)
        self._set(values)
        if self.tty and self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"[bold]{self.title}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}", markup=False),  # file names are not markup
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._text(), total=total, completed=completed)
        elif self._bar is not None:
            self._bar.reset(self._task, total=total, completed=completed, description=self._text())

    def update(
        self, completed: int | None = None, *, advance: int = 0, total: int | None = None, **values: Any
    ) -> None:
        """`completed` units done (or `advance` more), and new field values."""
        if not self.enabled:
            return
        if total is not None and total != self.total:
            self.start(total, self.completed)
        elif self.total is None:
            raise RuntimeError("Reporter.update before start (or without total)")
        self.completed = self.completed + advance if completed is None else completed
        self._set(values)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self._text())
        elif not self.tty and not self.quiet:
            tenth = self._tenths(self.completed)
            if tenth > self._tenth:
                self._tenth = tenth
                elapsed = time.monotonic() - self._started
                typer.echo(
                    f"xclip: {self.done_verb} {self.completed}/{self.total} {self.unit} ({elapsed:.0f} s)",
                    err=True,
                )

    def __call__(self, done: int, total: int, path: str) -> None:
        """The library's `progress(done, total, path)` callback (evaluation)."""
        self.update(done, total=total, item=short_name(path))

    def echo(self, line: str) -> None:
        """A line that stays (above the bar on a terminal); none with ``-q`` or ``--no-progress``."""
        if self.quiet or not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(f"xclip: {line}", highlight=False, markup=False)
        else:
            typer.echo(f"xclip: {line}", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _tenths(self, completed: int) -> int:
        return 10 if not self.total else completed * 10 // self.total

    def _set(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if value is None:
                self.values.pop(name, None)
            else:
                self.values[name] = value

    def _text(self) -> str:
        return "  ".join(
            fmt.format(self.values[name]) for name, fmt in self.fields.items() if name in self.values
        )


def short_name(path: str) -> str:
    """What a bar shows of a path: the end of its file name."""
    return Path(path).name[-40:]
