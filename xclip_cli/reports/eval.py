"""Files of ``xclip eval``: the results JSON, the predictions CSV and the plots (confusion matrix and
per-class accuracy per split), each written atomically; an existing one is replaced only if it is ours.

:mod:`xclip_cli.evaluation` computes the metrics and re-exports these writers under the same names.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import files
from ..errors import XClipError

if TYPE_CHECKING:
    from ..evaluation import Evaluation

log = logging.getLogger("xclip_cli.evaluation")  # the logger these messages have always come from


_PREDICTIONS_HEADER = (
    "split,path,label,label_index,prediction,prediction_index,top1_correct,top5_correct,error"
)


def _is_results(data: bytes) -> bool:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and {"dataset", "summary", "splits"} <= doc.keys()


def _is_predictions(data: bytes) -> bool:
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").startswith(_PREDICTIONS_HEADER)


def check_outputs(
    results: str | Path | None, predictions: str | Path | None, *, overwrite: bool = False
) -> None:
    """Refuse, before anything runs, outputs that exist (without `overwrite`) or that are not ours.

    An existing non-empty file is replaced only with `overwrite`, and only if it is an eval results JSON
    or predictions CSV of ours; anything else is refused and left untouched (ReportError, exit 2).
    """
    from .tag import ReportError, ReportExistsError, check_output

    for path, ours, what in (
        (results, _is_results, "results JSON"),
        (predictions, _is_predictions, "predictions CSV"),
    ):
        if path is None:
            continue
        check_output(path)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            continue
        if not overwrite:
            raise ReportExistsError(f"{path} already exists: use --overwrite to replace it")
        try:
            data = files.read_bytes(path, timeout=files.READ_TIMEOUT_S)
        except OSError as err:
            raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
        if not ours(data):
            raise ReportError(f"{path}: refusing to overwrite a file that is not an xclip eval {what}")


def write_results(evaluation: Evaluation, path: str | Path) -> None:
    """The results JSON, replaced atomically (a crash leaves the old file or the new one)."""
    text = json.dumps(evaluation.to_json(), indent=2, ensure_ascii=False) + "\n"
    files.atomic_write(str(path), lambda fh: fh.write(text))


def prediction_rows(evaluation: Evaluation) -> tuple[list[str], Iterable[list[str]]]:
    """Header and rows of the predictions CSV: one row per listed video and split, every class's score."""
    from ..evaluation import TOP_K, vocabulary_of
    from ..results import ranking

    classes = vocabulary_of([r.split for r in evaluation.splits])
    header = [
        "split",
        "path",
        "label",
        "label_index",
        "prediction",
        "prediction_index",
        "top1_correct",
        "top5_correct",
        "error",
        *classes,
    ]

    def rows() -> Iterator[list[str]]:
        for result in evaluation.splits:
            names = result.split.class_names
            column = [classes.index(c) for c in names]
            for p in result.predictions:
                scores = [""] * len(classes)
                cells = [result.split.name, p.path, names[p.label] if p.label >= 0 else "", str(p.label)]
                if p.probs is None:
                    cells += ["", "", "", "", p.error or ""]
                else:
                    order = ranking(p.probs[None])[0]
                    cells += [
                        names[order[0]],
                        str(order[0]),
                        str(int(order[0] == p.label)),
                        str(int(p.label in order[:TOP_K])),
                        "",
                    ]
                    for j, value in zip(column, p.probs):
                        scores[j] = f"{value:.9g}"  # 9 significant digits: float32 scores round-trip
                yield cells + scores

    return header, rows()


def write_predictions(evaluation: Evaluation, path: str | Path) -> None:
    """Per-video predictions and scores as CSV (atomic)."""
    header, rows = prediction_rows(evaluation)

    def write(fh) -> None:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)

    files.atomic_write(str(path), write)


def write_plots(evaluation: Evaluation, folder: str | Path) -> list[Path]:
    """Per split: ``<split>_confusion.png`` (row-normalised) and ``<split>_per_class_accuracy.png``."""
    import numpy as np

    from ..evaluation import confusion_matrix, per_class_accuracy
    from . import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for result in evaluation.splits:
        names = result.split.class_names
        k = len(names)
        probs, labels = result.arrays()
        title = f"{evaluation.dataset} {result.split.name}"
        counts = confusion_matrix(probs, labels, k).astype(np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        size = min(24.0, max(5.0, 0.18 * k))
        fig = plots.figure(size, size)
        ax = fig.subplots()
        image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: confusion (rows sum to 1), {len(labels)} videos")
        if k <= 120:
            ax.set_xticks(range(k), names, rotation=90, fontsize=6)
            ax.set_yticks(range(k), names, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046)
        path = folder / f"{result.split.name}_confusion.png"
        plots.save(fig, path)
        written.append(path)

        per_class = per_class_accuracy(probs, labels, k)
        fig = plots.figure(min(40.0, max(6.0, 0.16 * k)), 4.5)
        ax = fig.subplots()
        ax.bar(
            range(k),
            np.nan_to_num(per_class),
            color=["#4c72b0" if not math.isnan(v) else "#dddddd" for v in per_class],
        )
        ax.set_ylim(0, 100)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{title}: per-class top-1 accuracy (grey: no videos)")
        if k <= 120:
            ax.set_xticks(range(k), names, rotation=90, fontsize=6)
        path = folder / f"{result.split.name}_per_class_accuracy.png"
        plots.save(fig, path)
        written.append(path)
    return written


def write_outputs(
    evaluation: Evaluation,
    output: str | Path | None = None,
    predictions: str | Path | None = None,
    plots: str | Path | None = None,
) -> None:
    """The results JSON, the predictions CSV and the plots that were asked for (XClipError, exit 1, when the
    disk refuses one)."""
    try:
        if output is not None:
            write_results(evaluation, output)
        if predictions is not None:
            write_predictions(evaluation, predictions)
        if plots is not None:
            for path in write_plots(evaluation, plots):
                log.info("wrote %s", path)
    except OSError as err:
        raise XClipError(f"cannot write results: {err.strerror or err}") from None
