"""The `xclip` command. Thin: parse options, call the library, render; errors become one line + exit code."""

from __future__ import annotations

import logging
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    UsageError,
    XClipError,
)

__all__ = ["EXIT_INTERRUPTED", "EXIT_MODEL", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "app", "main"]


class XClipGroup(TyperGroup):
    """The one place where errors a user can cause become one line on stderr and their exit code.

    Every command raises :class:`~xclip_cli.errors.XClipError` subclasses and lets them travel here;
    anything else is a bug and keeps its traceback.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XClipError as err:
            typer.echo(f"xclip: error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None


app = typer.Typer(
    name="xclip",
    cls=XClipGroup,
    help="Tag, evaluate and fine-tune video libraries with X-CLIP (Ni et al., ECCV 2022).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
log = logging.getLogger("xclip_cli")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def fail(message: str, code: int) -> typer.Exit:
    """Print one clear line on stderr; the caller raises the returned Exit."""
    typer.echo(f"xclip: error: {message}", err=True)
    return typer.Exit(code)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="xclip: %(message)s", stream=sys.stderr, force=True)
    # huggingface_hub gives its logger a handler of its own when first imported (every line would then
    # print twice, once through ours): import it now and keep only ours. open_clip logs a failed download
    # that our own error line already reports.
    import huggingface_hub.utils.logging  # noqa: F401 - light: the package imports lazily

    logging.getLogger("huggingface_hub").handlers.clear()
    for noisy in ("huggingface_hub", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    logging.getLogger("open_clip").setLevel(logging.DEBUG if verbose > 1 else logging.CRITICAL)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xclip-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log lines on stderr.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    _setup_logging(verbose, quiet)


def _raise_on_sigterm() -> None:
    """SIGTERM (e.g. from a job scheduler) ends the run like Ctrl-C: finish writing, exit 130."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command()
def tag(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, glob patterns, or - to read paths from stdin.")],
    labels: Annotated[list[Path], typer.Option("--labels", "-l", help="Label file: one per line (# comments) or a CSV with a name column.")] = [],
    label: Annotated[list[str], typer.Option("--label", help="A label (repeatable).")] = [],
    template: Annotated[list[str], typer.Option("--template", help='Prompt template with {} (repeatable: averaged). Default: the bare label, as the model was trained.')] = [],
    model: Annotated[str, typer.Option("--model", "-m", envvar="XCLIP_MODEL", help="Registry name, checkpoint path, folder or hub id.")] = "xclip-b32-k400",
    frames: Annotated[Optional[int], typer.Option(help="Frames per view; must match the checkpoint.")] = None,
    views: Annotated[str, typer.Option(help="CLIPSxCROPS views per video, e.g. 4x3 as in the paper.")] = "1x1",
    device: Annotated[str, typer.Option(envvar="XCLIP_DEVICE", help="auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[Precision, typer.Option(help="fp32; bf16 (CPU with AMX, or CUDA); fp16 (CUDA).")] = Precision.fp32,
    batch_size: Annotated[int, typer.Option(help="Videos per model batch.")] = 4,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (0: decode in the main process).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for the model.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before a file that hangs a decoder is abandoned.")] = 120.0,
    top_k: Annotated[int, typer.Option("--top-k", help="Labels reported per video.")] = 5,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Report every label scoring at least --threshold.")] = False,
    threshold: Annotated[Optional[float], typer.Option(help="Score threshold for --multi-label (default 0.1).")] = None,
    window: Annotated[Optional[float], typer.Option(help="Tag consecutive windows of this many seconds.")] = None,
    stride: Annotated[Optional[float], typer.Option(help="Seconds between window starts (default: --window).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Report file (.csv, .json, .jsonl); default stdout.")] = None,
    fmt: Annotated[Optional[Format], typer.Option("--format", "-f", help="Default: from --output, else table on a terminal, JSONL in a pipe.")] = None,
    resume: Annotated[bool, typer.Option(help="Skip inputs already in --output for the same model, frames, views and vocabulary.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output (only if it is an xclip report).")] = False,
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache folder: re-tagging with new labels skips decoding.")] = None,
    ext: Annotated[Optional[str], typer.Option(help="Comma-separated extensions to take from folders.")] = None,
    null: Annotated[bool, typer.Option("--null", "-0", help="Paths on stdin are NUL-separated (find -print0).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of randomly initialised weights (ARCH:random models).")] = 0,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr (only on a terminal).")] = True,
) -> None:
    """Score every video against your labels and write a report (stdout or --output)."""
    from . import options

    _raise_on_sigterm()
    # Option values first: one line and exit 2 before anything is read or loaded.
    if threshold is not None and not multi_label:
        raise UsageError("--threshold needs --multi-label (without it the --top-k labels are reported)")
    if multi_label and threshold is None:
        threshold = 0.1
    options.check_frames(frames)
    options.check_window(window, stride)
    options.check_run(timeout=timeout, batch_size=batch_size, workers=workers, threads=threads)
    options.check_scores(top_k, threshold)
    if not labels and not label:
        raise UsageError("no labels: pass --labels FILE and/or --label TEXT")
    from .data.discover import DEFAULT_EXTENSIONS, discover, normalize_extensions
    from .reports import format_for, open_writer, resolved_path

    report_format = format_for(output, fmt.value if fmt else None, sys.stdout.isatty())
    if "-" in paths and sys.stdin.isatty():
        log.warning("reading paths from the terminal; end with Ctrl-D")
    found = discover(
        paths, extensions=normalize_extensions(ext) if ext else DEFAULT_EXTENSIONS, stdin=sys.stdin, null=null
    )
    if not found.paths:
        raise UsageError("no input videos found" + (f" ({'; '.join(found.problems[:3])})" if found.problems else ""))
    for problem in found.problems:
        log.warning("%s", problem)
    # The report next: refused, locked or resumed before the model loads (a download can take minutes).
    writer = open_writer(output, report_format, resume=resume, overwrite=overwrite, inputs=found.paths)
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from .tagging import completed_paths, prepare

        run = prepare(
            labels=label, labels_files=labels, templates=template, model=model, frames=frames, views=views,
            window=window, stride=stride, device=device, precision=precision.value, batch_size=batch_size,
            workers=min(2, os.cpu_count() or 1) if workers is None else workers, timeout=timeout,
            top_k=top_k, threshold=threshold, cache=cache, seed=seed,
        )
    except BaseException:
        writer.abandon()
        raise

    from .video.clips import VideoTask

    done = completed_paths(writer.existing_rows, run)
    if any(not run.same_run(row) for row in writer.existing_rows):
        log.warning("%s holds rows of another model, frame count, views or vocabulary: it will hold two runs",
                    output)
    tasks = [VideoTask(str(p)) for p in found.paths if resolved_path(p) not in done]
    if done:
        log.info("resuming: %d of %d inputs already in %s", len(found.paths) - len(tasks), len(found.paths), output)
    failed = 0
    try:
        with writer, _progress(len(tasks), enabled=progress) as advance:
            for rows in run.run(tasks):
                for row in rows:
                    writer.write(row)
                    if row["error"]:
                        failed += 1
                        log.warning("%s: %s", row["path"], row["error"])
                if writer.broken_pipe:
                    break
                advance(rows[0]["path"])
    except KeyboardInterrupt:
        typer.echo(f"xclip: interrupted; {writer.rows_written} rows written", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if failed:
        log.warning("%d of %d inputs failed (their rows carry the error)", failed, len(tasks))
        raise typer.Exit(EXIT_SOME_FAILED)


class _progress:
    """A rich progress bar on stderr, only when stderr is a terminal (logs stay readable in files)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled and sys.stderr.isatty()

    def __enter__(self):
        if not self.enabled:
            return lambda path: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]tagging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
        )
        self.bar.start()
        task = self.bar.add_task("", total=self.total)
        return lambda path: self.bar.update(task, advance=1, description=Path(path).name[-40:])

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


@app.command()
def models(
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, csv, json or jsonl.")] = Format.table,
) -> None:
    """List the registry: the published X-CLIP checkpoints and CLIP backbones, and which are local."""
    from . import weights

    rows = [weights.describe(entry) for entry in weights.registry().values()]
    if fmt == Format.table:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        # Names are what users type: never cut or wrapped, however narrow the terminal or pipe.
        table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in rows))
        for column in ("backbone", "frames", "trained on", "top-1", "source", "local"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["name"], r["backbone"], str(r["frames"] or "any"), r["trained_on"],
                f"{r['top1']:.1f}" if r["top1"] else "", r["source"], "yes" if r["available"] else "no",
            )
        console = Console()
        (console if console.is_terminal else Console(width=160)).print(table)
        typer.echo(f"local weights folder: {weights.weights_dir()}", err=True)
        return
    import csv
    import json

    if fmt == Format.csv:
        out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)
    elif fmt == Format.json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(json.dumps(r))


from . import cli_eval, cli_finetune  # noqa: E402,F401  (register `eval` and `finetune`)


def main() -> None:
    """Console entry point (typed user errors are turned into one line and an exit code by XClipGroup)."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("xclip: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
