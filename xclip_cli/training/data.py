"""The clips of a run: read, check, split and sample them (:func:`prepare_data`); the training set
(:class:`TrainClips`, the one clip loader in training mode) and the batch order (:class:`EpochBatches`)."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import files
from ..data.records import VideoRecord, file_problem, format_clip_list
from ..data.records import read_clip_list as read_records
from ..video import VideoError
from ..video.clips import ClipSpec, load_clips
from .config import DataError, FinetuneConfig

log = logging.getLogger("xclip_cli.training")

#: The record of one training or validation clip (before the one VideoRecord type, its own class).
LabeledClip = VideoRecord


@dataclass
class TrainData:
    """The clips of a run: class names (row = class index), training and validation clips."""

    class_names: list[str]
    train: list[VideoRecord]
    val: list[VideoRecord]
    warnings: list[str] = field(default_factory=list)

    def index(self, clip: VideoRecord) -> int:
        return self._index[clip.label]

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.class_names)}


def read_clip_list(path: str | os.PathLike[str]) -> tuple[list[VideoRecord], list[str]]:
    """The clips of a ``path,label[,start,end]`` CSV (:func:`xclip_cli.data.records.read_clip_list`), with
    absolute paths (relative ones are relative to the CSV's folder), and every problem found (``file:line:
    what``), missing, empty or unreadable files included. Nothing is raised for row problems."""
    file = Path(path).expanduser()
    records, problems = read_records(file)
    clips: list[VideoRecord] = []
    for r in records:
        video = Path(r.path).expanduser()
        video = video if video.is_absolute() else file.parent / video
        why = file_problem(video)
        if why:
            problems.append(f"{r.where}: {why}: {r.path}")
            continue
        clips.append(VideoRecord(os.path.abspath(video), r.label, r.start, r.end, r.where))
    return clips, problems


def _dataset_clips(
    config: FinetuneConfig,
) -> tuple[list[str], list[VideoRecord], list[VideoRecord], list[str]]:
    """Classes, train and test clips of an official HMDB-51 / UCF-101 split (``xclip_cli.data.datasets``)."""
    from ..data import datasets

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
        out.append(split.videos(where))
    return classes, out[0], out[1], problems


def _stratified_split(
    clips: list[VideoRecord], fraction: float, seed: int
) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Per class, about ``fraction`` of the clips (at least one, never all) go to validation."""
    rng = np.random.default_rng([seed, 0x7A1])
    by_class: dict[str, list[VideoRecord]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip)
    train, val = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda c: (c.path, c.start or 0.0, c.end or 0.0))
        n_val = (
            0
            if len(members) < 2
            else min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        )
        chosen = set(rng.permutation(len(members))[:n_val].tolist())
        for i, clip in enumerate(members):
            (val if i in chosen else train).append(clip)
    return train, val


def _few_shot(
    clips: list[VideoRecord], classes: list[str], shots: int, seed: int
) -> tuple[list[VideoRecord], list[str]]:
    """K clips per class, drawn with `seed` (the paper's K-shot protocol), in class order."""
    rng = np.random.default_rng([seed, 0x5E07])
    by_class: dict[str, list[VideoRecord]] = {}
    for clip in clips:
        by_class.setdefault(clip.label, []).append(clip)
    chosen, problems = [], []
    for label in classes:
        members = sorted(by_class.get(label, []), key=lambda c: (c.path, c.start or 0.0, c.end or 0.0))
        if len(members) < shots:
            problems.append(
                f"class {label!r} has {len(members)} training clip(s), fewer than --shots {shots}"
            )
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
        val: list[VideoRecord] = []
        if config.val:
            val, more = read_clip_list(config.val)
            problems += more
        classes = sorted({c.label for c in train})
    if config.labels:
        from ..data.labels import LabelsError, read_labels

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
    from ..data.labels import LabelsError, read_labels

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


def write_clip_list(path: Path, clips: Sequence[VideoRecord]) -> None:
    """The clips as a ``path,label,start,end`` CSV (absolute paths): a valid ``--data``/``--val`` list."""
    text = format_clip_list(clips)
    files.atomic_write(path, lambda fh: fh.write(text))


# -- randomness ---------------------------------------------------------------------------------------------
def seed_sequence(*keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])


def torch_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1, np.uint64)[0] >> 1)


# -- the training set ---------------------------------------------------------------------------------------
class TrainClips(torch.utils.data.Dataset):
    """Training views, one per ``(epoch, index)``: TSN training sampling + the official augmentation.

    All randomness comes from ``(seed, epoch, index)``, so any worker produces the same view. A clip
    that cannot be decoded is replaced by the next one (with a warning), as the official loader does.
    """

    def __init__(
        self,
        clips: Sequence[VideoRecord],
        labels: Sequence[int],
        *,
        frames: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        augment: bool = True,
    ) -> None:
        self.clips, self.labels = list(clips), list(labels)
        self.spec = ClipSpec(
            frames=frames,
            image_size=image_size,
            mean=tuple(mean),
            std=tuple(std),
            train=True,
            augment=augment,
        )
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
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
        seq = seed_sequence(self.seed, epoch, index)
        rng = np.random.default_rng(seq)
        generator = torch.Generator().manual_seed(torch_seed(seq))
        clip = next(iter(load_clips(self.clips[index], self.spec, rng=rng, generator=generator)))
        return clip.views[0]


class EpochBatches:
    """This rank's part of each global batch, as lists of ``(epoch, index)``.

    The clip order of an epoch is a permutation drawn from ``(seed, epoch)``; global batch ``b`` is
    positions ``[b*B, (b+1)*B)`` of it and rank ``r`` takes its slice ``r`` of ``B / world``. The last
    incomplete batch is dropped (official ``drop_last``). ``set_epoch(epoch, skip)`` starts an epoch
    ``skip`` batches in (a resumed run). Used as a DataLoader ``batch_sampler``: it runs in the main
    process, so persistent workers see each new epoch.
    """

    def __init__(
        self, size: int, global_batch: int, batches: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.size, self.global_batch, self.batches = size, global_batch, batches
        self.seed, self.rank, self.world = seed, rank, world
        self.per_rank = global_batch // world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(torch_seed(seed_sequence(self.seed, 0xE90C, epoch)))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        order = self.order(self.epoch)
        for b in range(self.skip, self.batches):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            mine = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            yield [(self.epoch, i) for i in mine]

    def __len__(self) -> int:
        return self.batches - self.skip
