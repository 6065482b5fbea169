"""Decode in worker processes, overlapped with the model, and abandon a file that hangs a decoder.

A torch DataLoader stops the whole run when one worker hangs or crashes; a video library always holds
a file that makes some decoder hang or segfault. So each task (one file) runs in a worker process of
our own; its results stream back through a bounded queue; a worker silent for longer than the
per-file timeout, or one that died, is killed and replaced and its file reported as failed.

Signals: a worker ignores Ctrl-C (SIGINT to the terminal's process group; the parent handles it and
stops the workers) and ends at once, without a traceback, on SIGTERM. Its ffmpeg children run in
sessions of their own (see ``video.ffmpeg_backend``), so neither signal fails the file being decoded.

Each worker has one core: torch computes with one thread, and with ``WorkerPool(..., threads=1)`` each
task runs as ``fn(task, threads=1)`` so that its decoder uses one thread too (a parameter of the call,
not a setting of the worker process).

Workers are forked (where the platform can): they start with the parent's modules already imported,
and import nothing themselves. Items go back through torch's shared memory (``torch.multiprocessing``):
a tensor is handed over, not copied through the pipe; one made in shared memory in the first place
(``video.test_views(..., shared=True)``, which ``load_clips`` does when :func:`in_worker`) is not
copied at all.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.multiprocessing  # registers shared-memory pickling of tensors

ITEM, DONE, ERROR = "item", "done", "error"

#: ``fn(task)``, or ``fn(task, threads=N)`` for a pool with ``threads``: a generator of items.
TaskFn = Callable[..., Iterable[Any]]


@dataclass
class _Worker:
    process: Any
    tasks: Any
    #: ``(key, task)`` jobs handed to this worker and not yet finished, oldest (the one running) first.
    jobs: deque = field(default_factory=deque)
    #: When the running task last made progress.
    since: float = 0.0


#: True in a worker process of a pool (set by the worker itself, after the fork).
_IN_WORKER = False


def in_worker() -> bool:
    """Whether this process is a :class:`WorkerPool` worker, whose items are sent to the parent process."""
    return _IN_WORKER


#: Signals blocked from just before a worker is forked until it has set its own handlers: in between, the
#: parent's handlers (SIGTERM raising KeyboardInterrupt, in the CLI) would print a traceback from it.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_main(fn: TaskFn, tasks: Any, results: Any, wid: int, threads: int | None = None) -> None:
    global _IN_WORKER
    # Ctrl-C: ignored, the parent handles it and stops us. SIGTERM (e.g. to the whole process group):
    # the default action, an immediate quiet exit, not the parent's inherited KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _IN_WORKER = True
    torch.set_num_threads(1)  # one core per worker, for the model's math (and the decoder: `threads`)
    kwargs = {} if threads is None else {"threads": threads}
    while True:
        job = tasks.get()
        if job is None:
            return
        key, task = job
        try:
            for item in fn(task, **kwargs):
                results.put((wid, key, ITEM, item))
            results.put((wid, key, DONE, None))
        except Exception as err:  # every failure is reported as that file's error
            results.put((wid, key, ERROR, str(err) or type(err).__name__))


def run_inline(fn: TaskFn, tasks: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, str, Any]]:
    """The same stream without worker processes (``--workers 0``): no timeout, easiest to debug."""
    for key, task in tasks:
        try:
            for item in fn(task):
                yield key, ITEM, item
            yield key, DONE, None
        except Exception as err:
            yield key, ERROR, str(err) or type(err).__name__


class WorkerPool:
    """Runs ``fn(task)`` (a generator) per task in `workers` processes; see :meth:`run`.

    Each worker holds up to `ahead` tasks, so it goes on decoding the next file while the caller runs
    the model on what came back, instead of waiting for the caller to hand it more work. With
    `threads` set, each task runs as ``fn(task, threads=threads)`` (pass 1, one core per worker, to a
    task that decodes, e.g. ``video.clips.load_clips``).
    """

    def __init__(
        self,
        fn: TaskFn,
        workers: int,
        timeout: float = 120.0,
        queue_size: int | None = None,
        ahead: int = 2,
        threads: int | None = None,
    ) -> None:
        self.fn = fn
        self.threads = threads
        self.timeout = timeout
        self.ahead = max(1, ahead)
        self._ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self._results = self._ctx.Queue(maxsize=queue_size or 2 * workers + 2)
        self._workers = [self._spawn(i) for i in range(workers)]

    def _spawn(self, wid: int) -> _Worker:
        tasks = self._ctx.SimpleQueue()
        process = self._ctx.Process(
            target=_worker_main, args=(self.fn, tasks, self._results, wid, self.threads), daemon=True
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)  # see _STOP_SIGNALS
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return _Worker(process, tasks)

    def run(self, tasks: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, str, Any]]:
        """Yield ``(key, kind, payload)``: ITEM for each item a task produces, then DONE or ERROR.

        The workers get their first tasks at once, before the first ``next()``, so they decode while the
        caller does something else. Items of different tasks may interleave (one worker per task), but
        each task's own messages come in order. Time the caller spends between two yields (running the
        model) is not counted against the workers' timeout: they may just be waiting for queue space.
        """
        pending = iter(tasks)
        exhausted = self._fill(pending)
        return self._stream(pending, exhausted)

    def _fill(self, pending: Iterator[tuple[Any, Any]]) -> bool:
        """Give each worker tasks up to `ahead`, least loaded first; whether `pending` ran out."""
        for worker in sorted(self._workers, key=lambda w: len(w.jobs)):
            while len(worker.jobs) < self.ahead:
                job = next(pending, None)
                if job is None:
                    return True
                self._give(worker, job)
        return False

    def _stream(self, pending: Iterator[tuple[Any, Any]], exhausted: bool) -> Iterator[tuple[Any, str, Any]]:
        for w in self._workers:  # the caller's time before its first next() is not the workers' either
            w.since = time.monotonic()
        while True:
            if not exhausted:
                exhausted = self._fill(pending)
            if exhausted and not any(w.jobs for w in self._workers):
                return
            try:
                wid, key, kind, payload = self._results.get(timeout=0.2)
            except queue.Empty:
                yield from self._reap()
                continue
            worker = self._workers[wid]
            if not worker.jobs or worker.jobs[0][0] != key:  # a late message from a worker we gave up on
                continue
            worker.since = time.monotonic()
            if kind != ITEM:
                worker.jobs.popleft()
            paused = time.monotonic()
            yield key, kind, payload
            paused = time.monotonic() - paused
            for w in self._workers:
                w.since += paused

    def _give(self, worker: _Worker, job: tuple[Any, Any]) -> None:
        if not worker.jobs:
            worker.since = time.monotonic()
        worker.jobs.append(job)
        worker.tasks.put(job)

    def _reap(self) -> Iterator[tuple[Any, str, str]]:
        now = time.monotonic()
        for wid, worker in enumerate(self._workers):
            if not worker.jobs:
                continue
            if not worker.process.is_alive():
                code = worker.process.exitcode
                why = f"decoder crashed (signal {-code})" if code and code < 0 else f"decoder exited ({code})"
            elif now - worker.since > self.timeout:
                why = f"timed out after {self.timeout:g} s (decoder hung)"
            else:
                continue
            (key, _), *backlog = worker.jobs
            self._kill(worker)
            self._workers[wid] = self._spawn(wid)
            for job in backlog:  # not started yet: the new worker runs them
                self._give(self._workers[wid], job)
            yield key, ERROR, why

    @staticmethod
    def _kill(worker: _Worker) -> None:
        if worker.process.is_alive():
            os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(timeout=5)

    def close(self) -> None:
        for worker in self._workers:
            if not worker.jobs and worker.process.is_alive():
                worker.tasks.put(None)
        for worker in self._workers:
            worker.process.join(timeout=0.5)
            if worker.process.is_alive():
                self._kill(worker)
        self._results.cancel_join_thread()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
