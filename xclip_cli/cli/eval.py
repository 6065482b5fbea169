"""``xclip eval``: accuracy on HMDB-51, UCF-101, Kinetics-400/600, the Kinetics-600 zero-shot classes or a CSV.

Parse, call :mod:`xclip_cli.evaluation`, render (table on stdout; JSON, CSV and plots on request).
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_SOME_FAILED, UsageError, XClipError
from .common import (
    BatchSize,
    Device,
    Frames,
    Model,
    Precision,
    PrecisionOpt,
    Reporter,
    ShowProgress,
    Threads,
    Timeout,
    Workers,
    interrupted,
    log,
    raise_on_sigterm,
    set_threads,
    views_option,
)


class DatasetName(str, Enum):
    hmdb51 = "hmdb51"
    ucf101 = "ucf101"
    kinetics400 = "kinetics400"
    kinetics600 = "kinetics600"
    k600_novel = "k600-novel"
    csv = "csv"


class Subset(str, Enum):
    test = "test"
    train = "train"


def eval_command(
    dataset: Annotated[DatasetName, typer.Option("--dataset", "-d", help="Dataset layout.")],
    root: Annotated[
        Path,
        typer.Option(
            "--root", help="Dataset folder (for csv: the list, or the folder its paths are relative to)."
        ),
    ],
    split: Annotated[
        str | None, typer.Option(help="1, 2, 3 or all (mean ± std). Default: 1; all for k600-novel.")
    ] = None,
    subset: Annotated[
        Subset, typer.Option(help="HMDB-51/UCF-101: the test or the train list of the split.")
    ] = Subset.test,
    splits_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of the HMDB-51 split files / UCF-101 lists (default: found under --root)."),
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="Kinetics annotation CSV (default: the *val*.csv under --root); for csv, the list."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", "-l", help="csv: the vocabulary file (default: the labels present)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="k600-novel: seed of the three 160-class subsets.")] = 0,
    model: Model = "xclip-b32-k400",
    frames: Frames = None,
    views: Annotated[
        str, views_option(help="CLIPSxCROPS views per video; 4x3 is the paper's test protocol.")
    ] = "1x1",
    device: Device = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchSize = 4,
    workers: Workers = None,
    threads: Threads = None,
    timeout: Timeout = 120.0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N listed videos of each split (a quick look).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Results JSON: metrics and everything that defines them."),
    ] = None,
    predictions: Annotated[Path | None, typer.Option(help="Per-video predictions and scores (CSV).")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for confusion matrices and per-class accuracy charts (PNG).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing --output / --predictions files.")] = False,
    progress: ShowProgress = True,
) -> None:
    """Accuracy of a model on a dataset's official splits: top-1, top-5 and mean class accuracy."""
    from .. import options
    from ..data.datasets import load_splits

    raise_on_sigterm()
    # Option values and outputs first: one line and exit 2 before any list is read or model loaded.
    options.check_run(threads=threads)
    from ..evaluation import check_outputs
    from ..tagging import check_options

    check_options(
        frames=frames, views=views, device=device, batch_size=batch_size, workers=workers, timeout=timeout
    )
    check_outputs(output, predictions, overwrite=overwrite)
    splits = load_splits(
        dataset.value,
        root,
        split,
        subset=subset.value,
        splits_dir=splits_dir,
        annotations=annotations,
        labels=labels,
        seed=seed,
    )
    if limit is not None:
        splits = [s.head(limit) for s in splits]
    for s in splits:
        log.info(
            "%s %s: %d listed, %d found, %d missing",
            dataset.value,
            s.name,
            len(s.listed),
            len(s.records),
            len(s.missing),
        )
    if not any(s.records for s in splits):
        listed = sum(len(s.listed) for s in splits)
        if not listed:
            raise UsageError(f"the {dataset.value} lists under {root} name no videos")
        example = next(Path(s.root) / s.missing[0] for s in splits if s.missing)
        raise XClipError(f"none of the {listed} listed videos is on disk (e.g. {example})")  # exit 1
    set_threads(threads)

    from ..evaluation import evaluate, prepare_run

    run = prepare_run(
        splits,
        model=model,
        frames=frames,
        views=views,
        device=device,
        precision=precision.value,
        batch_size=batch_size,
        workers=workers,
        timeout=timeout,
    )

    try:
        with Reporter("evaluating", done_verb="evaluated", unit="videos", enabled=progress) as bar:
            evaluation = evaluate(
                splits,
                run,
                progress=bar,
                output=output,
                predictions=predictions,
                plots=plots,
                overwrite=overwrite,
            )
    except KeyboardInterrupt:
        raise interrupted("interrupted; nothing written") from None

    _print_table(evaluation)
    for result in evaluation.splits:
        for path in result.split.missing[:5]:
            log.warning("%s: missing %s", result.split.name, path)
        for p in result.failed[:5]:
            log.warning("%s: failed %s: %s", result.split.name, p.path, p.error)
    if not evaluation.complete:
        missing = sum(len(r.split.missing) for r in evaluation.splits)
        failed = sum(len(r.failed) for r in evaluation.splits)
        log.warning(
            "%d listed videos missing and %d failed (listed in --output); accuracies are over the scored "
            "videos only",
            missing,
            failed,
        )
        raise typer.Exit(EXIT_SOME_FAILED)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _print_table(evaluation) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"xclip eval {evaluation.dataset}", title_justify="left")
    for name in ("split", "videos", "missing", "failed", "top-1 %", "top-5 %", "mean class %"):
        table.add_column(name, justify="left" if name == "split" else "right", no_wrap=True)
    for r in evaluation.splits:
        c = r.counts()
        table.add_row(
            r.split.name,
            f"{c['scored']}/{c['listed']}",
            str(c["missing"]),
            str(c["failed"]),
            _fmt(r.metrics["top1"]),
            _fmt(r.metrics["top5"]),
            _fmt(r.metrics["mean_class"]),
        )
    if len(evaluation.splits) > 1:
        s = evaluation.summary

        def cell(metric: str) -> str:
            std = s[metric]["std"]
            return _fmt(s[metric]["mean"]) + ("" if std is None else f" ± {_fmt(std)}")

        table.add_row("mean ± std", "", "", "", cell("top1"), cell("top5"), cell("mean_class"), style="bold")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a pipe or a file: no terminal to fit, so don't wrap at 80
    console.print(table)
