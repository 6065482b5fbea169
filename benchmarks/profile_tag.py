"""Where the time of `xclip tag` goes, next to the transformers baseline's: the profile behind RESULTS.md.

    python benchmarks/profile_tag.py [--limit N] [--results benchmarks/RESULTS.md]

1. One `tag` run in this process, split into stages: imports, model load + vocabulary, the visual
   encoder, time spent waiting for decoded clips, and the rest (scoring, rows).
2. torch.profiler operator tables, per video, for our visual encoder and for transformers'
   `XCLIPModel(...)` call (which also encodes the text of every label, for every video).

Same clips, weights (base-patch32 shapes, random) and 5-label vocabulary as tag_throughput.py.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import sys  # noqa: E402
from datetime import date  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from xclip_cli import pipeline, tagging, workers  # noqa: E402

IMPORTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).parent))
import tag_throughput as bench  # noqa: E402


def stages(clips: list[str], model_dir: str) -> dict[str, float]:
    """Seconds per stage of one in-process tag run with default settings."""
    spent = {"encoder": 0.0, "waiting for decoded clips": 0.0}
    encode, run = pipeline.TagRun._encode, workers.WorkerPool.run

    def timed_encode(self, batch):
        start = time.perf_counter()
        encode(self, batch)
        spent["encoder"] += time.perf_counter() - start

    def timed_run(self, tasks):
        stream = run(self, tasks)
        while True:
            start = time.perf_counter()
            item = next(stream, None)
            spent["waiting for decoded clips"] += time.perf_counter() - start
            if item is None:
                return
            yield item

    pipeline.TagRun._encode, workers.WorkerPool.run = timed_encode, timed_run
    try:
        start = time.perf_counter()
        tag_run = tagging.prepare(labels=bench.FIVE, model=model_dir)
        loaded = time.perf_counter()
        rows = [row for rows in tag_run.run([pipeline.VideoTask(c) for c in clips]) for row in rows]
        end = time.perf_counter()
    finally:
        pipeline.TagRun._encode, workers.WorkerPool.run = encode, run
    assert len(rows) == len(clips)
    rest = (end - loaded) - spent["encoder"] - spent["waiting for decoded clips"]
    return {
        "imports (torch, open_clip, decord)": IMPORTED - START,
        "model load + 5-label vocabulary": loaded - start,
        **spent,
        "scoring, rows, worker start/stop": rest,
        "total": (IMPORTED - START) + (end - start),
    }


def operator_table(fn, runs: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--results", type=Path, help="append the profile to this markdown file")
    args = parser.parse_args()
    import tempfile

    clips = bench.decodable_clips(args.limit)
    ours, hf_dir, tok_dir = bench.save_weights(Path(tempfile.mkdtemp(prefix="xclip-profile-")))
    times = stages(clips, ours)

    from transformers import CLIPTokenizer, XCLIPModel

    from xclip_cli import load_model

    model = load_model(ours)
    hf = XCLIPModel.from_pretrained(hf_dir).eval()
    tokens = CLIPTokenizer.from_pretrained(tok_dir)(bench.FIVE, padding=True, return_tensors="pt")
    video = torch.randn(1, model.frames, 3, model.image_size, model.image_size)
    ours_table = operator_table(lambda: model.encode_video(video), runs=3)
    hf_table = operator_table(lambda: hf(pixel_values=video, **tokens), runs=3)

    lines = [
        f"### profile_tag — {date.today()}",
        "",
        f"{len(clips)} clips, 5 labels, default settings; {bench._cpu_model()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}.",
        "",
        "| stage of one `tag` run (in process) | seconds | share |",
        "|---|---|---|",
        *[f"| {k} | {v:.1f} | {v / times['total'] * 100:.0f} % |" for k, v in times.items()],
        "",
        "Operators, 3 videos (8 frames each). Ours, `encode_video` (the visual side; text is encoded once per run):",
        "",
        "```",
        ours_table.rstrip(),
        "```",
        "",
        "transformers, `XCLIPModel(pixel_values=..., input_ids=...)` with 5 labels (the text encoder runs for every video):",
        "",
        "```",
        hf_table.rstrip(),
        "```",
        "",
        f"Command: `python benchmarks/profile_tag.py{' --limit ' + str(args.limit) if args.limit else ''}`",
        "",
    ]
    bench.publish(lines, args.results)


if __name__ == "__main__":
    main()
