"""What decides a fine-tuning run (:class:`FinetuneConfig`), what it returns, and the errors it raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EXIT_SOME_FAILED, EXIT_USAGE, UsageError, XClipError
from ..files import FOLDER_LOCK
from ..options import MAX_FRAMES
from .distributed import world_size as distributed_world_size

STATE_FILE = "state.pt"
STATE_FORMAT = "xclip-cli-train-state"
RUN_CONFIG = "config.json"
PLOT_EVERY_S = 60.0
#: Options that only change how a run executes, never its results: they may differ on --resume.
RUNTIME_OPTIONS = ("workers", "device", "threads")
LOCK_NAME = FOLDER_LOCK
#: What --precision takes: fp32, or autocast to fp16 (with loss scaling on CUDA) or bf16; auto picks
#: (xclip_cli.precision): fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16, else fp32.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class DataError(XClipError):
    """Training data that cannot be used; ``problems`` lists every problem found (file:line: what)."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            shown = "".join(f"\n  {p}" for p in self.problems[:20])
            more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
            text = f"{len(self.problems)} problems in the training data:{shown}{more}"
        super().__init__(text)


class RunFolderError(XClipError):
    """The run folder cannot be used as asked (exists without --resume/--overwrite, not a run, is a file,
    cannot be written, ...)."""

    exit_code = EXIT_USAGE


class SaveError(XClipError):
    """Writing into the run folder failed mid-run (disk full, I/O error); what was saved before is intact."""

    exit_code = EXIT_SOME_FAILED


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: ``last/`` holds the state at the last completed optimizer step."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


# -- configuration ------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """Everything that decides a fine-tuning run's result. Defaults are the official X-CLIP recipe.

    ``batch_size`` is the number of clips per forward pass summed over all processes (each of N
    ``torchrun`` processes takes ``batch_size / N``); one optimizer step sees ``batch_size *
    accum_steps`` clips. ``min_lr`` defaults to ``lr / 100``.
    """

    # data
    data: str | None = None
    val: str | None = None
    dataset: str | None = None
    root: str | None = None
    split: int = 1
    labels: str | None = None
    val_fraction: float = 0.0
    shots: int | None = None
    seed: int = 1024
    # model
    model: str = "clip-b32"
    frames: int | None = None
    freeze: list[str] = field(default_factory=list)
    grad_checkpointing: bool = False
    precision: str | None = None  # auto (= None) | fp32 | fp16 | bf16
    #: Before --precision: True = autocast (fp16 on CUDA, bf16 on CPU), False = fp32. Stored configs of
    #: old runs carry it; --precision wins when both are given.
    amp: bool | None = None
    # recipe
    epochs: int = 30
    batch_size: int = 8
    accum_steps: int = 4
    lr: float = 8e-6
    new_lr_mult: float = 10.0
    min_lr: float | None = None
    weight_decay: float = 0.001
    warmup_epochs: float = 5.0
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    augment: bool = True
    # checkpoints
    save_every_steps: int = 0
    # runtime only: never change results; on --resume the values given replace the stored ones
    workers: int | None = None  # default: min(2, CPUs)
    device: str | None = None  # default: auto
    threads: int | None = None  # default: torch's

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def option_problems(self, world_size: int | None = None) -> list[str]:
        """Option values that cannot work, as one message each: numbers that are not finite or out of
        range, a device this machine lacks, a batch the processes cannot share. Cheap: loads nothing."""
        problems: list[str] = []

        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        def whole(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                problems.append(f"{flag(name)} must be a whole number, got {value!r}")
            elif value < low or (high is not None and value > high):
                bounds = f"at least {low}" if high is None else f"from {low} to {high}"
                problems.append(f"{flag(name)} must be {bounds}, got {value}")

        def real(name: str, ok: Callable[[float], bool], rule: str) -> None:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                problems.append(f"{flag(name)} must be a number, got {value!r}")
            elif not math.isfinite(value):
                problems.append(f"{flag(name)} must be a finite number, got {value}")
            elif not ok(value):
                problems.append(f"{flag(name)} must be {rule}, got {value:g}")

        whole("split", 1, 3)
        whole("shots", 1)
        whole("seed", 0)
        whole("frames", 1, MAX_FRAMES)
        whole("epochs", 1)
        whole("batch_size", 1)
        whole("accum_steps", 1)
        whole("save_every_steps", 0)
        whole("workers", 0)
        whole("threads", 1)
        real("lr", lambda v: v > 0, "positive")
        real("new_lr_mult", lambda v: v > 0, "positive")
        real("min_lr", lambda v: v >= 0, ">= 0")
        real("weight_decay", lambda v: v >= 0, ">= 0")
        real("warmup_epochs", lambda v: v >= 0, ">= 0")
        real("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
        real("mixup", lambda v: v >= 0, "0 (off) or a positive Beta alpha")
        real("cutmix", lambda v: v >= 0, "0 (off) or a positive Beta alpha")
        real("mixup_switch_prob", lambda v: 0 <= v <= 1, "in [0, 1]")
        real("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)")
        if not isinstance(self.freeze, (list, tuple)) or not all(
            isinstance(f, str) and f for f in self.freeze
        ):
            problems.append(f"--freeze takes non-empty parts of parameter names, got {self.freeze!r}")
        if self.amp is not None and not isinstance(self.amp, bool):
            problems.append(f"--amp must be true, false or unset, got {self.amp!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if (
            world_size
            and world_size > 1
            and isinstance(self.batch_size, int)
            and self.batch_size % world_size
        ):
            problems.append(f"--batch-size {self.batch_size} is not divisible by the {world_size} processes")
        if self.device is not None:
            from ..model import check_device

            try:
                check_device(self.device)
            except UsageError as err:
                problems.append(f"--device: {err}")
        return problems

    def autocast_dtype(self, device_type: str) -> Any:
        """The dtype training autocasts to on `device_type` (``"cuda"``, ``"cpu"``), or None for fp32."""
        import torch

        from ..precision import resolve_precision

        precision = self.precision
        if precision is None and self.amp is not None:  # a run started before --precision
            precision = ("fp16" if device_type == "cuda" else "bf16") if self.amp else "fp32"
        precision = resolve_precision(precision, device_type)
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]

    def validate(self, world_size: int | None = None) -> None:
        """Raise :class:`UsageError` (one line, every problem) for option values that cannot work.

        :func:`finetune` calls it first, before any model loads, data is read or anything is written.
        `world_size` defaults to torchrun's ``WORLD_SIZE``.
        """
        if world_size is None:
            world_size = distributed_world_size()
        problems = self.option_problems(world_size)
        if problems:
            raise UsageError("; ".join(problems))

    def check(self) -> list[str]:
        """Option values that cannot work and missing data sources, as messages (empty when all is well)."""
        problems = self.option_problems(world_size=1)
        sources = [s for s in (self.data, self.dataset) if s]
        if len(sources) != 1:
            problems.append("give the training clips with --data CSV or with --dataset NAME --root DIR")
        if self.dataset and not self.root:
            problems.append(f"--dataset {self.dataset} needs --root DIR")
        if self.val and self.val_fraction:
            problems.append("--val and --val-fraction exclude each other")
        return problems


#: Options whose None means "the default".
_OPTIONAL = frozenset({"shots", "frames", "min_lr", "workers", "threads"})


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the run folder, one metrics record per epoch and the best one."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    best: dict[str, Any] | None
    class_names: list[str]

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last"
