"""Fine-tune X-CLIP on labelled clips with the official recipe: ``xclip finetune`` and :func:`finetune`.

The recipe is the official X-CLIP one (``utils/optimizer.py``, ``main.py``, ``datasets/blending.py``):

* text side frozen (everything whose name lacks ``visual.``, ``mit`` and ``prompts``, so ``logit_scale``
  too); the class-name text features are computed once, under ``no_grad``;
* AdamW (0.9, 0.98), eps 1e-8, weight decay 0.001 except 1-D parameters, biases and positional
  embeddings; learning rate x10 for ``message_``, ``mit`` and ``prompts`` parameters;
* linear warmup from 0, then cosine to an absolute floor ``lr / 100`` shared by every group, evaluated per
  optimizer step (the first step therefore runs at lr 0, as timm's scheduler does);
* soft-target cross-entropy on smoothed one-hot targets (0.1) blended by mixup (alpha 0.8) or cutmix
  (alpha 1.0, one box for all frames of a clip), chosen with probability 0.5 per batch;
* TSN training sampling (a random frame per segment) and the official augmentation
  (:func:`xclip_cli.video.train_transform`); validation with the same clip loader as ``xclip tag``.

Determinism: every random draw derives from ``(seed, epoch, clip index)`` (decoding, augmentation) or
``(seed, micro-batch number, rank)`` (mixup, drop-path), and the clip order of an epoch from
``(seed, epoch)``. Results therefore do not depend on the number of loader workers, a run resumed from a
mid-epoch checkpoint ends exactly where the uninterrupted run ends, and ``torchrun`` with N processes sees
the same global batches as one process.

Run folder::

    config.json           resolved configuration (recipe, data, model, derived sizes, versions)
    labels.csv            class names (id,name), row = class index: ``xclip tag --labels`` reads it
    train.csv, val.csv    the clip lists actually used (after --val-fraction and --shots)
    metrics.jsonl         one line per epoch: loss, lr, val top-1/top-5 (percent), throughput
    curves.png            loss and accuracy per epoch
    last/, best/          ``save_model`` folders (``xclip tag --model RUN/best``) + ``state.pt``
    .lock                 held (``fcntl``) while a run writes the folder; a second run on it is refused

Safety: options are checked before anything loads (:meth:`FinetuneConfig.validate`, UsageError); the
folder is locked for the whole run (rank 0 under torchrun); every file is replaced atomically (a
temporary file or folder, then a rename) with the user's umask, so a kill, a full disk or Ctrl-C never
leaves a half-written checkpoint or metrics line; an interrupted validation is never recorded: ``last/``
then holds the end of that epoch's training and ``--resume`` validates it again.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, files
from .errors import EXIT_SOME_FAILED, EXIT_USAGE, UsageError, XClipError

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "FinetuneConfig",
    "FinetuneResult",
    "LabeledClip",
    "RunFolderError",
    "SaveError",
    "TrainData",
    "TrainingInterrupted",
    "finetune",
    "lr_at",
    "param_groups",
    "prepare_data",
    "read_clip_list",
    "stored_data",
]

STATE_FILE = "state.pt"
STATE_FORMAT = "xclip-cli-train-state"
RUN_CONFIG = "config.json"
PLOT_EVERY_S = 60.0
#: Options that only change how a run executes, never its results: they may differ on --resume.
RUNTIME_OPTIONS = ("workers", "device", "threads")
#: The most frames per clip --frames takes (the paper trains 8, 16 and 32).
MAX_FRAMES = 64
LOCK_NAME = ".lock"


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
        if not isinstance(self.freeze, (list, tuple)) or not all(isinstance(f, str) and f for f in self.freeze):
            problems.append(f"--freeze takes non-empty parts of parameter names, got {self.freeze!r}")
        if self.amp is not None and not isinstance(self.amp, bool):
            problems.append(f"--amp must be true, false or unset, got {self.amp!r}")
        if world_size and world_size > 1 and isinstance(self.batch_size, int) and self.batch_size % world_size:
            problems.append(f"--batch-size {self.batch_size} is not divisible by the {world_size} processes")
        if self.device is not None:
            from .model import check_device

            try:
                check_device(self.device)
            except UsageError as err:
                problems.append(f"--device: {err}")
        return problems

    def validate(self, world_size: int | None = None) -> None:
        """Raise :class:`UsageError` (one line, every problem) for option values that cannot work.

        :func:`finetune` calls it first, before any model loads, data is read or anything is written.
        `world_size` defaults to torchrun's ``WORLD_SIZE``.
        """
        if world_size is None:
            world_size = _world_size()
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


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the run folder, one metrics record per epoch and the best one."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    best: dict[str, Any] | None
    classes: list[str]

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last"


# -- data ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabeledClip:
    """One training or validation clip: an absolute path, its class name and an optional time range."""

    path: str
    label: str
    start: float | None = None
    end: float | None = None
    where: str = ""  # "clips.csv:12": where it was listed, for messages


@dataclass
class TrainData:
    """The clips of a run: class names (row = class index), training and validation clips."""

    classes: list[str]
    train: list[LabeledClip]
    val: list[LabeledClip]
    warnings: list[str] = field(default_factory=list)

    def index(self, clip: LabeledClip) -> int:
        return self._index[clip.label]

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.classes)}


def _optional_seconds(text: str, column: str, where: str, problems: list[str]) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{where}: {column} must be a number of seconds, got {text!r}")
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(f"{where}: {column} must be a non-negative number of seconds, got {text!r}")
        return None
    return value


def _file_problem(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot access file ({err.strerror})"
    if not path.is_file():
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    if not os.access(path, os.R_OK):
        return "cannot read file (permission denied)"
    return None


def read_clip_list(path: str | os.PathLike[str]) -> tuple[list[LabeledClip], list[str]]:
    """Read a ``path,label[,start,end]`` CSV (header required); paths are relative to the CSV's folder.

    Returns the clips and every problem found (``file:line: what``): unreadable file, missing columns,
    empty paths or labels, missing files, bad time ranges. Nothing is raised for row problems, so that
    all of them can be reported at once.
    """
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return [], [f"{file}: clip list not found"]
    except IsADirectoryError:
        return [], [f"{file}: is a folder, not a CSV clip list"]
    except OSError as err:
        return [], [f"{file}: cannot read ({err.strerror or err})"]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return [], [f"{file}:{line}: not UTF-8 text"]
    reader = csv.reader(io.StringIO(text, newline=""))
    clips: list[LabeledClip] = []
    problems: list[str] = []
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), None)
        if header is None:
            return [], [f"{file}: empty clip list"]
        columns = [c.strip().lower() for c in header]
        if "path" not in columns or "label" not in columns:
            return [], [f"{file}:{reader.line_num}: expected a header with path,label[,start,end]; got {','.join(header)}"]
        col = {name: columns.index(name) for name in ("path", "label", "start", "end") if name in columns}
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            where = f"{file}:{reader.line_num}"
            cell = {name: (row[i].strip() if i < len(row) else "") for name, i in col.items()}
            if not cell["path"]:
                problems.append(f"{where}: empty path")
                continue
            if not cell["label"]:
                problems.append(f"{where}: empty label")
                continue
            start = _optional_seconds(cell.get("start", ""), "start", where, problems)
            end = _optional_seconds(cell.get("end", ""), "end", where, problems)
            if start is not None and end is not None and end <= start:
                problems.append(f"{where}: end ({end:g} s) must be after start ({start:g} s)")
                continue
            video = Path(cell["path"]).expanduser()
            video = video if video.is_absolute() else file.parent / video
            why = _file_problem(video)
            if why:
                problems.append(f"{where}: {why}: {cell['path']}")
                continue
            clips.append(LabeledClip(os.path.abspath(video), cell["label"], start, end, where))
    except csv.Error as err:
        problems.append(f"{file}:{reader.line_num}: malformed CSV ({err})")
    if not clips and not problems:
        problems.append(f"{file}: no clips listed")
    return clips, problems


def _dataset_clips(config: FinetuneConfig) -> tuple[list[str], list[LabeledClip], list[LabeledClip], list[str]]:
    """Classes, train and test clips of an official HMDB-51 / UCF-101 split (``xclip_cli.data.datasets``)."""
    from .data import datasets

    if config.dataset not in ("hmdb51", "ucf101"):
        return [], [], [], [f"--dataset must be hmdb51 or ucf101 for fine-tuning, got {config.dataset!r}"]
    load = datasets.hmdb51 if config.dataset == "hmdb51" else datasets.ucf101
    problems: list[str] = []
    out = []
    classes: list[str] = []
    for subset in ("train", "test"):
        try:
            split = load(config.root, config.split, subset=subset)
        except (datasets.DatasetError, OSError) as err:
            return [], [], [], [str(err)]
        classes = split.class_names
        where = f"{config.dataset} split {config.split} ({subset})"
        problems += [f"{where}: file not found: {Path(split.root) / m}" for m in split.missing[:50]]
        if len(split.missing) > 50:
            problems.append(f"{where}: ... and {len(split.missing) - 50} more missing files")
        out.append([
            LabeledClip(os.path.abspath(split.path_of(r)), split.class_names[r.label], r.start, r.end, f"{where}: {r.path}")
            for r in split.records
        ])
    return classes, out[0], out[1], problems


def _stratified_split(
    clips: list[LabeledClip], fraction: float, seed: int
) -> tuple[list[LabeledClip], list[LabeledClip]]:
    """Per class, about ``fraction`` of the clips (at least one, never all) go to validation."""
    rng = np.random.default_rng([seed, 0x7A1])
    by_class: dict[str, list[LabeledClip]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip)
    train, val = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda c: (c.path, c.start or 0.0, c.end or 0.0))
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        chosen = set(rng.permutation(len(members))[:n_val].tolist())
        for i, clip in enumerate(members):
            (val if i in chosen else train).append(clip)
    return train, val


def _few_shot(clips: list[LabeledClip], classes: list[str], shots: int, seed: int) -> tuple[list[LabeledClip], list[str]]:
    """K clips per class, drawn with `seed` (the paper's K-shot protocol), in class order."""
    rng = np.random.default_rng([seed, 0x5E07])
    by_class: dict[str, list[LabeledClip]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip)
    chosen, problems = [], []
    for label in classes:
        members = sorted(by_class.get(label, []), key=lambda c: (c.path, c.start or 0.0, c.end or 0.0))
        if len(members) < shots:
            problems.append(f"class {label!r} has {len(members)} training clip(s), fewer than --shots {shots}")
            continue
        picks = sorted(rng.choice(len(members), size=shots, replace=False).tolist())
        chosen += [members[i] for i in picks]
    return chosen, problems


def prepare_data(config: FinetuneConfig, world_size: int = 1) -> TrainData:
    """Read, check, split and sample the clips of a run. Raises :class:`DataError` listing every problem.

    Classes are the ``--labels`` file's names in file order when given (then every class needs clips),
    the dataset's official list with ``--dataset``, else the training labels sorted.
    """
    problems = config.check()
    if problems:
        raise DataError(problems)
    warnings: list[str] = []
    if config.dataset:
        classes, train, val, problems = _dataset_clips(config)
        if config.val_fraction:
            val = []  # split off the training list instead of the official test list
    else:
        train, problems = read_clip_list(config.data)
        val: list[LabeledClip] = []
        if config.val:
            val, more = read_clip_list(config.val)
            problems += more
        classes = sorted({c.label for c in train})
    if config.labels:
        from .data.labels import LabelsError, read_labels

        try:
            classes = read_labels(config.labels)
        except LabelsError as err:
            problems.append(str(err))
        duplicates = [name for name, n in Counter(classes).items() if n > 1]
        problems += [f"{config.labels}: duplicate class {name!r}" for name in duplicates]
    known = set(classes)
    for clip in train + val:
        if clip.label not in known:
            source = f"the --labels file {config.labels}" if config.labels else "the training clips"
            problems.append(f"{clip.where}: label {clip.label!r} is not a class of {source}")
    if problems:
        raise DataError(problems)

    if config.val_fraction and not val:
        train, val = _stratified_split(train, config.val_fraction, config.seed)
    if config.shots:
        train, problems = _few_shot(train, classes, config.shots, config.seed)
        if problems:
            raise DataError(problems)
    counts = Counter(c.label for c in train)
    problems += [f"class {name!r} has no training clips" for name in classes if not counts[name]]
    if len(classes) < 2:
        problems.append(f"fine-tuning needs at least 2 classes, found {len(classes)}")
    if config.batch_size % world_size:
        problems.append(f"--batch-size {config.batch_size} is not divisible by the {world_size} processes")
    per_step = config.batch_size * config.accum_steps
    if train and len(train) < per_step:
        problems.append(
            f"{len(train)} training clips are fewer than one optimizer step needs (--batch-size "
            f"{config.batch_size} x --accum-steps {config.accum_steps}); lower them"
        )
    if problems:
        raise DataError(problems)
    if not val:
        warnings.append("no validation clips (--val or --val-fraction): best/ is the last epoch's model")
    return TrainData(classes, train, val, warnings)


def stored_data(run_dir: Path) -> TrainData:
    """The classes and clip lists a run folder recorded when it started (``labels.csv``, ``train.csv``,
    ``val.csv``): what ``--resume`` trains on."""
    from .data.labels import LabelsError, read_labels

    try:
        classes = read_labels(run_dir / "labels.csv")
    except LabelsError as err:
        raise DataError([str(err)]) from None
    train, problems = read_clip_list(run_dir / "train.csv")
    val, more = read_clip_list(run_dir / "val.csv")
    problems += [p for p in more if not p.endswith("no clips listed")]
    if problems:
        raise DataError(problems)
    return TrainData(classes, train, val)


def write_clip_list(path: Path, clips: Sequence[LabeledClip]) -> None:
    """The clips as a ``path,label,start,end`` CSV (absolute paths): a valid ``--data``/``--val`` list."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(["path", "label", "start", "end"])
    for c in clips:
        out.writerow([c.path, c.label, "" if c.start is None else repr(c.start), "" if c.end is None else repr(c.end)])
    _write_text(path, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    """Replace `path` all or nothing, with the user's umask (OSError leaves it as it was)."""
    files.atomic_write(path, lambda fh: fh.write(text))


# -- randomness ---------------------------------------------------------------------------------------------
def _seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])


def _torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, np.uint64)[0] >> 1)


# -- the training set ---------------------------------------------------------------------------------------
class TrainClips(torch.utils.data.Dataset):
    """Training views, one per ``(epoch, index)``: TSN training sampling + the official augmentation.

    All randomness comes from ``(seed, epoch, index)``, so any worker produces the same view. A clip
    that cannot be decoded is replaced by the next one (with a warning), as the official loader does.
    """

    def __init__(
        self, clips: Sequence[LabeledClip], labels: Sequence[int], *, frames: int, image_size: int,
        mean: Sequence[float], std: Sequence[float], seed: int, augment: bool = True,
    ) -> None:
        self.clips, self.labels = list(clips), list(labels)
        self.frames, self.image_size = frames, image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed, self.augment = seed, augment

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from .video import VideoError

        epoch, index = key
        errors = []
        for attempt in range(min(len(self.clips), 10)):
            i = (index + attempt) % len(self.clips)
            try:
                return self.load(epoch, i), self.labels[i]
            except (VideoError, ValueError, RuntimeError) as err:
                errors.append(str(err))
                log.warning("skipping unreadable training clip %s", err)
        raise RuntimeError(f"10 consecutive training clips could not be read; last: {errors[-1]}")

    def load(self, epoch: int, index: int) -> torch.Tensor:
        """Float32 ``[T, 3, S, S]`` view of clip `index` for `epoch`."""
        from .video import (
            probe,
            range_to_frames,
            read_frames,
            segment_indices,
            short_side_for,
            test_views,
            train_transform,
        )

        clip = self.clips[index]
        seq = _seed_sequence(self.seed, epoch, index)
        rng = np.random.default_rng(seq)
        info = probe(clip.path)
        first, count = range_to_frames(info, clip.start, clip.end)
        indices = segment_indices(count, self.frames, train=True, rng=rng) + first
        frames = read_frames(clip.path, indices, short_side=short_side_for(self.image_size, 1), info=info)
        if not self.augment:
            return test_views(frames, image_size=self.image_size, mean=self.mean, std=self.std)[0]
        generator = torch.Generator().manual_seed(_torch_seed(seq))
        return train_transform(frames, image_size=self.image_size, generator=generator, mean=self.mean, std=self.std)


class EpochBatches:
    """This rank's part of each global batch, as lists of ``(epoch, index)``.

    The clip order of an epoch is a permutation drawn from ``(seed, epoch)``; global batch ``b`` is
    positions ``[b*B, (b+1)*B)`` of it and rank ``r`` takes its slice ``r`` of ``B / world``. The last
    incomplete batch is dropped (official ``drop_last``). ``set_epoch(epoch, skip)`` starts an epoch
    ``skip`` batches in (a resumed run). Used as a DataLoader ``batch_sampler``: it runs in the main
    process, so persistent workers see each new epoch.
    """

    def __init__(self, size: int, global_batch: int, batches: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.global_batch, self.batches = size, global_batch, batches
        self.seed, self.rank, self.world = seed, rank, world
        self.per_rank = global_batch // world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(_torch_seed(_seed_sequence(self.seed, 0xE90C, epoch)))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        order = self.order(self.epoch)
        for b in range(self.skip, self.batches):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            mine = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            yield [(self.epoch, i) for i in mine]

    def __len__(self) -> int:
        return self.batches - self.skip


# -- recipe pieces ------------------------------------------------------------------------------------------
def is_trainable(name: str) -> bool:
    """Official ``fix_text``: only the visual side, MIT and prompt modules train (logit_scale is frozen)."""
    return "visual." in name or "mit" in name or "prompts" in name


_NEW_MODULES = ("message_", "mit", "prompts")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, new_lr_mult: float = 10.0
) -> list[dict[str, Any]]:
    """The official AdamW groups: {CLIP, message_, mit, prompts} x {decay, no decay}, non-empty only.

    No decay for 1-D parameters, names ending ``.bias`` and names containing ``positional_embedding``.
    Each group carries ``name`` and ``base_lr`` (the peak of its schedule).
    """
    groups = []
    for key, group_lr in (("clip", lr), *((k, lr * new_lr_mult) for k in _NEW_MODULES)):
        buckets: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if key == "clip" and any(k in name for k in _NEW_MODULES):
                continue
            if key != "clip" and key not in name:
                continue
            no_decay = p.ndim == 1 or name.endswith(".bias") or "positional_embedding" in name
            buckets["no_decay" if no_decay else "decay"].append(p)
        for kind, params in buckets.items():
            if params:
                groups.append({
                    "params": params, "lr": group_lr, "base_lr": group_lr, "name": f"{key}/{kind}",
                    "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                })
    return groups


def lr_at(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """timm ``CosineLRScheduler(t_in_epochs=False, warmup_lr_init=0)`` as the official code configures it.

    Linear warmup from 0 over ``warmup_steps``; afterwards ``min_lr + (base - min_lr) * (1 + cos(pi *
    step / total)) / 2`` (the cosine counts from step 0, not from the end of warmup, as timm does).
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    t = min(step, total_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t / max(1, total_steps)))


def soft_targets(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """Smoothed one-hot targets: off = smoothing / K, on = 1 - smoothing + off (official blending)."""
    off = smoothing / classes
    out = torch.full((labels.shape[0], classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def blend(
    frames: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator, *, mixup: float, cutmix: float,
    switch_prob: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``CutmixMixupBlending`` of a batch ``[B, T, 3, H, W]``: cutmix (one box shared by all
    frames) with probability `switch_prob` when both are on, else mixup; alphas 0 turn either off."""
    if mixup <= 0 and cutmix <= 0:
        return frames, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    perm = torch.from_numpy(rng.permutation(frames.shape[0])).to(frames.device)
    if use_cutmix:
        lam = float(rng.beta(cutmix, cutmix))
        h, w = frames.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_w, cut_h = int(w * ratio), int(h * ratio)
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
        y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
        frames = frames.clone()
        frames[..., y1:y2, x1:x2] = frames[perm][..., y1:y2, x1:x2]
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
    else:
        lam = float(rng.beta(mixup, mixup))
        frames = lam * frames + (1.0 - lam) * frames[perm]
    return frames, lam * targets + (1.0 - lam) * targets[perm]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm ``SoftTargetCrossEntropy``: mean over the batch of ``-sum(target * log_softmax)``."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Classifier(nn.Module):
    """The model with its frozen class-text features, ``frames -> logits`` (what DDP wraps)."""

    def __init__(self, model: nn.Module, text: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text", text, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.encode_video(frames), self.text)


# -- progress -----------------------------------------------------------------------------------------------
class Progress(Protocol):
    """What the loop reports (the CLI draws rich progress bars from it); every method may do nothing."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, epoch: int, step: int, loss: float, lr: float, clips_per_s: float) -> None: ...
    def validating(self, epoch: int, clips: int) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, info: dict[str, Any]) -> None:
        pass

    def step(self, epoch: int, step: int, loss: float, lr: float, clips_per_s: float) -> None:
        pass

    def validating(self, epoch: int, clips: int) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


# -- distributed --------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _init_distributed(device: str) -> tuple[_Dist, torch.device]:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) -> a process group (nccl on CUDA, else gloo)."""
    from .model import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if world <= 1:
        return _Dist(), target
    if target.type == "cuda":
        target = torch.device("cuda", local if target.index is None else target.index)
        torch.cuda.set_device(target)
    dist = _Dist(rank, world, local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if target.type == "cuda" else "gloo")
        dist.initialized_here = True
    return dist, target


# -- checkpoints --------------------------------------------------------------------------------------------
def _replace_dir(tmp: Path, target: Path) -> None:
    """Put the folder `tmp` at `target` (a rename for the new one; the old one is removed afterwards)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def _recover_dir(target: Path) -> None:
    """A kill between the two renames of :func:`_replace_dir` leaves only ``.NAME.old``: take it back."""
    old = target.with_name(f".{target.name}.old")
    if not target.exists() and old.exists():
        os.replace(old, target)


def _folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask."""
    return 0o777 & ~files.umask()


def save_checkpoint(run_dir: Path, name: str, model: nn.Module, state: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``run_dir/name`` (model folder + state.pt) atomically: a temporary folder, then a rename.

    Files and folder get the user's umask. On any error (disk full...) the temporary folder is removed
    and ``run_dir/name`` is left as it was.
    """
    from .model import save_model

    target = run_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=run_dir))
    try:
        save_model(model, tmp, metadata)
        torch.save(state, tmp / STATE_FILE)
        for path in tmp.iterdir():  # on disk before the rename makes them the checkpoint
            os.chmod(path, files.default_mode())  # safetensors writes 0600, mkdtemp makes 0700
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, _folder_mode())
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.fsync_folder(run_dir)
    return target


@contextlib.contextmanager
def _writing(run_dir: Path, what: str) -> Iterator[None]:
    """An OSError while writing `what` (disk full, I/O error) becomes one :class:`SaveError` line."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise SaveError(
            f"cannot write {what} in run folder {run_dir}: {reason}; what was saved before is intact"
            + (" (--resume continues from last/)" if (run_dir / "last" / STATE_FILE).is_file() else "")
        ) from err


def load_state(folder: Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint folder (tensors, numbers, strings and containers only)."""
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RunFolderError(f"{folder / STATE_FILE}: not an xclip-cli training state")
    return state


# -- the run folder -----------------------------------------------------------------------------------------
def _entries(folder: Path) -> list[Path]:
    """What `folder` holds besides our lock file."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME]


def _check_output(output: Path) -> None:
    """Refuse, in one line, an --output that is a file, lies under a file or cannot be written."""
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"--output {output} is a file, not a run folder")
    for ancestor in (output, *output.parents):
        if os.path.lexists(ancestor):
            break
    if not ancestor.is_dir():
        raise RunFolderError(f"--output {output}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunFolderError(f"--output {output}: cannot write in {ancestor} (permission denied)")


class _RunLock:
    """The run folder's lock (``files.FileLock`` on ``RUN/.lock``), held from before the first write to the
    end of the run (the kernel drops it when the process dies, even by SIGKILL; forked workers do not
    inherit it); folders it had to create are removed again if the run wrote nothing into them."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.created: list[Path] = []
        self.lock: files.FileLock | None = None

    def __enter__(self) -> _RunLock:
        _check_output(self.output)
        missing = [p for p in (self.output, *self.output.parents) if not os.path.lexists(p)]
        try:
            for folder in reversed(missing):
                folder.mkdir()
                self.created.append(folder)
            self.lock = files.FileLock(self.output, what="run folder").acquire()
        except OSError as err:
            self._remove_created()
            raise RunFolderError(f"--output {self.output}: cannot create or lock the run folder "
                                 f"({err.strerror or err})") from None
        except BaseException:
            self._remove_created()
            raise
        return self

    def _remove_created(self) -> None:
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing of a run is ever removed here

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()
        self._remove_created()


#: What a killed run may leave half-written: checkpoint folders and files in the making (ours only).
_TEMPORARY = re.compile(
    r"^\.(?:(?:last|best)(?:\..+)?\.tmp"
    r"|(?:metrics\.jsonl|config\.json|labels\.csv|train\.csv|val\.csv)\..+\.tmp"
    r"|curves\.png\.tmp\d+\.png)$"
)


def _remove_temporaries(output: Path) -> None:
    """Remove what a run killed while writing left behind (the lock is held: nobody else writes here)."""
    if not output.is_dir():
        return
    for entry in output.iterdir():
        if _TEMPORARY.match(entry.name):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def _is_run_folder(path: Path) -> bool:
    try:
        doc = json.loads((path / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == "xclip-cli-finetune"


def open_run_folder(output: Path, config: FinetuneConfig | None, *, resume: bool, overwrite: bool) -> tuple[FinetuneConfig, bool]:
    """Decide what to do with `output`: (the config to run, whether a run is being resumed).

    A run folder is never replaced silently: an existing, non-empty folder needs ``resume`` (continue
    it, with its own stored configuration) or ``overwrite`` (only for a folder that holds a run).
    Checks only; nothing is written.
    """
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"--output {output} is a file, not a run folder")
    exists = output.exists() and bool(_entries(output))
    if resume and _is_run_folder(output):
        stored = FinetuneConfig.from_dict(json.loads((output / RUN_CONFIG).read_text())["config"])
        if config is not None:
            ignored = [
                f.name for f in fields(FinetuneConfig)
                if f.name not in RUNTIME_OPTIONS and getattr(config, f.name) != getattr(stored, f.name)
                and getattr(config, f.name) != f.default and f.name not in ("freeze",)
            ]
            if ignored:
                log.warning("--resume continues with the run's stored configuration; ignoring %s", ", ".join(ignored))
            for name in RUNTIME_OPTIONS:
                if getattr(config, name) is not None:
                    setattr(stored, name, getattr(config, name))
        return stored, True
    if config is None or (resume and not (config.data or config.dataset)):
        raise RunFolderError(f"--resume: {output} holds no run to resume (no {RUN_CONFIG}); give the data to start one")
    if exists and not resume:
        if not overwrite:
            raise RunFolderError(
                f"run folder {output} already exists: --resume to continue it, --overwrite to replace it, "
                "or choose another --output"
            )
        if not _is_run_folder(output):
            raise RunFolderError(f"--overwrite: {output} is not an xclip finetune run folder; refusing to delete it")
    elif exists and resume:
        raise RunFolderError(f"--resume: {output} is not an xclip finetune run folder")
    return config, False


def _write_run_files(output: Path, config: FinetuneConfig, data: TrainData, derived: dict[str, Any], overwrite: bool) -> None:
    """The files of a new run; config.json last, so that a folder is a run (resumable) only once all are
    there. On an error the files written here are removed again."""
    if overwrite and output.exists():
        for entry in _entries(output):  # the lock file stays: we hold it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    output.mkdir(parents=True, exist_ok=True)
    written = [output / name for name in ("labels.csv", "train.csv", "val.csv", RUN_CONFIG)]
    try:
        _write_new_run_files(output, config, data, derived)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def _write_new_run_files(output: Path, config: FinetuneConfig, data: TrainData, derived: dict[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "name"])
    writer.writerows(enumerate(data.classes))
    _write_text(output / "labels.csv", buffer.getvalue())
    write_clip_list(output / "train.csv", data.train)
    write_clip_list(output / "val.csv", data.val)
    doc = {
        "format": "xclip-cli-finetune",
        "format_version": 1,
        "config": asdict(config),
        "derived": derived,
        "versions": {"xclip_cli": __version__, "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_text(output / RUN_CONFIG, json.dumps(doc, indent=2) + "\n")


def _write_metrics(output: Path, records: Sequence[dict[str, Any]]) -> None:
    _write_text(output / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def plot_curves(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """``curves.png``: training loss, and validation top-1/top-5, per epoch (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r["loss"] for r in records], marker="o", ms=3)
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = [r for r in records if r.get("val_top1") is not None]
    if val:
        right.plot([r["epoch"] for r in val], [r["val_top1"] for r in val], marker="o", ms=3, label="top-1")
        right.plot([r["epoch"] for r in val], [r["val_top5"] for r in val], marker="s", ms=3, label="top-5")
        right.legend()
    right.set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy", ylim=(0, 101))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _try_plot(path: Path, records: Sequence[dict[str, Any]]) -> None:
    try:
        plot_curves(path, records)
    except Exception as err:  # a plot must never end a training run
        log.warning("cannot draw %s: %s", path, err)


# -- validation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    model: nn.Module, data: TrainData, clips: Sequence[LabeledClip], *, workers: int,
    stop: Callable[[], bool] | None = None,
) -> tuple[float, float, int]:
    """(top-1 hits, top-5 hits, failures) of `clips` with ``xclip tag``'s own pipeline (1x1 views).

    Raises KeyboardInterrupt as soon as ``stop()`` is true (checked after each clip): the counts of a
    validation that did not run to the end are never returned.
    """
    from .data.labels import Vocabulary
    from .tagging import TagRun
    from .video.clips import ClipSpec, VideoTask

    if not clips:
        return 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    spec = ClipSpec(frames=model.frames, image_size=model.image_size, mean=model.mean, std=model.std)
    # Decoding processes cost more to start than a few dozen clips take to decode.
    workers = workers if len(clips) > 16 * max(1, workers) else 0
    run = TagRun(model, Vocabulary(list(data.classes)), spec, "finetune", batch_size=8, workers=workers, top_k=5)
    tasks = [VideoTask(c.path, c.start, c.end) for c in clips]
    top1 = top5 = failed = 0
    try:
        with contextlib.closing(run.run(tasks)) as results:
            for clip, rows in zip(clips, results):
                if stop is not None and stop():
                    raise KeyboardInterrupt
                row = rows[0]
                if row["error"]:
                    failed += 1
                    log.warning("validation clip %s: %s", clip.path, row["error"])
                    continue
                top1 += row["label"] == clip.label
                top5 += clip.label in row["labels"]
        if stop is not None and stop():  # the last clip's decoder may have seen the signal
            raise KeyboardInterrupt
    finally:
        model.train(was_training)
    return float(top1), float(top5), failed


# -- the loop -----------------------------------------------------------------------------------------------
class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between micro-batches; a second Ctrl-C aborts."""

    def __init__(self, enabled: bool) -> None:
        self.set = False
        self.enabled = enabled
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        log.warning("interrupted: saving last/ at the next step boundary (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def finetune(
    output: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    handle_signals: bool = False,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune X-CLIP and write a run folder (see the module docstring); returns its metrics.

    ``finetune("runs/ucf-8shot", data="clips.csv", val="val.csv", shots=8, epochs=30)``: keyword
    options are :class:`FinetuneConfig` fields (or pass `config`). ``resume`` continues ``last/`` of an
    existing run exactly where it stopped (with the run's stored configuration). Under ``torchrun`` each
    process calls this; data is sharded, metrics are reduced and rank 0 writes. ``handle_signals``
    (main thread only): SIGINT/SIGTERM save ``last/`` at the next optimizer step and raise
    :class:`TrainingInterrupted`.

    The run folder is locked (``RUN/.lock``, rank 0) from before the first write to the end; another
    run on it gets ``FileLockedError``. Every file in it is replaced atomically with the user's umask.

    Raises ``UsageError`` (option values, before anything loads), :class:`DataError` (every data problem,
    before any training), :class:`RunFolderError`, ``FileLockedError``, ``WeightsError`` (model),
    :class:`SaveError` (disk full...: the checkpoints saved before are intact), :class:`TrainingInterrupted`
    after saving ``last/`` on Ctrl-C/SIGTERM.
    """
    if config is None:
        config = FinetuneConfig(**options) if (options or not resume) else None
    elif options:
        config = FinetuneConfig.from_dict({**asdict(config), **options})
    if config is not None:
        config.validate()
    run_dir = Path(output).expanduser()
    main = os.environ.get("RANK", "0") == "0"
    with _RunLock(run_dir) if main else contextlib.nullcontext():
        if main:
            with _writing(run_dir, "last/"):
                _recover_dir(run_dir / "last")
        config, resuming = open_run_folder(run_dir, config, resume=resume, overwrite=overwrite)
        if main:
            _remove_temporaries(run_dir)
        config.validate()  # a resumed run: its stored options with the runtime ones given now
        if config.workers is None:
            config.workers = min(2, os.cpu_count() or 1)
        threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            dist, device = _init_distributed(config.device or "auto")
            try:
                return _run(run_dir, config, dist, device, resuming=resuming, overwrite=overwrite,
                            progress=progress if (progress is not None and dist.main) else NoProgress(),
                            handle_signals=handle_signals)
            finally:
                dist.close()
        finally:
            torch.set_num_threads(threads)


def _run(
    run_dir: Path, config: FinetuneConfig, dist: _Dist, device: torch.device, *, resuming: bool, overwrite: bool,
    progress: Progress, handle_signals: bool,
) -> FinetuneResult:
    from .data.labels import Vocabulary
    from .model import load_model
    from .tagging import encode_vocabulary

    # A resumed run trains on the lists it wrote when it started, whatever the CSVs say now.
    data = stored_data(run_dir) if resuming else prepare_data(config, dist.world)
    config.validate(dist.world)  # --batch-size divisible by the processes (checked before, from WORLD_SIZE)
    for warning in data.warnings:
        log.warning("%s", warning)
    state = None
    if resuming and (run_dir / "last" / STATE_FILE).is_file():
        state = load_state(run_dir / "last")
        model = load_model(run_dir / "last", device=device)
    else:
        model = load_model(config.model, device=device, frames=config.frames)
    model.float().train()
    model.set_grad_checkpointing(config.grad_checkpointing)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name) and not any(pattern in name for pattern in config.freeze))

    steps_per_epoch = len(data.train) // (config.batch_size * config.accum_steps)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)  # official: int(WARMUP_EPOCHS * iters)
    min_lr = config.lr / 100 if config.min_lr is None else config.min_lr
    if warmup_steps >= total_steps and dist.main:
        log.warning("the warmup (%g epochs) is as long as the run (%d epochs): the learning rate never reaches "
                    "--lr; lower --warmup-epochs", config.warmup_epochs, config.epochs)
    derived = {
        "classes": data.classes, "train_clips": len(data.train), "val_clips": len(data.val),
        "world_size": dist.world, "per_process_batch": config.batch_size // dist.world,
        "clips_per_step": config.batch_size * config.accum_steps, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "warmup_steps": warmup_steps, "min_lr": min_lr,
        "frames": model.frames, "image_size": model.image_size, "model_source": getattr(model, "source", config.model),
        "amp": bool(config.amp if config.amp is not None else device.type == "cuda"), "device": str(device),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    dist.barrier()  # every rank has checked the run folder before rank 0 writes to it
    if not resuming and dist.main:
        with _writing(run_dir, "the run files"):
            _write_run_files(run_dir, config, data, derived, overwrite)
    dist.barrier()

    model.eval()
    text = encode_vocabulary(model, Vocabulary(list(data.classes))).detach()
    model.train()
    net: nn.Module = Classifier(model, text).to(device)
    if dist.world > 1:
        # The buffers (class-text features, attention mask) are the same on every rank: never re-sent.
        ddp = nn.parallel.DistributedDataParallel
        quiet = "forward_sync_buffers" in inspect.signature(ddp).parameters  # torch >= 2.14 renamed it
        net = ddp(net, device_ids=[device.index] if device.type == "cuda" else None,
                  **({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}))
    groups = param_groups(model, config.lr, config.weight_decay, config.new_lr_mult)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    labels = [data.index(c) for c in data.train]
    dataset = TrainClips(data.train, labels, frames=model.frames, image_size=model.image_size, mean=model.mean,
                         std=model.std, seed=config.seed, augment=config.augment)
    batches = EpochBatches(len(data.train), config.batch_size, steps_per_epoch * config.accum_steps, config.seed,
                           dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=config.workers, persistent_workers=config.workers > 0,
        pin_memory=device.type == "cuda", prefetch_factor=4 if config.workers > 0 else None,
    )

    epoch, step, records, best = 0, 0, [], None
    stats = {"loss_sum": 0.0, "loss_count": 0.0, "clips": 0.0, "seconds": 0.0}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, step = int(state["epoch"]), int(state["step"])
        records = [dict(r) for r in state["metrics"]]
        best = dict(state["best"]) if state.get("best") else None
        stats = {k: float(v) for k, v in state["epoch_stats"].items()}
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resuming %s at epoch %d, step %d", run_dir, epoch + 1, step)
        if dist.main:
            with _writing(run_dir, "metrics.jsonl"):
                _write_metrics(run_dir, records)  # drop a line written after the state was saved

    def set_lr(global_step: int) -> float:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(global_step, g["base_lr"], min_lr, warmup_steps, total_steps)
        return optimizer.param_groups[0]["lr"]

    def snapshot(at_epoch: int, at_step: int) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "version": 1, "epoch": at_epoch, "step": at_step,
            "global_step": at_epoch * steps_per_epoch + at_step, "optimizer": optimizer.state_dict(),
            "scheduler": {"global_step": at_epoch * steps_per_epoch + at_step, "warmup_steps": warmup_steps,
                          "total_steps": total_steps, "min_lr": min_lr},
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "metrics": records, "best": best, "epoch_stats": dict(stats), "rng": _rng_state(),
            "seed": config.seed,
        }

    def metadata(at_epoch: int, at_step: int) -> dict[str, Any]:
        """What the checkpoint's xclip_config.json says about the run (epochs completed, step within)."""
        return {"labels": data.classes, "finetune": {
            "run": str(run_dir), "epoch": at_epoch, "step": at_step, "global_step": at_epoch * steps_per_epoch + at_step,
            "best_val_top1": best["val_top1"] if best else None}}

    def save_last(at_epoch: int, at_step: int) -> None:
        if dist.main:
            with _writing(run_dir, "last/"):
                save_checkpoint(run_dir, "last", model, snapshot(at_epoch, at_step), metadata(at_epoch, at_step))

    def interrupted() -> TrainingInterrupted:
        """Save last/ at `epoch`, `step` (the state after that many optimizer steps) and say so."""
        save_last(epoch, step)
        if dist.main and records:
            _try_plot(run_dir / "curves.png", records)
        dist.barrier()
        return TrainingInterrupted(run_dir / "last")

    progress.start({"epochs": config.epochs, "steps_per_epoch": steps_per_epoch, "epoch": epoch, "step": step,
                    "train_clips": len(data.train), "val_clips": len(data.val), "world_size": dist.world})
    plotted = time.monotonic()
    try:
        with _StopFlag(handle_signals) as stop:
            while epoch < config.epochs:
                batches.set_epoch(epoch, skip=step * config.accum_steps)
                micro = step * config.accum_steps
                tick = time.perf_counter()
                lr = set_lr(epoch * steps_per_epoch + step)
                optimizer.zero_grad(set_to_none=True)
                iterator = iter(loader) if step < steps_per_epoch else iter(())
                stopping = False
                while step < steps_per_epoch and not stopping:
                    try:
                        frames, target = next(iterator)
                    except Exception:
                        if stop.set:  # Ctrl-C also reached the loader workers
                            stopping = True
                            break
                        raise
                    seq = _seed_sequence(config.seed, 0xB1E7, epoch, micro, dist.rank)
                    torch.manual_seed(_torch_seed(seq))  # drop-path draws: fixed per micro-batch
                    frames = frames.to(device, non_blocking=True)
                    target = soft_targets(target.to(device), len(data.classes), config.label_smoothing)
                    frames, target = blend(frames, target, np.random.default_rng(seq), mixup=config.mixup,
                                           cutmix=config.cutmix, switch_prob=config.mixup_switch_prob)
                    micro += 1
                    last_micro = micro % config.accum_steps == 0
                    with net.no_sync() if dist.world > 1 and not last_micro else contextlib.nullcontext():
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                            logits = net(frames)
                        loss = soft_cross_entropy(logits, target)
                        scaler.scale(loss / config.accum_steps).backward()
                    stats["loss_sum"] += float(loss.detach()) * frames.shape[0]
                    stats["loss_count"] += frames.shape[0]
                    if not last_micro:
                        continue
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    now = time.perf_counter()
                    clips = config.batch_size * config.accum_steps
                    stats["clips"] += clips
                    stats["seconds"] += now - tick
                    progress.step(epoch, step, float(loss.detach()), lr, clips / max(now - tick, 1e-9))
                    tick = now
                    lr = set_lr(epoch * steps_per_epoch + step)
                    # Stop only between optimizer steps, and on every rank at the same one.
                    stopping = stop.set
                    if dist.world > 1:
                        stopping = dist.sum([float(stopping)], device)[0] > 0
                    if not stopping and config.save_every_steps and step % config.save_every_steps == 0 \
                            and step < steps_per_epoch:
                        save_last(epoch, step)
                if stopping:
                    # last/ = the state after `step` optimizer steps; a partial accumulation is dropped.
                    raise interrupted()

                # -- end of epoch: reduce, validate, record, checkpoint
                last_step = (epoch + 1) * steps_per_epoch - 1  # the epoch's last optimizer step
                loss_sum, loss_count = dist.sum([stats["loss_sum"], stats["loss_count"]], device)
                shard = data.val[dist.rank :: dist.world]
                progress.validating(epoch, len(data.val))
                tick = time.perf_counter()
                # Ctrl-C / SIGTERM during validation (it may have killed a decoder: a clip counted as
                # failed) must not be recorded: last/ = the end of this epoch's training, and --resume
                # runs this validation again, so it ends with the metrics of an uninterrupted run.
                try:
                    top1, top5, failed = validate(model, data, shard, workers=config.workers,
                                                  stop=lambda: stop.set)
                    halted = stop.set
                except KeyboardInterrupt:
                    top1, top5, failed, halted = 0.0, 0.0, 0, True
                top1, top5, failed, halted = dist.sum([top1, top5, failed, float(halted)], device)
                if halted:
                    raise interrupted()
                record = {
                    "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "loss": loss_sum / max(loss_count, 1),
                    "lr": lr_at(last_step, config.lr, min_lr, warmup_steps, total_steps),
                    "lr_new_modules": lr_at(last_step, config.lr * config.new_lr_mult, min_lr, warmup_steps, total_steps),
                    "val_top1": 100.0 * top1 / len(data.val) if data.val else None,
                    "val_top5": 100.0 * top5 / len(data.val) if data.val else None,
                    "val_clips": len(data.val), "val_failed": int(failed),
                    "clips_per_s": stats["clips"] / max(stats["seconds"], 1e-9),
                    "val_seconds": time.perf_counter() - tick,
                }
                improved = best is None or (record["val_top1"] or 0.0) > (best["val_top1"] or 0.0) or not data.val
                record["best"] = improved
                records.append(record)
                if improved:
                    best = {k: record[k] for k in ("epoch", "step", "loss", "val_top1", "val_top5")}
                epoch, step = epoch + 1, 0
                stats = {"loss_sum": 0.0, "loss_count": 0.0, "clips": 0.0, "seconds": 0.0}
                if dist.main:
                    # best/ first: a failure (disk full) before last/ is written leaves last/ at the
                    # previous epoch, whose --resume redoes this epoch and writes best/ again.
                    if improved:
                        with _writing(run_dir, "best/"):
                            save_checkpoint(run_dir, "best", model, snapshot(epoch, 0), metadata(epoch, 0))
                    with _writing(run_dir, "last/"):
                        save_checkpoint(run_dir, "last", model, snapshot(epoch, 0), metadata(epoch, 0))
                    with _writing(run_dir, "metrics.jsonl"):
                        _write_metrics(run_dir, records)
                    # Redrawn at most every PLOT_EVERY_S (a plot costs ~0.3 s) and after the last epoch.
                    if time.monotonic() - plotted > PLOT_EVERY_S or epoch == config.epochs:
                        _try_plot(run_dir / "curves.png", records)
                        plotted = time.monotonic()
                progress.epoch_end(record)
                dist.barrier()
    finally:
        progress.close()
    if dist.main:
        with _writing(run_dir, "metrics.jsonl"):
            _write_metrics(run_dir, records)
    return FinetuneResult(run_dir, records, best, list(data.classes))
