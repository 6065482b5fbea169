"""The flow every command runs: videos -> views (worker processes) -> video features -> scores.

The text side is encoded once per vocabulary. Video features can be kept in a feature cache, so
re-tagging with another vocabulary decodes nothing and skips the visual encoder. :mod:`xclip_cli.tagging`
(rows and reports) and :mod:`xclip_cli.evaluation` use it; this module is where torch comes in.
"""

from __future__ import annotations

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

from . import files
from .data.labels import Vocabulary
from .model import XCLIP, VideoFeatures
from .reports import resolved_path
from .results import VideoResult, ranking
from .video.clips import Clip, ClipSpec, VideoTask, load_clips
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
    _text: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def text(self) -> torch.Tensor:
        """``[K, D]`` features of the vocabulary, encoded on first use: :meth:`results` asks for them once
        the decode workers have their first files, so the two overlap."""
        if self._text is None:
            self._text = encode_vocabulary(self.model, self.vocabulary)
        return self._text

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
        batch: list[tuple[_Pending, int, Clip]] = []

        def finish_ready() -> None:
            done = [i for i, p in pending.items() if p.complete]
            finished = [pending.pop(i) for i in done]
            for p in finished:
                if self.cache is not None and p.cache_key is not None:
                    self.cache.put(p.cache_key, p.clips)
            for i, results in zip(done, self._results(finished)):
                ready[i] = results

        try:  # the pool is closed whatever happens from here on (an interrupt while encoding the text too)
            stream = pool.run(to_decode) if pool else run_inline(loader, to_decode)
            self.text  # noqa: B018 - the workers have their first files (pool.run gives them at once): encode now
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
