"""The decoding pool: work ahead of the caller, survive crashes and hangs without losing queued files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from xclip_cli.workers import DONE, ERROR, ITEM, WorkerPool


def _stamp(task: str):
    yield task, time.time()  # when the worker started this task


def _crash_or_stamp(task: str):
    if task == "crash":
        os._exit(3)
    if task == "hang":
        time.sleep(3600)
    yield from _stamp(task)


def test_workers_decode_ahead_while_the_caller_is_busy():
    with WorkerPool(_stamp, workers=1, timeout=30) as pool:
        started, resumed = {}, {}
        for key, kind, payload in pool.run((i, f"t{i}") for i in range(3)):
            if kind == ITEM:
                started[key] = payload[1]
                time.sleep(0.5)  # the model runs on this clip
                resumed[key] = time.time()
    # The worker began the next file while the caller was still busy with the previous one.
    assert started[1] < resumed[0] and started[2] < resumed[1]


def test_crash_and_hang_fail_one_file_and_keep_the_queued_ones():
    tasks = ["crash", "a", "b", "hang", "c"]
    with WorkerPool(_crash_or_stamp, workers=1, timeout=2, ahead=3) as pool:
        events = [(key, kind, payload) for key, kind, payload in pool.run(enumerate(tasks))]
    finished = {key: (kind, payload) for key, kind, payload in events if kind != ITEM}
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assert finished[0] == (ERROR, "decoder exited (3)")
    assert finished[3][0] == ERROR and "timed out after 2 s" in finished[3][1]
    assert all(finished[k] == (DONE, None) for k in (1, 2, 4))
    items = [key for key, kind, _ in events if kind == ITEM]
    assert items == [1, 2, 4]


def _threads_seen(task: str, threads: int | None = None):
    yield task, threads


def test_threads_are_passed_to_each_task_not_set_in_the_worker():
    with WorkerPool(_threads_seen, workers=1, timeout=30, threads=1) as pool:
        seen = [payload for _, kind, payload in pool.run([(0, "a"), (1, "b")]) if kind == ITEM]
    assert seen == [("a", 1), ("b", 1)]
    with WorkerPool(_threads_seen, workers=1, timeout=30) as pool:  # without: fn(task) alone
        seen = [payload for _, kind, payload in pool.run([(0, "a")]) if kind == ITEM]
    assert seen == [("a", None)]


def _where(task: str):
    from xclip_cli.workers import in_worker

    yield task, in_worker()


def test_in_worker_is_true_only_in_a_pool_worker():
    from xclip_cli.workers import in_worker, run_inline

    with WorkerPool(_where, workers=1, timeout=30) as pool:
        seen = [payload for _, kind, payload in pool.run([(0, "a")]) if kind == ITEM]
    assert seen == [("a", True)]
    assert [p for _, kind, p in run_inline(_where, [(0, "b")]) if kind == ITEM] == [("b", False)]
    assert in_worker() is False


VIDEOS = Path(__file__).resolve().parents[1].parent / "shared/data/videos"


def _clips_made_shared(path: str, threads: int | None = None):
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    for clip in load_clips(VideoTask(path), ClipSpec(frames=8, image_size=224, window=2.0), threads=threads):
        yield clip.views.is_shared(), clip  # checked in the worker, before pickling could share it


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="test clips not found")
def test_worker_clips_are_made_in_shared_memory_and_arrive_intact():
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    path = str(VIDEOS / "mmaction2/test.mp4")
    with WorkerPool(_clips_made_shared, workers=1, timeout=120, threads=1) as pool:
        got = [payload for _, kind, payload in pool.run([(0, path)]) if kind == ITEM]
    inline = list(load_clips(VideoTask(path), ClipSpec(frames=8, image_size=224, window=2.0)))
    assert len(got) == len(inline) == 5
    assert all(made_shared for made_shared, _ in got)
    assert not any(c.views.is_shared() for c in inline)  # inline: ordinary memory
    for (_, clip), expected in zip(got, inline):
        assert (clip.start, clip.end, clip.indices) == (expected.start, expected.end, expected.indices)
        assert torch.equal(clip.views, expected.views)
