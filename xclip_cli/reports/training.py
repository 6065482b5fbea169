"""Files of a finetune run folder that report on it: ``metrics.jsonl`` (one line per epoch) and
``curves.png`` (loss and validation accuracy per epoch), each replaced atomically with the user's umask.

:mod:`xclip_cli.training.checkpoints` re-exports these writers under the same names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import files

log = logging.getLogger("xclip_cli.training.checkpoints")  # the logger these messages have always come from


def write_metrics(output: Path, records: Sequence[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    files.atomic_write(output / "metrics.jsonl", lambda fh: fh.write(text))


def plot_curves(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """``curves.png``: training loss, and validation top-1/top-5, per epoch (written atomically)."""
    from . import plots

    epochs = [r["epoch"] for r in records]
    fig = plots.figure(10, 3.8)
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
    plots.save(fig, path)


def try_plot(path: Path, records: Sequence[dict[str, Any]]) -> None:
    try:
        plot_curves(path, records)
    except Exception as err:  # a plot must never end a training run
        log.warning("cannot draw %s: %s", path, err)
