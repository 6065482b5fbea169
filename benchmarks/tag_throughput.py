"""Tag throughput, side by side in one run: the transformers recipe vs `xclip tag`, each stage alone, start-up.

    python benchmarks/tag_throughput.py [--repeat 2] [--limit N] [--results benchmarks/RESULTS.md]

Same machine, same real clips (every decodable clip in ../shared/data/videos), same weights (the
base-patch32 architecture with random weights, saved once in both formats), same vocabularies (5 labels,
and the 400 Kinetics-400 labels). Every configuration runs in its own process; memory is the peak
proportional set size summed over the process and its decoding workers. The CPU model and the flags
that decide `--precision auto` are printed with the tables.

- stages alone, timed inside their process after a warm-up: decoding (`xclip tag`'s workers and loader,
  benchmarks/decode_rate.py), the visual encoder on pre-decoded tensors in `xclip tag`'s batches (with its
  FLOPs per video and the GFLOP/s achieved against the machine's fp32 peak), and the flow that overlaps
  them (TagRun.results: decode workers + encoder + scores);
- whole processes, start to report written: the baseline (what a user writes from the transformers
  documentation: PyAV decode, 8 frames sampled uniformly, XCLIPProcessor, XCLIPModel per video, fp32) and
  `xclip tag` with its default precision (auto) and with --precision fp32;
- one short video: `xclip tag` against `python -c "import torch"`, alternating;
- cache: `xclip tag --cache` first pass, then re-tags with new vocabularies from the cache;
- auto vs fp32 agreement: top-1 of the two 400-label reports, video-embedding cosine on every clip.

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
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
K400 = ROOT.parent / "shared" / "data" / "labels" / "kinetics_400_labels.csv"
BATCH = 4  # `xclip tag --batch-size` default
FIVE = ["riding a bike", "flipping pancake", "waving hand", "drinking water", "juggling soccer ball"]


# -- the measured programs (each runs in its own process) -------------------------------------------
def run_baseline(clips: list[str], labels: list[str], hf_dir: str, tok_dir: str, device: str = "cpu") -> None:
    """The transformers documentation's recipe, one video at a time (fp32, on `device`)."""
    import av
    import numpy as np
    import torch
    from transformers import CLIPTokenizer, VideoMAEImageProcessor, XCLIPModel, XCLIPProcessor

    processor = XCLIPProcessor(
        image_processor=VideoMAEImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
            resample=2,
        ),
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
    )
    model = XCLIPModel.from_pretrained(hf_dir).eval().to(device)
    predictions, failed = [], 0
    for path in clips:
        try:  # the documentation's read_video_pyav: decode from the start, keep the wanted frames
            with av.open(path, metadata_errors="ignore") as container:
                stream = container.streams.video[0]
                total = stream.frames or sum(1 for _ in container.decode(video=0))
                container.seek(0)
                wanted = np.linspace(0, max(total - 1, 0), num=8).astype(int)
                frames = []
                for i, frame in enumerate(container.decode(video=0)):
                    if i > wanted[-1]:
                        break
                    frames += [frame.to_ndarray(format="rgb24")] * int((wanted == i).sum())
            frames += frames[-1:] * (8 - len(frames))  # headers that overstate the frame count
            inputs = processor(text=labels, videos=frames, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                probs = model(**inputs).logits_per_video.softmax(dim=1)
            predictions.append(labels[int(probs.argmax())])
        except Exception as err:  # what the recipe cannot read (e.g. a 1x1-pixel video) is skipped
            print(f"baseline skips {path}: {err}", file=sys.stderr)
            failed += 1
    print(json.dumps({"videos": len(predictions), "failed": failed}))


def run_bound(clips: list[str], ours_dir: str, precision: str, batch_size: int, device: str = "cpu") -> None:
    """Our visual encoder on tensors decoded and normalised beforehand, in `xclip tag`'s batches; only
    the encoder is timed. Also counts its FLOPs per video (torch's FlopCounterMode: matmuls, convolution,
    attention; 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from xclip_cli import load_model

    model = load_model(ours_dir, precision=precision, device=device)
    tensors = [views_of(model, p) for p in clips]
    batches = [torch.cat(tensors[i : i + batch_size]).to(device) for i in range(0, len(tensors), batch_size)]
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model.encode_video(batches[0][:1])  # also the warm-up
        start = time.perf_counter()
        for views in batches:
            model.encode_video(views)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "videos": len(tensors),
                "encoder_seconds": seconds,
                "gflop_per_video": counter.get_total_flops() / 1e9,
                "precision": model.precision,
            }
        )
    )


def run_decode(clips: list[str], workers: int) -> None:
    """Decoding alone: the clips' views through `xclip tag`'s workers and loader, nothing else."""
    from decode_rate import decode_rate

    from xclip_cli.video.clips import ClipSpec

    spec = ClipSpec(frames=8, image_size=224)
    print(json.dumps(decode_rate(clips, spec, workers=workers, timeout=120.0)))


def run_pipeline(
    clips: list[str], ours_dir: str, precision: str, workers: int, labels: list[str], device: str = "cpu"
) -> None:
    """The whole flow in one process after start-up and a warm-up: decode workers, encoder, scores
    (timed: the results of every clip, from the first task handed out to the last result)."""
    from xclip_cli.pipeline import VideoTask
    from xclip_cli.tagging import prepare

    run = prepare(labels=labels, model=ours_dir, precision=precision, workers=workers, device=device)
    list(run.results([VideoTask(clips[0])]))  # warm-up (and the vocabulary), as the stages alone have
    start = time.perf_counter()
    results = [r for rs in run.results([VideoTask(c) for c in clips]) for r in rs]
    seconds = time.perf_counter() - start
    failed = sum(r.error is not None for r in results)
    print(json.dumps({"videos": len(clips), "flow_seconds": seconds, "failed": failed}))


def views_of(model, path: str):
    """The 1x1 test views `xclip tag` feeds `model` for the clip at `path`."""
    from xclip_cli.video.clips import ClipSpec, VideoTask, load_clips

    spec = ClipSpec(frames=model.frames, image_size=model.image_size, mean=model.mean, std=model.std)
    return next(iter(load_clips(VideoTask(path), spec))).views


def run_cache(clips: list[str], ours_dir: str, vocabularies: list[list[str]], cache: str) -> None:
    """A first pass that fills a feature cache, then re-tags with other vocabularies, in one process that
    loaded the model once (as a library user or a notebook does; the first pass is timed with the load)."""
    from xclip_cli import load_model, tag

    times = []
    start = time.perf_counter()
    model = load_model(ours_dir, device="auto")
    for labels in vocabularies:
        list(tag(clips, labels=labels, model=model, cache=cache))
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    print(json.dumps({"videos": len(clips), "times": times}))


# -- the driver ----------------------------------------------------------------------------------------
def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds, peak memory and the last JSON line printed by `cmd`.

    rss_mb is the largest single process's peak RSS (GNU time); pss_mb the peak, sampled every 0.1 s,
    of the proportional set size summed over the process and its worker processes (shared pages
    counted once), i.e. the memory the whole run takes.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        peak = [0.0]
        sampler = threading.Thread(target=_sample_pss, args=(proc, peak), daemon=True)
        sampler.start()
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        sampler.join()
        rss_kb = int(tf.read().strip().splitlines()[-1])
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    last = [line for line in stdout.splitlines() if line.startswith("{")]
    info = json.loads(last[-1]) if last and "videos" in last[-1] else {}
    return {"wall": wall, "rss_mb": rss_kb / 1024, "pss_mb": peak[0], **info}


def _sample_pss(proc: subprocess.Popen, peak: list[float]) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], sum(_pss_kb(pid) for pid in _tree(proc.pid)) / 1024)
        time.sleep(0.1)


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


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
    # transformers spells CLIP's special tokens <|startoftext|> / <|endoftext|>: same ids, other names.
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (tok_dir / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in tok.encoder.items()}))
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return str(ours), str(workdir / "hf"), str(tok_dir)


def agreement(
    clips: list[str], ours_dir: str, precision: str, fp32_report: Path, report: Path, device: str = "cpu"
) -> dict:
    """`precision` vs fp32: top-1 agreement of the two reports; video-embedding cosine on every clip."""
    import torch

    from xclip_cli import load_model

    def top1(path: Path) -> dict[str, str]:
        rows = map(json.loads, path.read_text().splitlines())
        return {row["path"]: row["label"] for row in rows if not row["error"]}

    a, b = top1(fp32_report), top1(report)
    full = load_model(ours_dir, precision="fp32", device=device)
    other = load_model(ours_dir, precision=precision, device=device)
    cos = []
    with torch.no_grad():
        for path in clips:
            views = views_of(full, path)
            x, y = full.encode_video(views).embedding, other.encode_video(views).embedding.float()
            cos.append(torch.nn.functional.cosine_similarity(x, y).item())
    return {
        "min_cos": min(cos),
        "mean_cos": sum(cos) / len(cos),
        "top1_agree": sum(a[p] == b.get(p) for p in a) / len(a),
        "clips": len(cos),
    }


def fp32_peak_gflops() -> tuple[float, str]:
    """This machine's fp32 peak, cores x clock x FLOPs per cycle, and how it was reckoned.

    FLOPs per cycle per core: 2 FMA units x vector lanes x 2 (an FMA is a multiply and an add); lanes 16
    with AVX-512, 8 with AVX2. AMD Zen 3/4 (family 25) run AVX-512 on 256-bit units: 8 lanes.
    """
    from xclip_cli.precision import cpu_features

    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    ghz = float(info.get("cpu MHz", "0")) / 1000
    flags = cpu_features()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    if info.get("vendor_id") == "AuthenticAMD" and info.get("cpu family") == "25":
        lanes = min(lanes, 8)
    cores = os.cpu_count() or 1
    per_cycle = 2 * lanes * 2
    return (
        cores * ghz * per_cycle,
        f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle (2 FMA x {lanes} lanes x 2)",
    )


def startup(short_clip: str, ours_dir: str, label_file: Path, repeat: int) -> dict:
    """`xclip tag` on one short clip and `python -c "import torch"`, alternately; medians of `repeat`."""
    torch_s, tag_s = [], []
    tag_cmd = [
        sys.executable,
        "-m",
        "xclip_cli",
        "tag",
        short_clip,
        "-m",
        ours_dir,
        "--labels",
        str(label_file),
    ]
    for _ in range(repeat):
        torch_s.append(measure([sys.executable, "-c", "import torch"])["wall"])
        tag_s.append(measure(tag_cmd)["wall"])
    return {"torch": sorted(torch_s)[repeat // 2], "tag": sorted(tag_s)[repeat // 2], "repeat": repeat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N clips (a quick look)")
    parser.add_argument("--results", type=Path, help="append the tables to this markdown file")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per whole-process configuration; the fastest counts"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # a child process: one measured configuration
        spec = json.loads(args.args)
        if args.run == "baseline":
            run_baseline(spec["clips"], spec["labels"], spec["hf"], spec["tok"], spec["device"])
        elif args.run == "cache":
            run_cache(spec["clips"], spec["ours"], spec["vocabularies"], spec["cache"])
        elif args.run == "decode":
            run_decode(spec["clips"], spec["workers"])
        elif args.run == "pipeline":
            run_pipeline(
                spec["clips"],
                spec["ours"],
                spec["precision"],
                spec["workers"],
                spec["labels"],
                spec["device"],
            )
        else:
            run_bound(spec["clips"], spec["ours"], spec["precision"], spec["batch_size"], spec["device"])
        return

    import torch

    from xclip_cli.precision import cpu_description, resolve_precision
    from xclip_cli.tagging import default_workers

    clips = decodable_clips(args.limit)
    n = len(clips)
    with open(K400, newline="") as f:
        k400 = [row["name"] for row in csv.DictReader(f)]
    vocabularies = {"5 labels": FIVE, "400 labels (K400)": k400}
    work = Path(tempfile.mkdtemp(prefix="xclip-bench-"))
    ours, hf, tok = save_weights(work)
    me = [sys.executable, __file__]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    xclip = [sys.executable, "-m", "xclip_cli", "tag", *clips, "-m", ours, "--format", "jsonl", "--overwrite"]
    xclip += ["--device", device]
    auto = resolve_precision("auto", device)
    precisions = [auto] + (["fp32"] if auto != "fp32" else [])
    workers = default_workers(device)

    def best(cmd: list[str], repeat: int = args.repeat) -> dict:
        """The fastest of `repeat` runs (this machine's speed drifts by 10-15 % from run to run)."""
        runs = [measure(cmd) for _ in range(repeat)]
        return {**min(runs, key=lambda m: m["wall"]), "pss_mb": max(m["pss_mb"] for m in runs)}

    def child(kind: str, **spec) -> list[str]:
        return [*me, "--run", kind, "--args", json.dumps(spec)]

    def labels_file(name: str, labels: list[str]) -> Path:
        path = work / f"{name}.txt"
        path.write_text("\n".join(labels) + "\n")
        return path

    # The stages alone, and the flow that overlaps them, each in its own process, timed inside it.
    bounds = {
        p: measure(child("bound", clips=clips, ours=ours, precision=p, batch_size=BATCH, device=device))
        for p in precisions
    }
    decode = measure(child("decode", clips=clips, workers=workers))
    flows = {
        p: measure(
            child(
                "pipeline", clips=clips, ours=ours, precision=p, workers=workers, labels=FIVE, device=device
            )
        )
        for p in precisions
    }
    header = [
        f"### tag_throughput — {date.today()}",
        "",
        f"Machine: {cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
        f"{platform.python_version()}. {n} clips (every decodable clip in ../shared/data/videos); base-patch32 "
        f"architecture, random weights. Device {device}{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}; "
        f"`--precision auto` picks {auto} here; decode workers: {workers}.",
        "",
    ]
    lines = [
        "| stage, in one process after start-up | precision | s | videos/s | flow vs slowest stage |",
        "|---|---|---|---|---|",
        f"| decode alone ({workers} workers, 8 frames, 224 px) | | {decode['seconds']:.1f} | "
        f"{n / decode['seconds']:.2f} | |",
    ]
    for p in precisions:
        enc, flow = bounds[p]["encoder_seconds"], flows[p]["flow_seconds"]
        lines += [
            f"| encoder alone, batches of {BATCH} | {p} | {enc:.1f} | {n / enc:.2f} | |",
            f"| the flow: decode workers + encoder + scores (5 labels) | {p} | {flow:.1f} | {n / flow:.2f} | "
            f"{flow / max(enc, decode['seconds']):.2f}x |",
        ]
    if "fp32" in bounds and device == "cpu":
        peak, reckoning = fp32_peak_gflops()
        b = bounds["fp32"]
        achieved = b["gflop_per_video"] * n / b["encoder_seconds"]
        lines += [
            "",
            f"fp32 encoder: {b['gflop_per_video']:.1f} GFLOP per video (FlopCounterMode), {achieved:.0f} GFLOP/s "
            f"achieved = {achieved / peak * 100:.0f}% of this machine's fp32 peak {peak:.0f} GFLOP/s ({reckoning}).",
        ]
    lines += [
        "",
        "| vocabulary | whole process (start to report written) | wall s | videos/s | vs baseline | vs slowest stage | peak PSS MB (all processes) | peak RSS MB (largest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reports = {}
    for name, labels in vocabularies.items():
        label_file = labels_file(f"labels-{len(labels)}", labels)
        base = best(child("baseline", clips=clips, labels=labels, hf=hf, tok=tok, device=device))
        runs = {}
        for p in precisions:
            reports[name, p] = work / f"{p}-{len(labels)}.jsonl"
            flag = [] if p == auto else ["--precision", p]
            runs[p] = best([*xclip, "--labels", str(label_file), *flag, "-o", str(reports[name, p])])
        rows = [
            (
                f"baseline (transformers docs, fp32; {base['videos']} read, {base['failed']} it cannot read)",
                base,
                None,
            )
        ]
        rows += [
            (f"`xclip tag`{'' if p == auto else ' --precision ' + p} ({p})", runs[p], p) for p in precisions
        ]
        for label, m, p in rows:
            videos = m.get("videos", n) if m is base else n
            slowest = f"{m['wall'] / max(bounds[p]['encoder_seconds'], decode['seconds']):.2f}x" if p else ""
            lines.append(
                f"| {name} | {label} | {m['wall']:.1f} | {videos / m['wall']:.2f} | "
                f"{base['wall'] / m['wall']:.2f}x | {slowest} | {m['pss_mb']:.0f} | {m['rss_mb']:.0f} |"
            )

    short = str(VIDEOS / "torchvision/RATRACE_wave_f_nm_np1_fr_goo_37.avi")  # 2.4 s, 560x240: HMDB-51's kind
    up = startup(short, ours, labels_file("labels-5", FIVE), repeat=5)
    lines += [
        "",
        f"One short video (`xclip tag {Path(short).name} --labels 5-labels.txt`, median of {up['repeat']}, "
        f'alternating): {up["tag"]:.2f} s; `python -c "import torch"` {up["torch"]:.2f} s: '
        f"+{up['tag'] - up['torch']:.2f} s over the torch import.",
    ]

    cached = [FIVE, ["surfing", "cooking", "dancing", "playing guitar", "walking the dog"], k400]
    files = [labels_file(f"cache-vocab-{i}", labels) for i, labels in enumerate(cached)]
    cache = work / "cache"
    procs = [
        measure([*xclip, "--labels", str(f), "--cache", str(cache), "-o", str(work / f"c{i}.jsonl")])
        for i, f in enumerate(files)
    ]
    inproc = measure(child("cache", clips=clips, ours=ours, vocabularies=cached, cache=str(work / "cache2")))
    lines += [
        "",
        "| feature cache | first pass (5 labels) s | re-tag, 5 new labels s | speed-up | re-tag, 400 new labels s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for label, t in [
        ("`xclip tag --cache` processes (wall, incl. start-up)", [m["wall"] for m in procs]),
        ("`tag(..., model=, cache=)` calls in one process (model loaded once)", inproc["times"]),
    ]:
        lines.append(
            f"| {label} | {t[0]:.1f} | {t[1]:.2f} | {t[0] / t[1]:.0f}x | {t[2]:.2f} | {t[0] / t[2]:.0f}x |"
        )
    if auto != "fp32":
        agree = agreement(
            clips,
            ours,
            auto,
            reports["400 labels (K400)", "fp32"],
            reports["400 labels (K400)", auto],
            device,
        )
        lines += [
            "",
            f"{auto} vs fp32: video-embedding cosine min {agree['min_cos']:.5f}, mean {agree['mean_cos']:.5f} "
            f"({agree['clips']} clips); top-1 agreement over 400 labels {agree['top1_agree'] * 100:.0f}% (random "
            "weights give near-tied scores, a harsh test).",
        ]
    lines += [
        "",
        f"Command: `python benchmarks/tag_throughput.py --repeat {args.repeat}"
        f"{' --limit ' + str(args.limit) if args.limit else ''}`",
        "",
    ]
    publish(header + lines, args.results)


def publish(lines: list[str], results: Path | None) -> None:
    """Print a markdown block, and append it to `results` when given (the benchmarks' shared output)."""
    text = "\n".join(lines)
    print(text)
    if results:
        with open(results, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
