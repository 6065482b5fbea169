"""The tag pipeline: files -> views (worker processes) -> video features -> scores -> rows.

The text side is encoded once per vocabulary. Video features can be kept in a feature cache, so
re-tagging with another vocabulary decodes nothing and skips the visual encoder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import files, options
from .data.labels import Vocabulary, build_vocabulary
from .errors import UsageError
from .model import XCLIP, VideoFeatures, check_device, load_model
from .reports import resolved_path
from .results import VideoResult, ranking
from .video.clips import Clip, ClipSpec, VideoTask, load_clips, parse_views
from .workers import DONE, ITEM, WorkerPool, run_inline

log = logging.getLogger(__name__)

#: Videos scored together (the prompt generator runs on a batch); bounds memory for big vocabularies.
SCORE_BATCH = 64


# -- text ---------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_vocabulary(model: XCLIP, vocabulary: Vocabulary, batch_size: int = 256) -> torch.Tensor:
    """``[K, D]`` text features, once per vocabulary. Several templates are averaged in embedding space."""
    texts = [text for label in vocabulary.labels for text in vocabulary.texts(label)]
    feats = torch.cat(
        [
            model.encode_text(model.tokenize(texts[i : i + batch_size]))
            for i in range(0, len(texts), batch_size)
        ]
    )
    return feats.view(len(vocabulary.labels), len(vocabulary.templates), -1).mean(dim=1)


# -- scores -------------------------------------------------------------------------------------------
@torch.no_grad()
def view_probabilities(
    model: XCLIP, features: VideoFeatures, text: torch.Tensor, num_views: int
) -> torch.Tensor:
    """Softmax over the vocabulary per view, averaged over each video's `num_views` (official: summed)."""
    probs = model.logits(features, text).softmax(dim=-1)
    return probs.view(-1, num_views, probs.shape[-1]).mean(dim=1).cpu()


def score_fields(
    probs: torch.Tensor, labels: Sequence[str], top_k: int, threshold: float | None
) -> dict[str, Any]:
    """The score columns of a row from one video's ``[K]`` probabilities (ranked by :func:`ranking`)."""
    order = ranking(probs).tolist()
    values = probs.tolist()
    if threshold is None:
        kept = order[: max(1, top_k)]
    else:
        kept = [i for i in order if values[i] >= threshold]
    return {
        "label": labels[order[0]],
        "score": float(values[order[0]]),
        "labels": [labels[i] for i in kept],
        "scores": [float(values[i]) for i in kept],
        "all_scores": {labels[i]: float(values[i]) for i in range(len(labels))},
    }


# -- feature cache ------------------------------------------------------------------------------------
def file_fingerprint(path: str, chunk: int = 1 << 20, timeout: float | None = None) -> str:
    """Size, mtime and a hash of the first and last MiB: cheap, and changes when the file does.

    Raises OSError for anything but a regular file (a FIFO would block forever) and TimeoutError when
    the reads take longer than `timeout` seconds (a hung network mount).
    """

    def read() -> str:
        with files.open_regular(path) as f:
            st = os.fstat(f.fileno())
            digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
            digest.update(f.read(chunk))
            if st.st_size > chunk:
                f.seek(max(chunk, st.st_size - chunk))
                digest.update(f.read(chunk))
        return digest.hexdigest()

    return files.with_timeout(read, timeout, what=f"reading {path}")


def model_fingerprint(model: XCLIP) -> str:
    """Identifies the weights (not just the name): config, precision and a few learned tensors."""
    digest = hashlib.sha256(model.config.to_json().encode())
    digest.update(str(model.dtype).encode())
    state = model.state_dict()
    for key in ("mit.positional_embedding", "visual.proj", "prompts_visual_proj", "visual.ln_post.weight"):
        digest.update(state[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """One safetensors file per (video file, model, frames, views, window) holding every clip's features.

    Best effort: a cache that cannot be read or written (full disk, read-only folder, a damaged or
    foreign entry) warns once and tagging goes on without it; a bad entry is ignored and replaced.
    """

    def __init__(
        self,
        root: str | Path,
        model: XCLIP,
        spec: ClipSpec,
        timeout: float | None = None,
        writable: bool | None = None,
    ) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self._warned: set[str] = set()
        self.context = json.dumps(
            {
                "model": model_fingerprint(model),
                "frames": spec.frames,
                "image_size": spec.image_size,
                "views": spec.views,
                "window": spec.window,
                "stride": spec.stride,
                "version": 1,
            },
            sort_keys=True,
        )
        self.num_views = spec.num_views
        self.embed_dim = model.config.embed_dim
        self.writable = check_cache_folder(self.root) if writable is None else writable

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("feature cache: " + message, *args)

    def key(self, task: VideoTask) -> str:
        ident = f"{self.context}|{file_fingerprint(task.path, timeout=self.timeout)}|{task.start}|{task.end}"
        return hashlib.sha256(ident.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> list[tuple[dict[str, Any], VideoFeatures]] | None:
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        path = self._file(key)
        if not files.is_regular(path):
            return None
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["clips"])
                embedding, tokens = f.get_tensor("embedding"), f.get_tensor("prompt_tokens")
            clips = self._split(meta, embedding, tokens)
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
            self._warn(
                "read",
                "ignoring unreadable or foreign entries (first: %s: %s); they are recomputed",
                path,
                err,
            )
            return None
        return clips

    def _split(
        self, meta: Any, embedding: torch.Tensor, tokens: torch.Tensor
    ) -> list[tuple[dict[str, Any], VideoFeatures]]:
        """The entry's clips, after checking that its shapes are what this model and these views give."""
        if (
            not isinstance(meta, list)
            or not meta
            or not all(isinstance(m, dict) and {"start", "end", "duration"} <= m.keys() for m in meta)
        ):
            raise ValueError("bad clip list")
        rows = len(meta) * self.num_views
        if (
            embedding.shape != (rows, self.embed_dim)
            or tokens.ndim != 3
            or tokens.shape[0] != rows
            or tokens.shape[2] != self.embed_dim
            or not embedding.is_floating_point()
            or not tokens.is_floating_point()
        ):
            raise ValueError(
                f"shapes {tuple(embedding.shape)} and {tuple(tokens.shape)} do not fit this model"
            )
        if not (torch.isfinite(embedding).all() and torch.isfinite(tokens).all()):
            raise ValueError("non-finite features")
        v = self.num_views
        return [
            (m, VideoFeatures(embedding[i * v : (i + 1) * v], tokens[i * v : (i + 1) * v]))
            for i, m in enumerate(meta)
        ]

    def put(self, key: str, clips: list[tuple[dict[str, Any], VideoFeatures]]) -> None:
        if not self.writable:
            return
        from safetensors.torch import save_file

        path = self._file(key)
        feats = VideoFeatures.cat([f for _, f in clips]).to("cpu")
        tensors = {
            "embedding": feats.embedding.contiguous(),
            "prompt_tokens": feats.prompt_tokens.contiguous(),
        }
        metadata = {"clips": json.dumps([m for m, _ in clips])}
        try:
            path.parent.mkdir(exist_ok=True)
            files.atomic_save(path, lambda name: save_file(tensors, name, metadata=metadata))
        except Exception as err:  # safetensors raises its own types for I/O errors
            self.writable = False
            self._warn("write", "cannot write to %s (%s); going on without storing features", self.root, err)


def check_cache_folder(root: Path) -> bool:
    """Make the cache folder if needed and tell whether entries can be written there (warns if not)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder")
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test."):
            return True
    except OSError as err:
        log.warning(
            "feature cache %s cannot be written (%s); tagging without storing features",
            root,
            err.strerror or err,
        )
        return False


# -- the pipeline -------------------------------------------------------------------------------------
@dataclass
class _Pending:
    """A task whose clips are being decoded and encoded."""

    task: VideoTask
    cache_key: str | None = None
    clips: list[tuple[dict[str, Any], VideoFeatures | None]] = field(default_factory=list)
    decoded: bool = False

    @property
    def complete(self) -> bool:
        return self.decoded and all(f is not None for _, f in self.clips)


@dataclass
class TagRun:
    """A loaded model and vocabulary, ready to tag any number of inputs (the CLI keeps one per run)."""

    model: XCLIP
    vocabulary: Vocabulary
    spec: ClipSpec
    model_name: str
    batch_size: int = 4
    workers: int = 2
    timeout: float = 120.0
    top_k: int = 5
    threshold: float | None = None
    cache: FeatureCache | None = None
    #: Keep each result's VideoFeatures (for search indexes and tests); off by default to save memory.
    keep_features: bool = False
    text: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.text = encode_vocabulary(self.model, self.vocabulary)

    def row(self, result: VideoResult) -> dict[str, Any]:
        """The report row of one result: the run's settings, then the scores (top-k or threshold)."""
        row = {
            "path": result.path,
            "file": resolved_path(result.path),
            "start": result.start,
            "end": result.end,
            "label": None,
            "score": None,
            "labels": [],
            "scores": [],
            "duration": result.duration,
            "frames": self.spec.frames,
            "views": self.spec.views,
            "model": self.model_name,
            "precision": self.model.precision,
            "vocabulary": self.vocabulary.key,
            "error": result.error,
        }
        if result.probs is not None:
            row.update(score_fields(result.probs, self.vocabulary.labels, self.top_k, self.threshold))
        return row

    def same_run(self, row: dict[str, Any]) -> bool:
        """Whether a report row was made with this run's model, precision, frames, views and vocabulary."""
        keys = ("model", "precision", "frames", "views", "vocabulary")
        return tuple(row.get(k) for k in keys) == (
            self.model_name,
            self.model.precision,
            self.spec.frames,
            self.spec.views,
            self.vocabulary.key,
        )

    def error_result(self, task: VideoTask, message: str) -> VideoResult:
        # The result names the file already: keep just the cause.
        error = message.removeprefix(f"{task.path}: ")
        return VideoResult(task.path, task.start, task.end, None, None, self.vocabulary.labels, error=error)

    def _results(self, tasks: Sequence[_Pending]) -> list[list[VideoResult]]:
        """Each task's results, scored together (the prompt generator is far cheaper on a batch of videos)."""
        if not tasks:
            return []
        feats = VideoFeatures.cat([f for p in tasks for _, f in p.clips])
        step = SCORE_BATCH * self.spec.num_views  # whole videos per chunk
        probs = torch.cat(
            [
                view_probabilities(self.model, feats[j : j + step], self.text, self.spec.num_views)
                for j in range(0, len(feats), step)
            ]
        )
        out, at = [], 0
        for p in tasks:
            results = [
                VideoResult(
                    p.task.path,
                    meta["start"],
                    meta["end"],
                    meta["duration"],
                    clip_probs,
                    self.vocabulary.labels,
                    features=feats_ if self.keep_features else None,
                )
                for (meta, feats_), clip_probs in zip(p.clips, probs[at : at + len(p.clips)])
            ]
            out.append(results)
            at += len(p.clips)
        return out

    @torch.no_grad()
    def _encode(self, batch: list[tuple[_Pending, int, Clip]]) -> None:
        views = torch.cat([clip.views for _, _, clip in batch])
        feats = self.model.encode_video(views.to(self.model.device, non_blocking=True)).to("cpu")
        n = self.spec.num_views
        for j, (pending, index, _) in enumerate(batch):
            pending.clips[index] = (pending.clips[index][0], feats[j * n : (j + 1) * n])

    def run(self, tasks: Sequence[VideoTask]) -> Iterator[list[dict[str, Any]]]:
        """Yield each task's report rows (one per clip/window, or one error row), in input order."""
        for results in self.results(tasks):
            yield [self.row(result) for result in results]

    def results(self, tasks: Sequence[VideoTask]) -> Iterator[list[VideoResult]]:
        """Yield each task's results (one per clip/window, or one with the error), in input order."""
        ready: dict[int, list[VideoResult]] = {}
        pending: dict[int, _Pending] = {}
        to_decode: list[tuple[int, VideoTask]] = []
        next_out = 0

        def drain() -> Iterator[list[VideoResult]]:
            nonlocal next_out
            while next_out in ready:
                yield ready.pop(next_out)
                next_out += 1

        hits: list[tuple[int, _Pending]] = []  # cached tasks, scored in batches

        def score_hits() -> None:
            for (i, _), results in zip(hits, self._results([p for _, p in hits])):
                ready[i] = results
            hits.clear()

        for i, task in enumerate(tasks):
            key = None
            if self.cache is not None:
                try:
                    key = self.cache.key(task)
                except OSError as err:  # TimeoutError too
                    ready[i] = [self.error_result(task, f"{task.path}: cannot read ({err.strerror or err})")]
                    continue
                hit = self.cache.get(key)
                if hit is not None:
                    hits.append((i, _Pending(task, key, list(hit), decoded=True)))
                    if len(hits) >= SCORE_BATCH:
                        score_hits()
                        yield from drain()
                    continue
            pending[i] = _Pending(task, key)
            to_decode.append((i, task))
        score_hits()
        yield from drain()

        loader: Callable[[VideoTask], Iterable[Clip]] = partial(load_clips, spec=self.spec)
        pool = None
        if self.workers > 0 and to_decode:
            # Room for a batch's worth of clips (and each file's DONE) to wait while the model runs.
            room = 2 * max(self.batch_size, self.workers) + 2
            pool = WorkerPool(loader, self.workers, self.timeout, queue_size=room, threads=1)
        stream = pool.run(to_decode) if pool else run_inline(loader, to_decode)
        batch: list[tuple[_Pending, int, Clip]] = []

        def finish_ready() -> None:
            done = [i for i, p in pending.items() if p.complete]
            finished = [pending.pop(i) for i in done]
            for p in finished:
                if self.cache is not None and p.cache_key is not None:
                    self.cache.put(p.cache_key, p.clips)
            for i, results in zip(done, self._results(finished)):
                ready[i] = results

        try:
            for i, kind, payload in stream:
                p = pending.get(i)
                if p is None:
                    continue
                if kind == ITEM:
                    meta = {"start": payload.start, "end": payload.end, "duration": payload.duration}
                    p.clips.append((meta, None))
                    batch.append((p, len(p.clips) - 1, payload))
                    if len(batch) >= self.batch_size:
                        self._encode(batch)
                        batch = []
                elif kind == DONE:
                    p.decoded = True
                    if not p.clips:
                        pending.pop(i)
                        ready[i] = [
                            self.error_result(p.task, f"{p.task.path}: no frames in the requested range")
                        ]
                else:  # ERROR: the file's partial clips are dropped; one error row stands for it
                    pending.pop(i)
                    batch = [b for b in batch if b[0] is not p]
                    ready[i] = [self.error_result(p.task, payload)]
                if kind != ITEM or not batch:
                    finish_ready()
                    yield from drain()
            if batch:
                self._encode(batch)
            finish_ready()
            yield from drain()
        finally:
            if pool is not None:
                pool.close()


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
    **_others: Any,
) -> None:
    """Every option value of a tag run, checked before anything is loaded (UsageError, exit 2).

    Takes :func:`prepare`'s settings as they are; those that need the model or a file are checked there.
    """
    options.check_frames(frames)
    options.check_window(window, stride)
    options.check_run(timeout=timeout, batch_size=batch_size, workers=workers)
    options.check_scores(top_k, threshold)
    parse_views(views)
    check_device(device)


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
    workers: int = 2,
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
    )
    vocabulary = build_vocabulary(labels_files, labels, templates)
    for problem in vocabulary.problems:
        log.warning("%s", problem)
    clips, crops = parse_views(views)
    # Warned about now, not after a long model load.
    cache_writable = check_cache_folder(Path(cache)) if cache is not None else None
    model_name = model if isinstance(model, str) else getattr(model, "source", "model")
    if isinstance(model, str):
        net = load_model(model, device=device, precision=precision or "fp32", frames=frames, seed=seed)
    else:
        net = model
        if precision is not None and precision != net.precision:
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
        workers=workers,
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
