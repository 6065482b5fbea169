"""``xclip tag``: score every video against your labels and write a report.

Parse, call :mod:`xclip_cli.tagging`, render (rows to the report writer, progress on stderr).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_SOME_FAILED, UsageError
from .common import (
    BatchSize,
    Device,
    Format,
    Frames,
    Model,
    Precision,
    PrecisionOpt,
    Reporter,
    ShowProgress,
    Threads,
    Timeout,
    Views,
    Workers,
    interrupted,
    log,
    raise_on_sigterm,
    set_threads,
    short_name,
)


def tag_command(
    paths: Annotated[
        list[str], typer.Argument(help="Files, folders, glob patterns, or - to read paths from stdin.")
    ],
    labels: Annotated[
        list[Path],
        typer.Option(
            "--labels", "-l", help="Label file: one per line (# comments) or a CSV with a name column."
        ),
    ] = [],
    label: Annotated[list[str], typer.Option("--label", help="A label (repeatable).")] = [],
    template: Annotated[
        list[str],
        typer.Option(
            "--template",
            help="Prompt template with {} (repeatable: averaged). Default: the bare label, as the model was trained.",
        ),
    ] = [],
    model: Model = "xclip-b32-k400",
    frames: Frames = None,
    views: Views = "1x1",
    device: Device = "auto",
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchSize = 4,
    workers: Workers = None,
    threads: Threads = None,
    timeout: Timeout = 120.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Labels reported per video.")] = 5,
    multi_label: Annotated[
        bool, typer.Option("--multi-label", help="Report every label scoring at least --threshold.")
    ] = False,
    threshold: Annotated[
        Optional[float], typer.Option(help="Score threshold for --multi-label (default 0.1).")
    ] = None,
    window: Annotated[
        Optional[float], typer.Option(help="Tag consecutive windows of this many seconds.")
    ] = None,
    stride: Annotated[
        Optional[float], typer.Option(help="Seconds between window starts (default: --window).")
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", help="Report file (.csv, .json, .jsonl); default stdout."),
    ] = None,
    fmt: Annotated[
        Optional[Format],
        typer.Option(
            "--format", "-f", help="Default: from --output, else table on a terminal, JSONL in a pipe."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Skip inputs already in --output for the same model, frames, views and vocabulary."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --output (only if it is an xclip report).")
    ] = False,
    cache: Annotated[
        Optional[Path], typer.Option(help="Feature cache folder: re-tagging with new labels skips decoding.")
    ] = None,
    ext: Annotated[
        Optional[str], typer.Option(help="Comma-separated extensions to take from folders.")
    ] = None,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="Paths on stdin are NUL-separated (find -print0).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of randomly initialised weights (ARCH:random models).")] = 0,
    progress: ShowProgress = True,
) -> None:
    """Score every video against your labels and write a report (stdout or --output)."""
    from .. import options
    from ..reports import format_for
    from ..tagging import tag

    interrupts = raise_on_sigterm()
    if threshold is not None and not multi_label:
        raise UsageError("--threshold needs --multi-label (without it the --top-k labels are reported)")
    if multi_label and threshold is None:
        threshold = 0.1
    report_format = format_for(output, fmt.value if fmt else None, sys.stdout.isatty())
    if "-" in paths and sys.stdin.isatty():
        log.warning("reading paths from the terminal; end with Ctrl-D")
    options.check_run(threads=threads)  # the rest are checked by tag(), before anything loads
    set_threads(threads)
    failed = written = 0
    with Reporter("tagging", done_verb="tagged", unit="videos", enabled=progress) as bar:

        def advance(done: int, total: int, path: str) -> None:
            if done == 0:
                bar.start(total)
            else:
                bar.update(done, item=short_name(path))

        rows = tag(
            paths,
            output=output or "-",
            fmt=report_format,
            resume=resume,
            overwrite=overwrite,
            extensions=ext,
            null=null,
            stdin=sys.stdin,
            progress=advance,
            labels=label,
            labels_files=labels,
            templates=template,
            model=model,
            frames=frames,
            views=views,
            window=window,
            stride=stride,
            device=device,
            precision=precision.value,
            batch_size=batch_size,
            workers=workers,
            timeout=timeout,
            top_k=top_k,
            threshold=threshold,
            cache=cache,
            seed=seed,
        )
        try:
            with contextlib.closing(rows):  # on an interrupt, the report is closed before the message
                for row in rows:
                    written += 1
                    if row["error"]:
                        failed += 1
                        log.warning("%s: %s", row["path"], row["error"])
                    interrupts.check()
                interrupts.check()
        except KeyboardInterrupt:
            raise interrupted(f"interrupted; {written} rows written") from None
    if failed:
        log.warning("%d of %d rows carry an error (inputs that failed)", failed, written)
        raise typer.Exit(EXIT_SOME_FAILED)
