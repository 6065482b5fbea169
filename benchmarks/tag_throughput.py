"""Tag throughput, side by side in one run: the transformers recipe vs `xclip tag` vs our encoder alone.

    python benchmarks/tag_throughput.py [--limit N] [--results benchmarks/RESULTS.md]

Same machine, same real clips (every decodable clip in ../shared/data/videos), same weights (the
base-patch32 architecture with random weights, saved once in both formats), same vocabularies (5 labels,
and the 400 Kinetics-400 labels). Every configuration runs in its own process under /usr/bin/time, so the
wall time includes process start and the peak RSS is that process's.

- baseline: what a user writes from the transformers documentation: PyAV decode, 8 frames sampled
  uniformly, XCLIPProcessor (VideoMAE image processor + CLIP tokenizer), XCLIPModel(...) per video, fp32;
- ours: the `xclip tag` command end to end (process start to report written), default settings, and
  with --precision bf16;
- bound: our visual encoder alone on pre-decoded, pre-normalised tensors of the same clips (timed inside
  the process: the encoder's time only);
- cache: `xclip tag --cache` first pass, then a re-tag with another vocabulary from the cache.

Needs the benchmark extras: `pip install -e '.[bench]'` (PyAV and transformers).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
K400 = ROOT.parent / "shared" / "data" / "labels" / "kinetics_400_labels.csv"
FIVE = ["riding a bike", "flipping pancake", "waving hand", "drinking water", "juggling soccer ball"]


# -- the measured programs (each runs in its own process) -------------------------------------------
def run_baseline(clips: list[str], labels: list[str], hf_dir: str, tok_dir: str) -> None:
    """The transformers documentation's recipe, one video at a time."""
    import av
    import numpy as np
    import torch
    from transformers import CLIPTokenizer, VideoMAEImageProcessor, XCLIPModel, XCLIPProcessor

    processor = XCLIPProcessor(
        image_processor=VideoMAEImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=2,
        ),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
    )
    model = XCLIPModel.from_pretrained(hf_dir).eval()
    out = []
    for path in clips:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            total = stream.frames or sum(1 for _ in container.decode(video=0))
            container.seek(0)
            wanted = set(np.linspace(0, max(total - 1, 0), num=8).astype(int).tolist())
            frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i in wanted]
        while len(frames) < 8:
            frames.append(frames[-1])
        inputs = processor(text=labels, videos=list(frames[:8]), return_tensors="pt", padding=True)
        with torch.no_grad():
            probs = model(**inputs).logits_per_video.softmax(dim=1)
        out.append(labels[int(probs.argmax())])
    print(json.dumps({"videos": len(out)}))


def run_bound(clips: list[str], ours_dir: str, precision: str) -> None:
    """Our visual encoder on tensors decoded and normalised beforehand; only the encoder is timed."""
    import torch

    from xclip_cli import load_model
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    model = load_model(ours_dir, precision=precision)
    spec = ClipSpec(frames=model.frames, image_size=model.image_size, mean=model.mean, std=model.std)
    tensors = [next(iter(load_clips(VideoTask(p), spec))).views for p in clips]
    with torch.no_grad():
        model.encode_video(tensors[0])  # warm-up
        start = time.perf_counter()
        for views in tensors:
            model.encode_video(views)
        seconds = time.perf_counter() - start
    print(json.dumps({"videos": len(tensors), "encoder_seconds": seconds}))


def run_cache(clips: list[str], ours_dir: str, first: list[str], second: list[str], cache: str) -> None:
    """First pass with a feature cache, then a re-tag with another vocabulary, timed inside one process."""
    from xclip_cli import tag

    start = time.perf_counter()
    list(tag(clips, labels=first, model=ours_dir, cache=cache))
    middle = time.perf_counter()
    list(tag(clips, labels=second, model=ours_dir, cache=cache))
    print(json.dumps({"videos": len(clips), "first": middle - start, "again": time.perf_counter() - middle}))


# -- the driver ----------------------------------------------------------------------------------------
def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds, peak RSS (MB) and the last JSON line printed by `cmd`."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        wall = time.perf_counter() - start
        rss_kb = int(tf.read().strip().splitlines()[-1])
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    info = json.loads(last[-1]) if last and "videos" in last[-1] else {}
    return {"wall": wall, "rss_mb": rss_kb / 1024, **info}


def decodable_clips(limit: int | None) -> list[str]:
    from xclip_cli.video import VideoError, probe

    with open(VIDEOS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    clips = []
    for row in rows:
        path = str(VIDEOS / row["path"])
        if not row["video_codec"] or "corrupt" in row["path"]:
            continue
        try:
            probe(path)
        except VideoError:
            continue
        clips.append(path)
    return clips[:limit] if limit else clips


def save_weights(workdir: Path) -> tuple[str, str, str]:
    """Random base-patch32 weights, saved once as ours and as transformers'; a CLIP tokenizer folder."""
    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import XCLIPConfig as HFConfig
    from transformers import XCLIPModel

    from xclip_cli.model import XCLIP, XCLIPConfig, save_model
    from xclip_cli.model.checkpoints import official_to_hf

    torch.manual_seed(0)
    model = XCLIP(XCLIPConfig()).eval()
    ours = save_model(model, workdir / "ours")
    hf = XCLIPModel(HFConfig())
    hf.load_state_dict(official_to_hf(model.state_dict()), strict=False)
    hf.save_pretrained(workdir / "hf")
    tok = SimpleTokenizer()
    tok_dir = workdir / "tokenizer"
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(tok.encoder))
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return str(ours), str(workdir / "hf"), str(tok_dir)


def agreement(clips: list[str], ours_dir: str, labels: list[str]) -> dict:
    """bf16 vs fp32 on the CPU: embedding cosine and top-1 agreement over the clips."""
    import torch

    from xclip_cli import load_model
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    full, half = load_model(ours_dir), load_model(ours_dir, precision="bf16")
    spec = ClipSpec(frames=full.frames, image_size=full.image_size, mean=full.mean, std=full.std)
    ids = full.tokenize(labels)
    cos, same = [], 0
    with torch.no_grad():
        t_full, t_half = full.encode_text(ids), half.encode_text(ids)
        for path in clips:
            views = next(iter(load_clips(VideoTask(path), spec))).views
            a, b = full.encode_video(views), half.encode_video(views)
            cos.append(torch.nn.functional.cosine_similarity(a.embedding, b.embedding.float()).item())
            same += int(full.logits(a, t_full).argmax() == half.logits(b, t_half).argmax())
    return {"min_cos": min(cos), "mean_cos": sum(cos) / len(cos), "top1_agree": same / len(clips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N clips (a quick look)")
    parser.add_argument("--results", type=Path, help="append the tables to this markdown file")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # a child process: one measured configuration
        spec = json.loads(args.args)
        if args.run == "baseline":
            run_baseline(spec["clips"], spec["labels"], spec["hf"], spec["tok"])
        elif args.run == "cache":
            run_cache(spec["clips"], spec["ours"], spec["first"], spec["second"], spec["cache"])
        else:
            run_bound(spec["clips"], spec["ours"], spec["precision"])
        return

    import torch

    clips = decodable_clips(args.limit)
    vocabularies = {"5 labels": FIVE}
    with open(K400, newline="") as f:
        vocabularies["400 labels (K400)"] = [row["name"] for row in csv.DictReader(f)]
    work = Path(tempfile.mkdtemp(prefix="xclip-bench-"))
    ours, hf, tok = save_weights(work)
    me = [sys.executable, __file__]
    xclip = [sys.executable, "-m", "xclip_cli", "tag", *clips, "-m", ours, "--format", "jsonl"]
    lines = [
        f"### tag_throughput — {date.today()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"({_cpu_model()}), torch {torch.__version__}, Python {platform.python_version()}. "
        f"{len(clips)} clips; base-patch32 architecture, random weights; wall time includes process start.",
        "",
        "| vocabulary | configuration | wall s | videos/s | vs baseline | vs bound | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    bound = measure([*me, "--run", "bound", "--args", json.dumps({"clips": clips, "ours": ours, "precision": "fp32"})])
    bound_bf16 = measure([*me, "--run", "bound", "--args", json.dumps({"clips": clips, "ours": ours, "precision": "bf16"})])
    for name, labels in vocabularies.items():
        label_file = work / f"labels-{len(labels)}.txt"
        label_file.write_text("\n".join(labels) + "\n")
        base = measure([*me, "--run", "baseline", "--args", json.dumps({"clips": clips, "labels": labels, "hf": hf, "tok": tok})])
        fp32 = measure([*xclip, "--labels", str(label_file), "-o", str(work / f"o{len(labels)}.jsonl")])
        bf16 = measure([*xclip, "--labels", str(label_file), "--precision", "bf16", "-o", str(work / f"b{len(labels)}.jsonl")])
        n = len(clips)
        for label, m, b in [("baseline (transformers docs)", base, None), ("ours `xclip tag`", fp32, bound),
                            ("ours `xclip tag --precision bf16`", bf16, bound_bf16)]:
            vs_base = f"{base['wall'] / m['wall']:.2f}x" if m is not base else "1.00x"
            vs_bound = f"{m['wall'] / b['encoder_seconds']:.2f}x" if b else ""
            lines.append(f"| {name} | {label} | {m['wall']:.1f} | {n / m['wall']:.2f} | {vs_base} | {vs_bound} | {m['rss_mb']:.0f} |")
    for label, b in [("bound: encoder alone, fp32", bound), ("bound: encoder alone, bf16", bound_bf16)]:
        lines.append(f"| any | {label} | {b['encoder_seconds']:.1f} | {len(clips) / b['encoder_seconds']:.2f} | | 1.00x | {b['rss_mb']:.0f} |")

    cache = work / "cache"
    first = measure([*xclip, "--label", "a", "--label", "b", "--cache", str(cache), "-o", str(work / "c1.jsonl")])
    again = measure([*xclip, "--labels", str(work / "labels-400.txt"), "--cache", str(cache), "-o", str(work / "c2.jsonl")])
    inproc = measure([*me, "--run", "cache", "--args", json.dumps({
        "clips": clips, "ours": ours, "first": ["a", "b"], "second": vocabularies["400 labels (K400)"],
        "cache": str(work / "cache2")})])
    lines += [
        "",
        "| feature cache | first pass s | re-tag with 400 new labels s | speed-up |",
        "|---|---|---|---|",
        f"| `xclip tag --cache` processes (wall, incl. start) | {first['wall']:.1f} | {again['wall']:.1f} | "
        f"{first['wall'] / again['wall']:.1f}x |",
        f"| `tag(..., cache=)` in one process (incl. model load) | {inproc['first']:.1f} | {inproc['again']:.1f} | "
        f"{inproc['first'] / inproc['again']:.1f}x |",
    ]
    agree = agreement(clips, ours, vocabularies["400 labels (K400)"])
    lines += [
        "",
        f"bf16 vs fp32 (CPU): video-embedding cosine min {agree['min_cos']:.4f}, mean {agree['mean_cos']:.4f}; "
        f"top-1 agreement over 400 labels {agree['top1_agree'] * 100:.0f}% (random weights: near-tied scores "
        "make this a harsh test).",
        "",
        f"Command: `python benchmarks/tag_throughput.py{' --limit ' + str(args.limit) if args.limit else ''}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(text + "\n")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
