"""The training loop, shaped like open_clip's ``open_clip_train/main.py``: for each epoch, train one epoch
-> evaluate -> save. :func:`finetune` is the entry point (``xclip finetune`` calls it).

A :class:`Trainer` holds what a run needs between those steps (model, optimizer, loader, schedule,
metrics, where it stands); each step is a method, so none closes over the locals of another.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..data.records import VideoRecord
from . import checkpoints
from .checkpoints import (
    RunLock,
    load_state,
    open_run_folder,
    recover_dir,
    remove_temporaries,
    try_plot,
    write_metrics,
    write_run_files,
    writing,
)
from .config import (
    PLOT_EVERY_S,
    STATE_FILE,
    STATE_FORMAT,
    FinetuneConfig,
    FinetuneResult,
    TrainingInterrupted,
)
from .data import EpochBatches, TrainClips, TrainData, prepare_data, seed_sequence, stored_data, torch_seed
from .distributed import Dist, init_distributed
from .recipe import Classifier, blend, is_trainable, lr_at, param_groups, soft_cross_entropy, soft_targets

log = logging.getLogger(__name__)


# -- progress -----------------------------------------------------------------------------------------------
class Progress(Protocol):
    """What the loop reports (the CLI draws rich progress bars from it); every method may do nothing."""

    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, epoch: int, step: int, loss: float, lr: float, clips_per_s: float) -> None: ...
    def validating(self, epoch: int, clips: int) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, info: dict[str, Any]) -> None:
        pass

    def step(self, epoch: int, step: int, loss: float, lr: float, clips_per_s: float) -> None:
        pass

    def validating(self, epoch: int, clips: int) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


# -- validation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    model: nn.Module,
    data: TrainData,
    clips: Sequence[VideoRecord],
    *,
    workers: int,
    stop: Callable[[], bool] | None = None,
) -> tuple[float, float, int]:
    """(top-1 hits, top-5 hits, failures) of `clips` with ``xclip tag``'s own pipeline (1x1 views).

    Raises KeyboardInterrupt as soon as ``stop()`` is true (checked after each clip): the counts of a
    validation that did not run to the end are never returned.
    """
    from ..data.labels import Vocabulary
    from ..pipeline import TagRun
    from ..video.clips import ClipSpec, VideoTask

    if not clips:
        return 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    spec = ClipSpec(frames=model.frames, image_size=model.image_size, mean=model.mean, std=model.std)
    # Decoding processes cost more to start than a few dozen clips take to decode.
    workers = workers if len(clips) > 16 * max(1, workers) else 0
    run = TagRun(model, Vocabulary(list(data.class_names)), spec, "finetune", batch_size=8, workers=workers)
    index = {name: i for i, name in enumerate(run.vocabulary.labels)}
    tasks = [VideoTask(c.path, c.label, c.start, c.end) for c in clips]
    top1 = top5 = failed = 0
    try:
        with contextlib.closing(run.results(tasks)) as stream:
            for clip, results in zip(clips, stream):
                if stop is not None and stop():
                    raise KeyboardInterrupt
                result = results[0]
                if result.error is not None:
                    failed += 1
                    log.warning("validation clip %s: %s", clip.path, result.error)
                    continue
                ranked = result.ranked()
                top1 += ranked[0] == index[clip.label]
                top5 += index[clip.label] in ranked[:5]
        if stop is not None and stop():  # the last clip's decoder may have seen the signal
            raise KeyboardInterrupt
    finally:
        model.train(was_training)
    return float(top1), float(top5), failed


# -- the loop -----------------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between micro-batches; a second Ctrl-C aborts."""

    def __init__(self, enabled: bool) -> None:
        self.set = False
        self.enabled = enabled
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        log.warning("interrupted: saving last/ at the next step boundary (Ctrl-C again to abort)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def finetune(
    output: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    handle_signals: bool = False,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune X-CLIP and write a run folder (see the module docstring); returns its metrics.

    ``finetune("runs/ucf-8shot", data="clips.csv", val="val.csv", shots=8, epochs=30)``: keyword
    options are :class:`FinetuneConfig` fields (or pass `config`). ``resume`` continues ``last/`` of an
    existing run exactly where it stopped (with the run's stored configuration). Under ``torchrun`` each
    process calls this; data is sharded, metrics are reduced and rank 0 writes. ``handle_signals``
    (main thread only): SIGINT/SIGTERM save ``last/`` at the next optimizer step and raise
    :class:`TrainingInterrupted`.

    The run folder is locked (``RUN/.lock``, rank 0) from before the first write to the end; another
    run on it gets ``FileLockedError``. Every file in it is replaced atomically with the user's umask.

    Raises ``UsageError`` (option values, before anything loads), :class:`DataError` (every data problem,
    before any training), :class:`RunFolderError`, ``FileLockedError``, ``WeightsError`` (model),
    :class:`SaveError` (disk full...: the checkpoints saved before are intact), :class:`TrainingInterrupted`
    after saving ``last/`` on Ctrl-C/SIGTERM.
    """
    if config is None:
        config = FinetuneConfig(**options) if (options or not resume) else None
    elif options:
        config = FinetuneConfig.from_dict({**asdict(config), **options})
    if config is not None:
        config.validate()
    run_dir = Path(output).expanduser()
    main = os.environ.get("RANK", "0") == "0"
    with RunLock(run_dir) if main else contextlib.nullcontext():
        if main:
            with writing(run_dir, "last/"):
                recover_dir(run_dir / "last")
        config, resuming = open_run_folder(run_dir, config, resume=resume, overwrite=overwrite)
        if main:
            remove_temporaries(run_dir)
        config.validate()  # a resumed run: its stored options with the runtime ones given now
        if config.workers is None:
            config.workers = min(2, os.cpu_count() or 1)
        threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            dist, device = init_distributed(config.device or "auto")
            try:
                trainer = Trainer(
                    run_dir,
                    config,
                    dist,
                    device,
                    resuming=resuming,
                    overwrite=overwrite,
                    progress=progress if (progress is not None and dist.main) else NoProgress(),
                )
                return trainer.run(handle_signals=handle_signals)
            finally:
                dist.close()
        finally:
            torch.set_num_threads(threads)


def _fresh_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "loss_count": 0.0, "clips": 0.0, "seconds": 0.0}


class Trainer:
    """One run on this process: built from the run folder and config, then :meth:`run` epoch by epoch.

    ``epoch`` and ``step`` say where it stands: ``step`` optimizer steps of epoch ``epoch`` (0-based) are
    done. ``stats`` are the running sums of the epoch (loss, clips, seconds), saved in ``state.pt`` so that
    a resumed epoch reports what the uninterrupted one would.
    """

    def __init__(
        self,
        run_dir: Path,
        config: FinetuneConfig,
        dist: Dist,
        device: torch.device,
        *,
        resuming: bool,
        overwrite: bool,
        progress: Progress,
    ) -> None:
        from ..data.labels import Vocabulary
        from ..model import load_model
        from ..pipeline import encode_vocabulary

        self.run_dir, self.config, self.dist, self.device, self.progress = (
            run_dir,
            config,
            dist,
            device,
            progress,
        )
        # A resumed run trains on the lists it wrote when it started, whatever the CSVs say now.
        data = stored_data(run_dir) if resuming else prepare_data(config, dist.world)
        self.data = data
        config.validate(
            dist.world
        )  # --batch-size divisible by the processes (checked before, from WORLD_SIZE)
        for warning in data.warnings:
            log.warning("%s", warning)
        state = None
        if resuming and (run_dir / "last" / STATE_FILE).is_file():
            state = load_state(run_dir / "last")
            model = load_model(run_dir / "last", device=device, precision="fp32")
        else:
            model = load_model(config.model, device=device, frames=config.frames, precision="fp32")
        self.model = model
        model.train()  # fp32 master weights; --precision sets the autocast
        model.set_grad_checkpointing(config.grad_checkpointing)
        for name, p in model.named_parameters():
            p.requires_grad_(is_trainable(name) and not any(pattern in name for pattern in config.freeze))

        self.steps_per_epoch = len(data.train) // (config.batch_size * config.accum_steps)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(
            config.warmup_epochs * self.steps_per_epoch
        )  # official: int(WARMUP_EPOCHS * iters)
        self.min_lr = config.lr / 100 if config.min_lr is None else config.min_lr
        if self.warmup_steps >= self.total_steps and dist.main:
            log.warning(
                "the warmup (%g epochs) is as long as the run (%d epochs): the learning rate never reaches "
                "--lr; lower --warmup-epochs",
                config.warmup_epochs,
                config.epochs,
            )
        self.amp_dtype = config.autocast_dtype(device.type)
        derived = {
            "classes": data.class_names,
            "train_clips": len(data.train),
            "val_clips": len(data.val),
            "world_size": dist.world,
            "per_process_batch": config.batch_size // dist.world,
            "clips_per_step": config.batch_size * config.accum_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
            "frames": model.frames,
            "image_size": model.image_size,
            "model_source": getattr(model, "source", config.model),
            "amp": self.amp_dtype is not None,
            "precision": _precision_name(self.amp_dtype),
            "device": str(device),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        dist.barrier()  # every rank has checked the run folder before rank 0 writes to it
        if not resuming and dist.main:
            with writing(run_dir, "the run files"):
                write_run_files(run_dir, config, data, derived, overwrite)
        dist.barrier()

        model.eval()
        text = encode_vocabulary(model, Vocabulary(list(data.class_names))).detach()
        model.train()
        net: nn.Module = Classifier(model, text).to(device)
        if dist.world > 1:
            # The buffers (class-text features, attention mask) are the same on every rank: never re-sent.
            ddp = nn.parallel.DistributedDataParallel
            quiet = "forward_sync_buffers" in inspect.signature(ddp).parameters  # torch >= 2.14 renamed it
            net = ddp(
                net,
                device_ids=[device.index] if device.type == "cuda" else None,
                **({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}),
            )
        self.net = net
        groups = param_groups(model, config.lr, config.weight_decay, config.new_lr_mult)
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)
        # Loss scaling is for fp16's narrow range; bf16 has fp32's.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype is torch.float16 and device.type == "cuda"
        )

        labels = [data.index(c) for c in data.train]
        dataset = TrainClips(
            data.train,
            labels,
            frames=model.frames,
            image_size=model.image_size,
            mean=model.mean,
            std=model.std,
            seed=config.seed,
            augment=config.augment,
        )
        self.batches = EpochBatches(
            len(data.train),
            config.batch_size,
            self.steps_per_epoch * config.accum_steps,
            config.seed,
            dist.rank,
            dist.world,
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.batches,
            num_workers=config.workers,
            persistent_workers=config.workers > 0,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if config.workers > 0 else None,
        )

        self.epoch, self.step = 0, 0
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.stats = _fresh_stats()
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.records = [dict(r) for r in state["metrics"]]
            self.best = dict(state["best"]) if state.get("best") else None
            self.stats = {k: float(v) for k, v in state["epoch_stats"].items()}
            torch.set_rng_state(state["rng"]["torch"])
            log.info("resuming %s at epoch %d, step %d", run_dir, self.epoch + 1, self.step)
            if dist.main:
                with writing(run_dir, "metrics.jsonl"):
                    write_metrics(run_dir, self.records)  # drop a line written after the state was saved
        self.plotted = time.monotonic()

    # -- the epoch loop --------------------------------------------------------------------------------------
    def run(self, *, handle_signals: bool = False) -> FinetuneResult:
        """Train one epoch -> evaluate -> save, until ``config.epochs``; Ctrl-C/SIGTERM (with
        `handle_signals`) save ``last/`` and raise :class:`TrainingInterrupted`."""
        config, data = self.config, self.data
        self.progress.start(
            {
                "epochs": config.epochs,
                "steps_per_epoch": self.steps_per_epoch,
                "epoch": self.epoch,
                "step": self.step,
                "train_clips": len(data.train),
                "val_clips": len(data.val),
                "world_size": self.dist.world,
            }
        )
        try:
            with StopFlag(handle_signals) as stop:
                while self.epoch < config.epochs:
                    if not self.train_one_epoch(stop):
                        # last/ = the state after `step` optimizer steps; a partial accumulation is dropped.
                        raise self.interrupted()
                    record = self.evaluate(stop)
                    if record is None:
                        raise self.interrupted()
                    self.end_epoch(record)
        finally:
            self.progress.close()
        if self.dist.main:
            with writing(self.run_dir, "metrics.jsonl"):
                write_metrics(self.run_dir, self.records)
        return FinetuneResult(self.run_dir, self.records, self.best, list(data.class_names))

    def train_one_epoch(self, stop: StopFlag) -> bool:
        """The optimizer steps left in this epoch (all of them, or those after a resumed ``step``).

        Returns False when a signal stopped it: then ``step`` steps are done (a partial accumulation is
        dropped), on every rank the same number.
        """
        config, dist, device = self.config, self.dist, self.device
        accum, steps_per_epoch = config.accum_steps, self.steps_per_epoch
        self.batches.set_epoch(self.epoch, skip=self.step * accum)
        micro = self.step * accum
        tick = time.perf_counter()
        lr = self.set_lr(self.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        iterator = iter(self.loader) if self.step < steps_per_epoch else iter(())
        autocast = self.amp_dtype is not None
        amp_dtype = self.amp_dtype or (
            torch.float16 if device.type == "cuda" else torch.bfloat16
        )  # if off: unused
        while self.step < steps_per_epoch:
            try:
                frames, target = next(iterator)
            except Exception:
                if stop.set:  # Ctrl-C also reached the loader workers
                    return False
                raise
            seq = seed_sequence(config.seed, 0xB1E7, self.epoch, micro, dist.rank)
            torch.manual_seed(torch_seed(seq))  # drop-path draws: fixed per micro-batch
            frames = frames.to(device, non_blocking=True)
            target = soft_targets(target.to(device), len(self.data.class_names), config.label_smoothing)
            frames, target = blend(
                frames,
                target,
                np.random.default_rng(seq),
                mixup=config.mixup,
                cutmix=config.cutmix,
                switch_prob=config.mixup_switch_prob,
            )
            micro += 1
            last_micro = micro % accum == 0
            with self.net.no_sync() if dist.world > 1 and not last_micro else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                    logits = self.net(frames)
                loss = soft_cross_entropy(logits, target)
                self.scaler.scale(loss / accum).backward()
            self.stats["loss_sum"] += float(loss.detach()) * frames.shape[0]
            self.stats["loss_count"] += frames.shape[0]
            if not last_micro:
                continue
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            now = time.perf_counter()
            clips = config.batch_size * accum
            self.stats["clips"] += clips
            self.stats["seconds"] += now - tick
            self.progress.step(self.epoch, self.step, float(loss.detach()), lr, clips / max(now - tick, 1e-9))
            tick = now
            lr = self.set_lr(self.global_step)
            # Stop only between optimizer steps, and on every rank at the same one.
            stopping = stop.set
            if dist.world > 1:
                stopping = dist.sum([float(stopping)], device)[0] > 0
            if stopping:
                return False
            if (
                config.save_every_steps
                and self.step % config.save_every_steps == 0
                and self.step < steps_per_epoch
            ):
                self.save_last()
        return True

    def evaluate(self, stop: StopFlag) -> dict[str, Any] | None:
        """The epoch's metrics record (loss reduced over ranks, validation top-1/top-5), or None when a
        signal interrupted the validation.

        Ctrl-C / SIGTERM during validation (it may have killed a decoder: a clip counted as failed) must
        not be recorded: last/ = the end of this epoch's training, and --resume runs this validation
        again, so it ends with the metrics of an uninterrupted run.
        """
        config, data, dist = self.config, self.data, self.dist
        last_step = (self.epoch + 1) * self.steps_per_epoch - 1  # the epoch's last optimizer step
        loss_sum, loss_count = dist.sum([self.stats["loss_sum"], self.stats["loss_count"]], self.device)
        shard = data.val[dist.rank :: dist.world]
        self.progress.validating(self.epoch, len(data.val))
        tick = time.perf_counter()
        try:
            top1, top5, failed = validate(
                self.model, data, shard, workers=config.workers, stop=lambda: stop.set
            )
            halted = stop.set
        except KeyboardInterrupt:
            top1, top5, failed, halted = 0.0, 0.0, 0, True
        top1, top5, failed, halted = dist.sum([top1, top5, failed, float(halted)], self.device)
        if halted:
            return None
        schedule = (self.min_lr, self.warmup_steps, self.total_steps)
        return {
            "epoch": self.epoch + 1,
            "step": (self.epoch + 1) * self.steps_per_epoch,
            "loss": loss_sum / max(loss_count, 1),
            "lr": lr_at(last_step, config.lr, *schedule),
            "lr_new_modules": lr_at(last_step, config.lr * config.new_lr_mult, *schedule),
            "val_top1": 100.0 * top1 / len(data.val) if data.val else None,
            "val_top5": 100.0 * top5 / len(data.val) if data.val else None,
            "val_clips": len(data.val),
            "val_failed": int(failed),
            "clips_per_s": self.stats["clips"] / max(self.stats["seconds"], 1e-9),
            "val_seconds": time.perf_counter() - tick,
        }

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Record the epoch, move to the next one and save: best/ (when it improved), last/, metrics, curves."""
        best, data, run_dir = self.best, self.data, self.run_dir
        improved = best is None or (record["val_top1"] or 0.0) > (best["val_top1"] or 0.0) or not data.val
        record["best"] = improved
        self.records.append(record)
        if improved:
            self.best = {k: record[k] for k in ("epoch", "step", "loss", "val_top1", "val_top5")}
        self.epoch, self.step = self.epoch + 1, 0
        self.stats = _fresh_stats()
        if self.dist.main:
            # best/ first: a failure (disk full) before last/ is written leaves last/ at the
            # previous epoch, whose --resume redoes this epoch and writes best/ again.
            if improved:
                with writing(run_dir, "best/"):
                    checkpoints.save_checkpoint(run_dir, "best", self.model, self.snapshot(), self.metadata())
            with writing(run_dir, "last/"):
                checkpoints.save_checkpoint(run_dir, "last", self.model, self.snapshot(), self.metadata())
            with writing(run_dir, "metrics.jsonl"):
                write_metrics(run_dir, self.records)
            # Redrawn at most every PLOT_EVERY_S (a plot costs ~0.3 s) and after the last epoch.
            if time.monotonic() - self.plotted > PLOT_EVERY_S or self.epoch == self.config.epochs:
                try_plot(run_dir / "curves.png", self.records)
                self.plotted = time.monotonic()
        self.progress.epoch_end(record)
        self.dist.barrier()

    # -- pieces ----------------------------------------------------------------------------------------------
    def set_lr(self, global_step: int) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(global_step, g["base_lr"], self.min_lr, self.warmup_steps, self.total_steps)
        return self.optimizer.param_groups[0]["lr"]

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def snapshot(self) -> dict[str, Any]:
        """``state.pt`` at ``epoch``, ``step``: everything besides the weights that an exact resume needs."""
        return {
            "format": STATE_FORMAT,
            "version": 1,
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "global_step": self.global_step,
                "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps,
                "min_lr": self.min_lr,
            },
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "metrics": self.records,
            "best": self.best,
            "epoch_stats": dict(self.stats),
            "rng": _rng_state(),
            "seed": self.config.seed,
        }

    def metadata(self) -> dict[str, Any]:
        """What the checkpoint's xclip_config.json says about the run (epochs completed, step within)."""
        return {
            "labels": self.data.class_names,
            "finetune": {
                "run": str(self.run_dir),
                "epoch": self.epoch,
                "step": self.step,
                "global_step": self.global_step,
                "best_val_top1": self.best["val_top1"] if self.best else None,
            },
        }

    def save_last(self) -> None:
        if self.dist.main:
            with writing(self.run_dir, "last/"):
                checkpoints.save_checkpoint(
                    self.run_dir, "last", self.model, self.snapshot(), self.metadata()
                )

    def interrupted(self) -> TrainingInterrupted:
        """Save last/ at ``epoch``, ``step`` (the state after that many optimizer steps) and say so."""
        self.save_last()
        if self.dist.main and self.records:
            try_plot(self.run_dir / "curves.png", self.records)
        self.dist.barrier()
        return TrainingInterrupted(self.run_dir / "last")


def _precision_name(dtype: Any) -> str:
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
