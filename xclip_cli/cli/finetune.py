"""``xclip finetune``: fine-tune X-CLIP on labelled clips (official recipe), resumable, torchrun-ready.

Parse, call :func:`xclip_cli.training.finetune`, render its progress on stderr. Option values are checked by
:meth:`xclip_cli.training.FinetuneConfig.validate` (one line each, exit 2, before anything loads), not by
click ranges, so that the CLI and the Python API refuse the same values with the same words.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from .common import (
    Precision,
    Reporter,
    device_option,
    frames_option,
    interrupted,
    model_option,
    progress_option,
    threads_option,
    workers_option,
)


class FinetuneDataset(str, Enum):
    hmdb51 = "hmdb51"
    ucf101 = "ucf101"


_RECIPE = "Recipe"
_DATA = "Data"
_RUN = "Run folder and execution"


def finetune_command(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Run folder (config, checkpoints, metrics, curves).", rich_help_panel=_RUN
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Training clips: CSV with path,label[,start,end]; paths relative to the CSV.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    val: Annotated[
        Path | None, typer.Option("--val", help="Validation clips, same CSV format.", rich_help_panel=_DATA)
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Without --val: split this stratified fraction off the training clips.",
            rich_help_panel=_DATA,
        ),
    ] = 0.0,
    dataset: Annotated[
        FinetuneDataset | None,
        typer.Option(
            "--dataset",
            help="Official layout instead of --data: its train list; validation on its test list.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="--dataset folder.", rich_help_panel=_DATA)
    ] = None,
    split: Annotated[int, typer.Option(help="--dataset split (1-3).", rich_help_panel=_DATA)] = 1,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            "-l",
            help="Class names in class order (one per line, or CSV with a name column). Default: the training labels, sorted.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(
            help="Few-shot: K clips per class drawn with --seed (the paper's 2/4/8/16-shot protocol).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of everything random (sampling, augmentation, mixup, order, shots).",
            rich_help_panel=_DATA,
        ),
    ] = 1024,
    model: Annotated[
        str,
        model_option(
            help="Start from: a CLIP backbone (new modules initialised) or an X-CLIP checkpoint; anything --model of tag takes.",
            rich_help_panel=_RECIPE,
        ),
    ] = "clip-b32",
    frames: Annotated[
        int | None,
        frames_option(
            help="Frames per clip, 1-64 (default: the checkpoint's, 8 for CLIP).", rich_help_panel=_RECIPE
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(rich_help_panel=_RECIPE)] = 30,
    batch_size: Annotated[
        int, typer.Option(help="Clips per forward pass, over all processes.", rich_help_panel=_RECIPE)
    ] = 8,
    accum_steps: Annotated[
        int, typer.Option(help="Forward passes per optimizer step.", rich_help_panel=_RECIPE)
    ] = 4,
    lr: Annotated[
        float, typer.Option(help="Peak learning rate of the CLIP weights.", rich_help_panel=_RECIPE)
    ] = 8e-6,
    new_lr_mult: Annotated[
        float,
        typer.Option(
            help="Learning-rate factor of the message_, mit and prompts parameters.", rich_help_panel=_RECIPE
        ),
    ] = 10.0,
    min_lr: Annotated[
        float | None,
        typer.Option(help="Cosine floor, all groups (default: lr / 100).", rich_help_panel=_RECIPE),
    ] = None,
    weight_decay: Annotated[
        float,
        typer.Option(
            help="AdamW decay (none on 1-D params, biases, positional embeddings).", rich_help_panel=_RECIPE
        ),
    ] = 0.001,
    warmup_epochs: Annotated[
        float, typer.Option(help="Linear warmup from 0.", rich_help_panel=_RECIPE)
    ] = 5.0,
    label_smoothing: Annotated[float, typer.Option(rich_help_panel=_RECIPE)] = 0.1,
    mixup: Annotated[float, typer.Option(help="Mixup Beta alpha (0: off).", rich_help_panel=_RECIPE)] = 0.8,
    cutmix: Annotated[float, typer.Option(help="Cutmix Beta alpha (0: off).", rich_help_panel=_RECIPE)] = 1.0,
    mixup_switch_prob: Annotated[
        float, typer.Option(help="Chance of cutmix rather than mixup per batch.", rich_help_panel=_RECIPE)
    ] = 0.5,
    augment: Annotated[
        bool,
        typer.Option(
            help="Multi-scale crop, flip, colour jitter, greyscale (off: centre crop).",
            rich_help_panel=_RECIPE,
        ),
    ] = True,
    freeze: Annotated[
        list[str],
        typer.Option(
            "--freeze",
            help="Also freeze parameters whose name contains this (repeatable).",
            rich_help_panel=_RECIPE,
        ),
    ] = [],
    grad_checkpointing: Annotated[
        bool,
        typer.Option(
            help="Recompute visual blocks in the backward pass (less memory).", rich_help_panel=_RECIPE
        ),
    ] = False,
    precision: Annotated[
        Precision | None,
        typer.Option(
            "--precision",
            envvar="XCLIP_PRECISION",
            help="auto (default): fp16 autocast + loss scaling on CUDA, bf16 autocast on a CPU with AMX or "
            "AVX512-BF16, else fp32; or fp32, fp16, bf16.",
            rich_help_panel=_RECIPE,
        ),
    ] = None,
    save_every_steps: Annotated[
        int,
        typer.Option(
            help="Also write last/ every N optimizer steps (0: once per epoch).", rich_help_panel=_RUN
        ),
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --output from last/ (with its stored configuration).",
            rich_help_panel=_RUN,
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing run folder.", rich_help_panel=_RUN)
    ] = False,
    device: Annotated[
        str | None,
        device_option(
            help="auto (default), cpu, cuda or cuda:N (torchrun: each process its LOCAL_RANK GPU).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        workers_option(
            help="Decoding processes per training process (default: 2). --resume keeps the run's unless given.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        threads_option(
            help="CPU threads for the model (default: torch's). --resume keeps the run's unless given.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    progress: Annotated[bool, progress_option(rich_help_panel=_RUN)] = True,
) -> None:
    """Fine-tune X-CLIP on your labelled clips with the official recipe; writes a resumable run folder.

    Every data problem is listed (file:line) before training starts. Ctrl-C saves last/; --resume continues
    exactly where it stopped. Under torchrun each process trains on its shard (DistributedDataParallel).
    The run folder is locked while a run writes it: a second run on it is refused.
    """
    from ..training import DataError, FinetuneConfig, TrainingInterrupted, finetune

    rank = int(os.environ.get("RANK", "0"))
    options: dict[str, Any] = dict(
        data=_str(data),
        val=_str(val),
        dataset=dataset.value if dataset else None,
        root=_str(root),
        split=split,
        labels=_str(labels),
        val_fraction=val_fraction,
        shots=shots,
        seed=seed,
        model=model,
        frames=frames,
        freeze=list(freeze),
        grad_checkpointing=grad_checkpointing,
        precision=precision.value if precision else None,
        epochs=epochs,
        batch_size=batch_size,
        accum_steps=accum_steps,
        lr=lr,
        new_lr_mult=new_lr_mult,
        min_lr=min_lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        mixup=mixup,
        cutmix=cutmix,
        mixup_switch_prob=mixup_switch_prob,
        augment=augment,
        save_every_steps=save_every_steps,
        workers=workers,
        device=device,
        threads=threads,
    )
    # Every process trains; only rank 0 draws (the processes of a torchrun would all draw the same).
    shown = TrainingProgress(enabled=progress and rank == 0)
    try:
        result = finetune(
            output,
            FinetuneConfig(**options),
            resume=resume,
            overwrite=overwrite,
            progress=shown,
            handle_signals=True,
        )
    except DataError as err:
        _data_problems(err, rank)
        raise UsageError(
            f"{len(err.problems)} problem(s) in the training data; nothing was trained"
        ) from None
    except TrainingInterrupted as err:
        raise interrupted(f"interrupted; saved {err.checkpoint}; continue with --resume") from None
    except KeyboardInterrupt:
        raise interrupted("interrupted before the first checkpoint") from None
    # Every other XClipError (bad option value 2, locked or unusable run folder 2, model 3, disk full 1)
    # travels to the app's XClipGroup: one `xclip: error:` line and its exit code.
    if rank == 0 and result.best is not None:
        best = result.best
        accuracy = (
            ""
            if best["val_top1"] is None
            else f", val top-1 {best['val_top1']:.2f}% top-5 {best['val_top5']:.2f}%"
        )
        typer.echo(f"xclip: best epoch {best['epoch']}{accuracy}: {result.best_checkpoint}", err=True)


def _data_problems(err: Any, rank: int) -> None:
    """Every data problem on its own line (rank 0 only: the processes of a torchrun all find them)."""
    if rank == 0:
        for problem in err.problems[:100]:
            typer.echo(f"xclip: {problem}", err=True)
        if len(err.problems) > 100:
            typer.echo(f"xclip: ... and {len(err.problems) - 100} more", err=True)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


#: What the training bar shows after its title and counts.
_FIELDS = {
    "epoch": "epoch {}",
    "note": "{}",
    "loss": "loss {:.4f}",
    "lr": "lr {:.2e}",
    "speed": "{:.1f} clips/s",
}


class TrainingProgress:
    """The training loop's progress contract (:class:`xclip_cli.training.Progress`) drawn by the shared
    :class:`~xclip_cli.cli.common.Reporter`: one bar over the run's optimizer steps with the epoch, loss,
    learning rate and speed, or a line every tenth of the steps; a summary line per epoch either way.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.info: dict[str, Any] = {}
        self.reporter: Reporter | None = None

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        # Made here, not before finetune(): the time of the periodic lines is the training's.
        self.reporter = Reporter(
            "training", done_verb="trained", unit="steps", enabled=self.enabled, fields=_FIELDS
        )
        resumed = (
            f", resuming at epoch {info['epoch'] + 1} step {info['step']}"
            if info["epoch"] or info["step"]
            else ""
        )
        processes = f", {info['world_size']} processes" if info["world_size"] > 1 else ""
        self.reporter.echo(
            f"{info['train_clips']} training clips, {info['val_clips']} validation clips, "
            f"{info['epochs']} epochs x {info['steps_per_epoch']} steps{processes}{resumed}"
        )
        steps = info["steps_per_epoch"]
        self.reporter.start(
            info["epochs"] * steps, info["epoch"] * steps + info["step"], epoch=self._epoch(info["epoch"])
        )

    def step(self, epoch: int, step: int, loss: float, lr: float, clips_per_s: float) -> None:
        if self.reporter is not None:
            self.reporter.update(
                epoch * self.info["steps_per_epoch"] + step,
                epoch=self._epoch(epoch),
                note=None,
                loss=loss,
                lr=lr,
                speed=clips_per_s,
            )

    def validating(self, epoch: int, clips: int) -> None:
        if self.reporter is not None and clips:
            self.reporter.update(
                epoch=self._epoch(epoch), note=f"validating {clips} clips", loss=None, lr=None, speed=None
            )

    def epoch_end(self, record: dict[str, Any]) -> None:
        if self.reporter is None:
            return
        val = ""
        if record["val_top1"] is not None:
            val = f", val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%{' (best)' if record['best'] else ''}"
        self.reporter.echo(
            f"epoch {record['epoch']}/{self.info['epochs']}: loss {record['loss']:.4f}, "
            f"lr {record['lr']:.2e}{val}, {record['clips_per_s']:.1f} clips/s"
        )

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.close()

    def _epoch(self, epoch: int) -> str:
        return f"{epoch + 1}/{self.info['epochs']}"
