"""Tagging: inputs -> the flow (:mod:`xclip_cli.pipeline`) -> report rows, what ``xclip tag`` does.

Light on purpose: discovering the inputs, checking the options and opening the report import neither
torch nor the model, so a mistake is reported at once; :func:`prepare` brings them in.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import options
from .data.labels import build_vocabulary
from .data.records import VideoRecord as VideoTask
from .errors import UsageError
from .precision import check_precision
from .reports import resolved_path

if TYPE_CHECKING:
    from .model import XCLIP
    from .pipeline import TagRun

log = logging.getLogger(__name__)


def completed_paths(rows: Iterable[dict[str, Any]], run: TagRun) -> set[str]:
    """Resolved paths of the inputs a report already holds for this run (same model, frames, views,
    vocabulary); compare with :func:`~xclip_cli.reports.resolved_path` of the inputs.

    Failed inputs are not complete (they are tried again). In window mode a file counts only when its
    rows reach the end of the video, so a file cut short by a kill is redone (the writer drops the
    rows it already has).
    """
    reach: dict[str, bool] = {}
    for row in rows:
        if not run.same_run(row) or row.get("error"):
            continue
        path = row.get("file") or resolved_path(row["path"])
        if run.spec.window is None:
            reach[path] = True
        else:
            end, duration = row.get("end"), row.get("duration")
            at_end = end is not None and duration is not None and end >= duration - 1e-3
            reach[path] = reach.get(path, False) or at_end
    return {path for path, ok in reach.items() if ok}


def default_workers(device_type: str) -> int:
    """Decoding processes for a run that does not say: enough to keep the encoder fed, no more.

    Decoding 8 frames takes a core about as long as the B/32 encoder takes a video on two cores in fp32,
    so on the CPU the workers share the cores with the encoder; a GPU leaves the cores to decoding.
    """
    cores = os.cpu_count() or 1
    if device_type == "cuda":
        return max(1, min(cores - 1, 8))
    return max(1, min(2, cores))


def check_options(
    *,
    frames: int | None = None,
    window: float | None = None,
    stride: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    views: str = "1x1",
    device: str = "auto",
    precision: str | None = None,
    **_others: Any,
) -> None:
    """Every option value of a tag run, checked before anything is loaded (UsageError, exit 2).

    Takes :func:`prepare`'s settings as they are; those that need the model or a file are checked there.
    """
    options.check_frames(frames)
    options.check_window(window, stride)
    options.check_run(timeout=timeout, batch_size=batch_size, workers=workers)
    options.check_scores(top_k, threshold)
    options.parse_views(views)
    options.check_device_name(device)
    check_precision(precision)


def prepare(
    *,
    labels: Sequence[str] = (),
    labels_files: Sequence[str | Path] = (),
    templates: Sequence[str] = (),
    model: str | XCLIP = "xclip-b32-k400",
    frames: int | None = None,
    views: str = "1x1",
    window: float | None = None,
    stride: float | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 4,
    workers: int | None = None,
    timeout: float = 120.0,
    top_k: int = 5,
    threshold: float | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
) -> TagRun:
    """Check the options, load the model, encode the vocabulary and set up sampling once; see :func:`tag`.

    Everything that can be checked without the model (option values, labels, the cache folder) is
    checked before it loads. `model` may also be a loaded XCLIP: `precision` and `frames` must then be
    left out or match it (they are the model's own).
    """
    check_options(
        frames=frames,
        window=window,
        stride=stride,
        batch_size=batch_size,
        workers=workers,
        timeout=timeout,
        top_k=top_k,
        threshold=threshold,
        views=views,
        device=device,
        precision=precision,
    )
    vocabulary = build_vocabulary(labels_files, labels, templates)
    for problem in vocabulary.problems:
        log.warning("%s", problem)
    clips, crops = options.parse_views(views)
    from .model import check_device, load_model
    from .pipeline import FeatureCache, TagRun, check_cache_folder
    from .video.clips import ClipSpec

    check_device(device)  # a device this machine lacks
    # Warned about now, not after a long model load.
    cache_writable = check_cache_folder(Path(cache)) if cache is not None else None
    model_name = model if isinstance(model, str) else getattr(model, "source", "model")
    if isinstance(model, str):
        net = load_model(model, device=device, precision=precision, frames=frames, seed=seed)
    else:
        net = model
        if precision not in (None, "auto") and precision != net.precision:
            raise UsageError(
                f"precision={precision!r} was given with a model object in {net.precision}: convert the model "
                "(load_model(..., precision=...)) or leave precision out"
            )
        if frames is not None and frames != net.frames:
            raise UsageError(f"frames={frames} was given with a {net.frames}-frame model object")
    spec = ClipSpec(
        frames=net.frames,
        image_size=net.image_size,
        clips=clips,
        crops=crops,
        mean=net.mean,
        std=net.std,
        window=window,
        stride=stride,
    )
    feature_cache = None
    if cache is not None:
        feature_cache = FeatureCache(cache, net, spec, timeout=timeout, writable=cache_writable)
    return TagRun(
        net,
        vocabulary,
        spec,
        str(model_name),
        batch_size=batch_size,
        workers=default_workers(net.device.type) if workers is None else workers,
        timeout=timeout,
        top_k=top_k,
        threshold=threshold,
        cache=feature_cache,
    )


def tag(
    inputs: str | Path | VideoTask | Iterable[str | Path | VideoTask],
    *,
    output: str | Path | None = None,
    fmt: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    extensions: str | Iterable[str] | None = None,
    null: bool = False,
    stdin: Any = None,
    progress: Callable[[int, int, str], None] | None = None,
    run: TagRun | None = None,
    **settings: Any,
) -> Iterator[dict[str, Any]]:
    """Tag videos with a vocabulary: yields one report row per video (or per window), in input order.

    What ``xclip tag`` does, step for step (the command only parses its options and renders)::

        for row in tag(["clips/"], labels=["ride a bike", "swim"], output="tags.csv", resume=True):
            print(row["path"], row["label"], row["score"])

    inputs: files, folders (walked for `extensions`), glob patterns, ``"-"`` (paths read from `stdin`,
        NUL-separated with `null`), :class:`VideoTask` objects (a file, or a time range of it), in any
        mix; discovered, sorted and deduplicated as the command does.
    output: write the report here as well (``"-"``: stdout; None: only yield rows); `fmt` (csv, json,
        jsonl, table) defaults to the extension, JSONL for stdout. `resume` continues it (inputs already
        in it for this model, precision, frames, views and vocabulary are skipped); `overwrite` replaces it.
    progress: ``progress(done, total, path)`` once before the first input (``done`` 0) and after each.
    run: a :class:`TagRun` from :func:`prepare`, to tag many batches with one loaded model; otherwise
        `settings` are :func:`prepare`'s (``labels``, ``labels_files``, ``templates``, ``model``,
        ``frames``, ``views``, ``window``, ``stride``, ``device``, ``precision``, ``batch_size``,
        ``workers``, ``timeout``, ``top_k``, ``threshold``, ``cache``, ``seed``).

    Everything that can be checked without the model (option values, inputs, the report) is checked before
    it loads. Unreadable videos give a row whose ``error`` says why; the report is written as rows come,
    so an interrupted run keeps everything before it.
    """
    from .data.discover import DEFAULT_EXTENSIONS, discover, normalize_extensions
    from .reports import format_for, open_writer

    if run is None:
        check_options(**settings)
        if not settings.get("labels") and not settings.get("labels_files"):
            raise UsageError("no labels: pass --labels FILE and/or --label TEXT")
    if isinstance(inputs, (str, Path, VideoTask)):
        inputs = [inputs]
    inputs = list(inputs)
    given = [item for item in inputs if isinstance(item, VideoTask)]
    named = [os.fspath(item) for item in inputs if not isinstance(item, VideoTask)]
    found = (
        discover(
            named,
            extensions=normalize_extensions(extensions) if extensions else DEFAULT_EXTENSIONS,
            stdin=stdin,
            null=null,
        )
        if named
        else None
    )
    tasks = given + [VideoTask(str(p)) for p in (found.paths if found else [])]
    problems = found.problems if found else []
    if not tasks:
        raise UsageError("no input videos found" + (f" ({'; '.join(problems[:3])})" if problems else ""))
    for problem in problems:
        log.warning("%s", problem)
    writer = None
    if output is not None:
        target = None if os.fspath(output) == "-" else os.fspath(output)
        report_format = format_for(target, fmt, stdout_isatty=False)
        writer = open_writer(
            target, report_format, resume=resume, overwrite=overwrite, inputs=[t.path for t in tasks]
        )
    try:
        if run is None:
            run = prepare(**settings)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    with writer if writer is not None else contextlib.nullcontext():
        existing = writer.existing_rows if writer is not None else []
        done = completed_paths(existing, run)
        if any(not run.same_run(row) for row in existing):
            log.warning(
                "%s holds rows of another model, precision, frame count, views or vocabulary: it will hold two runs",
                output,
            )
        todo = [t for t in tasks if resolved_path(t.path) not in done] if done else tasks
        if done:
            log.info("resuming: %d of %d inputs already in %s", len(tasks) - len(todo), len(tasks), output)
        if progress is not None:
            progress(0, len(todo), "")
        for finished, results in enumerate(run.results(todo), start=1):
            for result in results:
                row = run.row(result)
                if writer is not None:
                    writer.write(row)
                yield row
            if writer is not None and writer.broken_pipe:
                return  # stdout's reader went away (`| head`): nobody wants more rows
            if progress is not None:
                progress(finished, len(todo), results[0].path)
