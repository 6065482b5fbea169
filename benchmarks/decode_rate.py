"""Decode-only rate of the `xclip tag` input path: videos per second, no model.

    python benchmarks/decode_rate.py [--workers 0 1 2] [--repeat 3] [--baseline HEAD] [CLIP ...]
    python benchmarks/decode_rate.py --window 1 --backend ffmpeg moviepy/big_buck_bunny_0_30.webm

Each figure is the same `WorkerPool` / `load_clips` path `xclip tag` takes (``--workers 0`` runs the
tasks inline), with tag's default clip settings: 8 frames, 224 px, 1x1 views, ImageNet mean/std
(``--window``/``--stride`` cut each clip into windows, as ``xclip tag --window`` does). The clips default
to every decodable clip in ../shared/data/videos (listed from its manifest.csv; clips that fail to
decode are found by trying them once, which also warms the page cache, and left out).

Every measurement runs in a fresh process, so that each pays its own imports, as `xclip` does.
``--baseline REV`` also measures the package as committed at REV (extracted with ``git archive``)
in the same run, interleaved with the working tree, so that the two sets of figures share the
machine's state. ``--backend ffmpeg`` measures the ffmpeg fallback alone (as on a platform without decord).

:func:`decode_rate` is importable: ``decode_rate(paths, spec, workers, timeout) -> dict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
BATCH = 4  # `xclip tag --batch-size` default: sets the result queue's room, as tag does


def decode_rate(paths: list[str], spec=None, workers: int = 0, timeout: float = 120.0) -> dict:
    """Decode `paths` with `spec` (default: tag's 8 x 224 px, 1x1) the way `xclip tag` does.

    Returns ``videos`` (decoded without error), ``errors``, ``clips`` (windows), ``seconds`` (wall
    time, pool start-up and shutdown included), ``videos_per_s`` and ``cpu_s``: CPU time of this process
    and of the children it waited for (decode workers, ffmpeg) meanwhile, which a busy machine inflates
    far less than wall time.
    """
    import resource
    from functools import partial

    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips
    from xclip_cli.workers import DONE, ERROR, ITEM, WorkerPool, run_inline

    spec = spec if spec is not None else ClipSpec(frames=8, image_size=224)
    loader = partial(load_clips, spec=spec)
    tasks = [(i, VideoTask(str(p))) for i, p in enumerate(paths)]
    videos = errors = clips = 0

    def cpu() -> float:
        return sum(
            u.ru_utime + u.ru_stime
            for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        )

    cpu_start = cpu()
    start = time.perf_counter()
    pool = None
    if workers > 0:
        pool = WorkerPool(loader, workers, timeout, queue_size=2 * max(BATCH, workers) + 2, threads=1)
    try:
        for _, kind, payload in pool.run(tasks) if pool else run_inline(loader, tasks):
            if kind == ITEM:
                clips += 1
                assert payload.views.dtype.is_floating_point  # a real clip came back
            elif kind == DONE:
                videos += 1
            elif kind == ERROR:
                errors += 1
    finally:
        if pool is not None:
            pool.close()
    seconds = time.perf_counter() - start
    cpu_s = cpu() - cpu_start
    return {
        "videos": videos,
        "errors": errors,
        "clips": clips,
        "seconds": seconds,
        "videos_per_s": videos / seconds if seconds > 0 else float("inf"),
        "cpu_s": cpu_s,
    }


def default_clips() -> list[str]:
    """Every clip of the manifest, in its order (the undecodable ones are dropped by :func:`decodable`)."""
    with open(VIDEOS / "manifest.csv", newline="") as f:
        return [str(VIDEOS / row["path"]) for row in csv.DictReader(f)]


def decodable(paths: list[str], spec) -> list[str]:
    """The paths that decode with the working tree's code (tried once each, inline)."""
    from xclip_cli.video.clips import VideoTask, load_clips
    from xclip_cli.video.decode import VideoError

    kept = []
    for path in paths:
        try:
            for _ in load_clips(VideoTask(path), spec):
                pass
        except VideoError:
            continue
        kept.append(path)
    return kept


# -- one measurement in its own process ---------------------------------------------------------------


def _child(request: dict) -> dict:
    """Run in a fresh process with the package tree `request["root"]` first on sys.path."""
    sys.path.insert(0, request["root"])
    start = time.perf_counter()
    import xclip_cli.video.clips as clips_module
    import xclip_cli.workers  # noqa: F401 - what tag imports for decoding

    imported = time.perf_counter() - start
    here = Path(clips_module.__file__).resolve()
    assert here.is_relative_to(Path(request["root"]).resolve()), f"imported {here}"
    heavy = sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules)
    if request["backend"] == "ffmpeg":
        from xclip_cli.video import decode

        decode.decord = None
    window = request["window"]
    spec = clips_module.ClipSpec(frames=8, image_size=224, window=window, stride=request["stride"])
    result = decode_rate(request["paths"], spec, request["workers"], request["timeout"])
    return {**result, "import_s": imported, "heavy_imports": heavy}


def _measure(request: dict) -> dict:
    args = [sys.executable, __file__, "--child", json.dumps(request)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _extract(rev: str, into: Path) -> Path:
    """The package as committed at `rev`, under `into` (no checkout, the working tree is untouched)."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "xclip_cli"], capture_output=True, check=True
    ).stdout
    archive = into / "tree.tar"
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="*", help="clips (default: every decodable clip of the manifest)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument("--window", type=float, default=None, help="seconds per window (xclip tag --window)")
    parser.add_argument("--stride", type=float, default=None)
    parser.add_argument("--backend", choices=["auto", "ffmpeg"], default="auto")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--baseline", metavar="REV", help="also measure the package as committed at REV")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    sys.path.insert(0, str(ROOT))
    from xclip_cli.precision import cpu_description
    from xclip_cli.video.clips import ClipSpec

    spec = ClipSpec(frames=8, image_size=224, window=args.window, stride=args.stride)
    candidates = [str(VIDEOS / c) if not os.path.exists(c) else c for c in args.clips] or default_clips()
    if args.backend == "ffmpeg":
        from xclip_cli.video import decode

        decode.decord = None
    paths = decodable(candidates, spec)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"working tree": str(ROOT)}
        if args.baseline:
            trees[args.baseline] = str(_extract(args.baseline, Path(tmp)))
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeat):  # interleaved, so drift in the machine's speed hits every figure alike
            for name, root in trees.items():
                for workers in args.workers:
                    request = {
                        "root": root,
                        "paths": paths,
                        "workers": workers,
                        "timeout": args.timeout,
                        "window": args.window,
                        "stride": args.stride,
                        "backend": args.backend,
                    }
                    runs.setdefault((name, workers), []).append(_measure(request))

    import platform

    import torch

    print(f"CPU: {cpu_description()}; {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.1f}")
    print(f"Python {platform.python_version()}, torch {torch.__version__}")
    mode = f"windows of {args.window:g} s" if args.window else "whole clips"
    if args.window and args.stride:
        mode += f" every {args.stride:g} s"
    print(
        f"{len(paths)} of {len(candidates)} clips decodable ({len(candidates) - len(paths)} left out), "
        f"{mode}, backend {args.backend}, median of {args.repeat}"
    )
    print()
    print(
        "| code | workers | videos/s | clips/s | seconds | CPU ms/video | videos | clips | errors "
        "| import s | heavy imports |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, workers), results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        first = results[0]
        print(
            f"| {name} | {workers} | {first['videos'] / seconds:.2f} | {first['clips'] / seconds:.2f} "
            f"| {seconds:.2f} | {1000 * statistics.median(r['cpu_s'] for r in results) / max(first['videos'], 1):.0f} "
            f"| {first['videos']} | {first['clips']} | {first['errors']} "
            f"| {statistics.median(r['import_s'] for r in results):.2f} "
            f"| {', '.join(first['heavy_imports']) or 'none'} |"
        )


if __name__ == "__main__":
    main()
