"""Protocols and metrics of ``xclip eval``: accuracy of a model on dataset splits, as the paper reports it.

Every listed video is scored once, through the tag pipeline (:func:`xclip_cli.tagging.prepare` and
``TagRun.results``: the same decode, sampling, views and scoring as ``xclip tag``), even when it appears in
several splits (HMDB-51 and UCF-101 clips are test videos of more than one split). Each split then gets

* top-1 and top-5 accuracy: the share of scored videos whose label is the best / among the five best
  scoring classes (ties go to the class listed first in the vocabulary);
* mean class accuracy: the mean over the classes that have scored videos of each class's top-1 accuracy;

and several splits are summarised as mean and *sample* standard deviation (``ddof=1``) over the splits.
Accuracies are percentages. Videos listed but missing or undecodable are counted and listed, never
dropped silently; each accuracy states the number of videos it was computed on.

Scores are softmax probabilities over the split's vocabulary, averaged over views (``--views 4x3``;
the official code sums them, which ranks identically). Splits with different vocabularies (the
Kinetics-600 zero-shot subsets) are scored once against the union of their classes and each split's
probabilities are that row restricted to its classes and renormalised: X-CLIP scores each class
independently of the others, so with one view this equals scoring against the subset alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data.datasets import Split
from .errors import UsageError
from .reports.eval import (  # noqa: F401 - the writers live in reports.eval; their names stay importable here
    _is_predictions,
    _is_results,
    check_outputs,
    prediction_rows,
    write_outputs,
    write_plots,
    write_predictions,
    write_results,
)
from .results import VideoResult, ranking

log = logging.getLogger(__name__)

__all__ = [
    "STD_DDOF",
    "TOP_K",
    "Evaluation",
    "Prediction",
    "SplitResult",
    "accuracy",
    "confusion_matrix",
    "evaluate",
    "mean_class_accuracy",
    "mean_std",
    "per_class_accuracy",
    "prepare_run",
    "ranking",
    "split_metrics",
    "topk_hits",
    "versions",
    "write_plots",
    "write_predictions",
    "write_results",
]

#: Standard deviation over splits: the sample standard deviation (n - 1 in the denominator). The paper
#: does not say which it uses; with three splits the population value is 0.816 times this one.
STD_DDOF = 1
#: The k of top-k accuracy (capped at the number of classes).
TOP_K = 5
METRICS = ("top1", "top5", "mean_class")


# -- metrics: pure functions of probabilities [N, K] and labels [N] ------------------------------------------
def topk_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean [N]: is each video's label among its `k` best classes (k capped at K)?"""
    probs = np.asarray(probs)
    if probs.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    top = ranking(probs)[:, : min(k, probs.shape[1])]
    return (top == np.asarray(labels)[:, None]).any(axis=1)


def accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in percent; NaN when there is no video."""
    hits = topk_hits(probs, labels, k)
    return float(100.0 * hits.mean()) if hits.size else math.nan


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy (percent) of each class; NaN for classes without scored videos."""
    hits = topk_hits(probs, labels, 1)
    labels = np.asarray(labels, dtype=np.int64)
    totals = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[hits], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, 100.0 * correct / totals, np.nan)


def mean_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean of :func:`per_class_accuracy` over the classes that have videos; NaN when none has."""
    values = per_class_accuracy(probs, labels, num_classes)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [K, K]: row = true class, column = top-1 prediction."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    if len(labels):
        np.add.at(matrix, (np.asarray(labels, dtype=np.int64), ranking(probs)[:, 0]), 1)
    return matrix


def split_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float | int]:
    """``{"top1", "top5", "mean_class"}`` in percent and ``videos``, the number they were computed on."""
    return {
        "top1": accuracy(probs, labels, 1),
        "top5": accuracy(probs, labels, TOP_K),
        "mean_class": mean_class_accuracy(probs, labels, num_classes),
        "videos": len(labels),
    }


def mean_std(values: Sequence[float], ddof: int = STD_DDOF) -> tuple[float, float | None]:
    """Mean and standard deviation (``ddof`` as :data:`STD_DDOF`); the deviation is None for one value."""
    array = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return math.nan, None
    return float(array.mean()), (float(array.std(ddof=ddof)) if array.size > ddof else None)


# -- the protocol --------------------------------------------------------------------------------------------
class Scorer(Protocol):
    """What `evaluate` needs from a :class:`~xclip_cli.pipeline.TagRun` (tests substitute known scores)."""

    vocabulary: Any

    def results(self, tasks: Sequence[Any]) -> Iterator[list[VideoResult]]: ...


@dataclass
class Prediction:
    """One listed video of a split: its probabilities over the split's classes, or why there are none."""

    path: str
    label: int
    probs: np.ndarray | None = None
    error: str | None = None  # "missing" for listed videos not on disk, else the decoding error


@dataclass
class SplitResult:
    split: Split
    predictions: list[Prediction]
    metrics: dict[str, float | int]

    @property
    def scored(self) -> list[Prediction]:
        return [p for p in self.predictions if p.probs is not None]

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if p.error is not None and p.error != "missing"]

    def counts(self) -> dict[str, int]:
        return {
            "listed": len(self.predictions),
            "found": len(self.split.records),
            "missing": len(self.split.missing),
            "failed": len(self.failed),
            "scored": len(self.scored),
        }

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N, K] and labels [N] of the scored videos."""
        scored = self.scored
        k = len(self.split.class_names)
        probs = np.stack([p.probs for p in scored]) if scored else np.zeros((0, k))
        return probs, np.asarray([p.label for p in scored], dtype=np.int64)


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: per-split results, the summary over splits, and the settings."""

    dataset: str
    splits: list[SplitResult]
    summary: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    unique_videos: int = 0

    @property
    def complete(self) -> bool:
        """True when every listed video was found and scored."""
        return all(not r.split.missing and not r.failed for r in self.splits)

    def to_json(self) -> dict[str, Any]:
        """Everything that defines the numbers, JSON-ready (NaN becomes null)."""
        out = {
            "dataset": self.dataset,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
            "metrics": {
                "unit": "percent",
                "top1": "label is the highest-scoring class",
                "top5": f"label is among the {TOP_K} highest-scoring classes",
                "mean_class": "mean over classes with videos of the per-class top-1 accuracy",
                "ties": "broken in vocabulary order",
                "std": f"sample standard deviation over splits (ddof={STD_DDOF})",
                "scores": "softmax over the split's classes, averaged over views",
            },
            "summary": self.summary,
            "unique_videos_scored": self.unique_videos,
            "splits": [
                {
                    "name": r.split.name,
                    "subset": r.split.subset,
                    "root": r.split.root,
                    "files": r.split.files,
                    "counts": r.counts(),
                    "metrics": r.metrics,
                    "class_names": r.split.class_names,
                    "missing": r.split.missing,
                    "failed": [{"path": p.path, "error": p.error} for p in r.failed],
                }
                for r in self.splits
            ],
            **self.settings,
        }
        return _no_nan(out)


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def vocabulary_of(splits: Sequence[Split]) -> list[str]:
    """The union of the splits' classes, in order of first appearance (one text encoding for all)."""
    seen: dict[str, None] = {}
    for split in splits:
        seen.update(dict.fromkeys(split.class_names))
    return list(seen)


def prepare_run(splits: Sequence[Split], **options: Any):
    """A :class:`~xclip_cli.pipeline.TagRun` over the splits' classes; `options` as ``tagging.prepare``
    (model, frames, views, device, precision, batch_size, workers, timeout, templates)."""
    from .tagging import prepare

    return prepare(labels=vocabulary_of(splits), top_k=TOP_K, **options)


def evaluate(
    splits: Sequence[Split],
    run: Scorer | None = None,
    *,
    limit: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    output: str | Path | None = None,
    predictions: str | Path | None = None,
    plots: str | Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Evaluation:
    """Score the videos of `splits` (each once) and compute every split's metrics and their summary.

    What ``xclip eval`` runs. `run` is a TagRun from :func:`prepare_run` (built from `options` when None).
    `limit` keeps the first N listed videos of each split. `progress(done, total, path)` is called after
    each video. `output` (results JSON), `predictions` (CSV) and `plots` (a folder of PNGs) are written at
    the end; existing ones are checked before anything runs (replaced only with `overwrite`, and only if
    they are ours).
    """
    if not splits:
        raise UsageError("no splits to evaluate")
    check_outputs(output, predictions, overwrite=overwrite)
    if limit is not None:
        splits = [s.head(limit) for s in splits]
    if run is None:
        run = prepare_run(splits, **options)
    labels = list(run.vocabulary.labels)
    position = {name: i for i, name in enumerate(labels)}
    absent = [c for c in vocabulary_of(splits) if c not in position]
    if absent:
        raise UsageError(f"the run's vocabulary lacks {len(absent)} classes of the splits: {absent[0]!r}...")

    from .video.clips import VideoTask

    tasks: dict[tuple[str, float | None, float | None], VideoTask] = {}
    for split in splits:
        for record in split.records:
            task = VideoTask(str(split.path_of(record)), record.label, record.start, record.end)
            tasks.setdefault((task.path, task.start, task.end), task)
    scores = _score(run, list(tasks.values()), labels, progress)

    results = []
    for split in splits:
        index = np.asarray([position[c] for c in split.class_names])
        restrict = not (len(index) == len(labels) and (index == np.arange(len(labels))).all())
        by_path = {r.path: r for r in split.records}
        class_index = {name: i for i, name in enumerate(split.class_names)}
        split_predictions = []
        for path in split.listed:
            if path not in by_path:  # listed, not on disk (its label is not kept: -1)
                split_predictions.append(Prediction(path, -1, error="missing"))
                continue
            record = by_path[path]
            probs, error = scores[(str(split.path_of(record)), record.start, record.end)]
            if probs is not None:
                probs = probs[index]
                if restrict:
                    probs = probs / probs.sum()
            split_predictions.append(Prediction(path, class_index[record.label], probs, error))
        result = SplitResult(split, split_predictions, {})
        result.metrics = split_metrics(*result.arrays(), len(split.class_names))
        results.append(result)

    summary = {}
    for metric in METRICS:
        values = [float(r.metrics[metric]) for r in results]
        mean, std = mean_std(values)
        summary[metric] = {"mean": mean, "std": std, "splits": values}
    summary["videos"] = {"splits": [int(r.metrics["videos"]) for r in results]}
    settings = describe(run)
    if any(len(s.class_names) != len(labels) for s in splits):
        settings["subset_scoring"] = (
            f"scored once against the {len(labels)} classes of all splits; each split's probabilities are "
            "restricted to its classes and renormalised"
        )
    evaluation = Evaluation(splits[0].dataset, results, summary, settings, unique_videos=len(tasks))
    write_outputs(evaluation, output, predictions, plots)
    return evaluation


def _score(
    run: Scorer, tasks: list[Any], labels: list[str], progress: Callable[[int, int, str], None] | None
) -> dict[tuple[str, float | None, float | None], tuple[np.ndarray | None, str | None]]:
    """Each task's probabilities over `labels` (float64, the run's vocabulary order) or its error."""
    scores: dict[tuple[str, float | None, float | None], tuple[np.ndarray | None, str | None]] = {}
    for done, (task, results) in enumerate(zip(tasks, run.results(tasks)), start=1):
        result = results[0]
        key = (task.path, task.start, task.end)
        if result.error is not None:
            scores[key] = (None, result.error)
        else:
            scores[key] = (result.probs.double().numpy(), None)
        if progress is not None:
            progress(done, len(tasks), task.path)
    return scores


# -- what defines the numbers --------------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    """Versions of Python, xclip-cli and the packages that decode, sample and compute."""
    from importlib import metadata

    from . import __version__

    found: dict[str, str | None] = {"python": platform.python_version(), "xclip-cli": __version__}
    for name in ("torch", "torchvision", "open_clip_torch", "decord", "imageio-ffmpeg", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe(run: Any) -> dict[str, Any]:
    """The model, its source, frames, sampling, views and precision of a TagRun, plus package versions."""
    settings: dict[str, Any] = {"versions": versions()}
    model, spec = getattr(run, "model", None), getattr(run, "spec", None)
    settings["model"] = {"name": getattr(run, "model_name", type(run).__name__)}
    vocabulary = getattr(run, "vocabulary", None)
    if vocabulary is not None and hasattr(vocabulary, "templates"):
        settings["templates"] = list(vocabulary.templates)
    if model is not None and hasattr(model, "config"):
        from .pipeline import model_fingerprint

        settings["model"].update(
            source=str(getattr(model, "source", None)),
            fingerprint=model_fingerprint(model),
            config=json.loads(model.config.to_json()),
            precision=getattr(model, "precision", str(getattr(model, "dtype", ""))),
            device=str(getattr(model, "device", "")),
        )
    if spec is not None:
        from .video.transforms import short_side_for

        settings.update(
            frames=spec.frames,
            views=spec.views,
            sampling={
                "frames": "TSN: the centre frame of each of `frames` equal segments (official test mode)",
                "clips": spec.clips,
                "clip_placement": "clip c takes the frame at fraction (c + 0.5) / clips of each segment",
                "crops": spec.crops,
                "crop": "centre" if spec.crops == 1 else "three along the long side",
                "resize_short_side": short_side_for(spec.image_size, spec.crops),
                "image_size": spec.image_size,
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            batch_size=getattr(run, "batch_size", None),
        )
    return settings
