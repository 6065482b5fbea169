"""The paper's component ablation (its Table 5) in miniature, on clips whose class only frame order decides.

    python benchmarks/temporal_ablation.py [--seeds 3] [--epochs 8] [--results benchmarks/RESULTS.md]

Synthetic clips: a square that moves left or right, grows or shrinks; each "backward" clip is the exact
time reversal of a "forward" one, so a model that ignores frame order can tell moving from resizing but
never the direction: 50 % is its ceiling (chance is 25 %). A tiny X-CLIP (random init, the tests' TINY
shapes) is fine-tuned with `xclip_cli.training.finetune` (the
project's recipe, same budget for every variant) in four variants:

1. mean: frame features mean-pooled; no cross-frame messages, no MIT, no video-specific prompts;
2. + messages: the cross-frame communication (message tokens) on;
3. + MIT: also the multi-frame integration transformer (temporal position embedding);
4. full X-CLIP: also the video-specific prompt generator.

Variants switch parts off on the loaded model's instances (the weights keep the official layout), so
the training code, checkpoints and evaluation are exactly those of `xclip finetune`.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

VARIANTS = ("mean", "+ messages", "+ MIT", "full X-CLIP")
CLASSES = ("moving right", "moving left", "growing", "shrinking")


# -- synthetic clips ------------------------------------------------------------------------------------
def _frames(kind: str, rng: np.random.Generator, count: int = 16, size: int = 40) -> np.ndarray:
    """uint8 [count, size, size, 3]: a coloured square on a noisy background, forward motion."""
    colour = rng.integers(80, 256, size=3)
    background = rng.integers(0, 60, size=(size, size, 3))
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    y = int(rng.integers(4, size - 16))
    for t in range(count):
        frame = background.copy()
        if kind == "move":
            side, x = 10, int(2 + t * (size - 14) / (count - 1))
            frame[y : y + side, x : x + side] = colour
        else:
            side = int(4 + t * (size - 10) / (count - 1))
            top = (size - side) // 2
            frame[top : top + side, top : top + side] = colour
        frames[t] = frame
    return frames


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    import imageio_ffmpeg

    _, height, width, _ = frames.shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-qp",
        "0",
        "-pix_fmt",
        "yuv444p",
        str(path),
    ]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def make_dataset(folder: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """Train and validation CSVs (path,label) of order-only clips."""
    rng = np.random.default_rng(seed)
    rows = {"train": [], "val": []}
    for i in range(per_class * 2):
        subset = "train" if i % 4 else "val"
        for kind, forward, backward in (("move", *CLASSES[:2]), ("size", *CLASSES[2:])):
            frames = _frames(kind, rng)
            for label, clip in ((forward, frames), (backward, frames[::-1])):
                path = folder / f"{label.replace(' ', '_')}_{i:03d}.mp4"
                write_clip(path, np.ascontiguousarray(clip))
                rows[subset].append((path.name, label))
    out = []
    for subset, items in rows.items():
        csv_path = folder / f"{subset}.csv"
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(items)
        out.append(csv_path)
    return out[0], out[1]


# -- variants -------------------------------------------------------------------------------------------
def _plain_block(self, x: torch.Tensor) -> torch.Tensor:
    """A CLIP block without the cross-frame message token."""
    h = self.ln_1(x)
    x = x + self.drop_path(self.attn(h, h, h, need_weights=False)[0])
    return x + self.drop_path(self.mlp(self.ln_2(x)))


def apply_variant(model, variant: str):
    if variant in ("mean",):
        for block in model.visual.transformer.resblocks:
            block.forward = types.MethodType(_plain_block, block)
    if variant in ("mean", "+ messages"):
        model.mit.forward = lambda x: x.mean(dim=1)
    if variant != "full X-CLIP":
        model.prompts_generator.forward = lambda text, visual: torch.zeros_like(text)
    return model


def train_variant(
    variant: str, seed: int, train_csv: Path, val_csv: Path, base: Path, out: Path, epochs: int
) -> float:
    import xclip_cli.model as model_module
    from xclip_cli.training import finetune

    real = model_module.load_model
    model_module.load_model = lambda *a, **k: apply_variant(real(*a, **k), variant)
    try:
        result = finetune(
            out,
            data=str(train_csv),
            val=str(val_csv),
            model=str(base),
            seed=seed,
            epochs=epochs,
            batch_size=4,
            accum_steps=1,
            lr=5e-5,
            new_lr_mult=100.0,
            warmup_epochs=1,
            workers=0,
        )
    finally:
        model_module.load_model = real
    return result.metrics[-1]["val_top1"]  # the final model's accuracy, not the best epoch's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=16, help="clips per class (3/4 train, 1/4 val)")
    parser.add_argument("--results", type=Path, help="append the table to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from helpers import tiny_model

    from xclip_cli import save_model

    work = Path(tempfile.mkdtemp(prefix="xclip-ablation-"))
    train_csv, val_csv = make_dataset(work, args.per_class, seed=0)
    scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
    start = time.perf_counter()
    for seed in range(args.seeds):
        base = save_model(tiny_model(seed=seed).train(), work / f"init-{seed}")
        for variant in VARIANTS:
            run = work / f"run-{seed}-{variant.strip('+ ').replace(' ', '_')}"
            scores[variant].append(train_variant(variant, seed, train_csv, val_csv, base, run, args.epochs))
            print(f"seed {seed} {variant}: {scores[variant][-1]:.1f}", file=sys.stderr)
    minutes = (time.perf_counter() - start) / 60
    lines = [
        f"### temporal_ablation — {date.today()}",
        "",
        f"{len(CLASSES)} classes (chance 25 %); a model blind to frame order can tell motion from size but not "
        "the direction, so 50 % is its ceiling. "
        f"{args.per_class * 2 * len(CLASSES)} "
        f"clips; tiny X-CLIP from random init, {args.epochs} epochs, same budget per variant; "
        f"{args.seeds} seeds; validation top-1 of the final model of each run. {minutes:.1f} min on {_machine()}.",
        "",
        "| variant | val top-1 % (mean ± std over seeds) | runs |",
        "|---|---|---|",
    ]
    for variant in VARIANTS:
        values = scores[variant]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"| {variant} | {statistics.mean(values):.1f} ± {std:.1f} | {', '.join(f'{v:.0f}' for v in values)} |"
        )
    lines += [
        "",
        f"Command: `python benchmarks/temporal_ablation.py --seeds {args.seeds} --epochs {args.epochs}`",
        "",
    ]
    from tag_throughput import publish  # this folder is on sys.path when the script runs

    publish(lines, args.results)


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    main()
