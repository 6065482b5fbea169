"""Fine-tune X-CLIP on labelled clips with the official recipe: ``xclip finetune`` and :func:`finetune`.

The recipe is the official X-CLIP one (``utils/optimizer.py``, ``main.py``, ``datasets/blending.py``):

* text side frozen (everything whose name lacks ``visual.``, ``mit`` and ``prompts``, so ``logit_scale``
  too); the class-name text features are computed once, under ``no_grad``;
* AdamW (0.9, 0.98), eps 1e-8, weight decay 0.001 except 1-D parameters, biases and positional
  embeddings; learning rate x10 for ``message_``, ``mit`` and ``prompts`` parameters;
* linear warmup from 0, then cosine to an absolute floor ``lr / 100`` shared by every group, evaluated per
  optimizer step (the first step therefore runs at lr 0, as timm's scheduler does);
* soft-target cross-entropy on smoothed one-hot targets (0.1) blended by mixup (alpha 0.8) or cutmix
  (alpha 1.0, one box for all frames of a clip), chosen with probability 0.5 per batch;
* TSN training sampling (a random frame per segment) and the official augmentation
  (:func:`xclip_cli.video.train_transform`); validation with the same clip loader as ``xclip tag``.

Determinism: every random draw derives from ``(seed, epoch, clip index)`` (decoding, augmentation) or
``(seed, micro-batch number, rank)`` (mixup, drop-path), and the clip order of an epoch from
``(seed, epoch)``. Results therefore do not depend on the number of loader workers, a run resumed from a
mid-epoch checkpoint ends exactly where the uninterrupted run ends, and ``torchrun`` with N processes sees
the same global batches as one process.

The package (one concern per module): ``config`` (FinetuneConfig, errors), ``data`` (clip lists, splits,
shots, the training set, the batch order), ``recipe`` (parameter groups, schedule, loss, mixup/cutmix),
``loop`` (finetune, the Trainer: train one epoch -> evaluate -> save), ``checkpoints`` (last/, best/, the
run folder and its lock), ``distributed`` (torchrun).

Run folder::

    config.json           resolved configuration (recipe, data, model, derived sizes, versions)
    labels.csv            class names (id,name), row = class index: ``xclip tag --labels`` reads it
    train.csv, val.csv    the clip lists actually used (after --val-fraction and --shots)
    metrics.jsonl         one line per epoch: loss, lr, val top-1/top-5 (percent), throughput
    curves.png            loss and accuracy per epoch
    last/, best/          ``save_model`` folders (``xclip tag --model RUN/best``) + ``state.pt``
    .lock                 held (``fcntl``) while a run writes the folder; a second run on it is refused

Safety: options are checked before anything loads (:meth:`FinetuneConfig.validate`, UsageError); the
folder is locked for the whole run (rank 0 under torchrun); every file is replaced atomically (a
temporary file or folder, then a rename) with the user's umask, so a kill, a full disk or Ctrl-C never
leaves a half-written checkpoint or metrics line; an interrupted validation is never recorded: ``last/``
then holds the end of that epoch's training and ``--resume`` validates it again.
"""

from .checkpoints import (
    RunLock,
    load_state,
    open_run_folder,
    plot_curves,
    save_checkpoint,
    write_run_files,
)
from .config import (
    LOCK_NAME,
    MAX_FRAMES,
    PRECISIONS,
    RUN_CONFIG,
    RUNTIME_OPTIONS,
    STATE_FILE,
    STATE_FORMAT,
    DataError,
    FinetuneConfig,
    FinetuneResult,
    RunFolderError,
    SaveError,
    TrainingInterrupted,
)
from .data import (
    EpochBatches,
    LabeledClip,
    TrainClips,
    TrainData,
    prepare_data,
    read_clip_list,
    stored_data,
    write_clip_list,
)
from .distributed import Dist, init_distributed
from .loop import NoProgress, Progress, StopFlag, Trainer, finetune, validate
from .recipe import (
    Classifier,
    blend,
    is_trainable,
    lr_at,
    param_groups,
    soft_cross_entropy,
    soft_targets,
)

__all__ = [
    "LOCK_NAME",
    "MAX_FRAMES",
    "PRECISIONS",
    "RUNTIME_OPTIONS",
    "RUN_CONFIG",
    "STATE_FILE",
    "STATE_FORMAT",
    "Classifier",
    "DataError",
    "Dist",
    "EpochBatches",
    "FinetuneConfig",
    "FinetuneResult",
    "LabeledClip",
    "NoProgress",
    "Progress",
    "RunFolderError",
    "RunLock",
    "SaveError",
    "StopFlag",
    "TrainClips",
    "TrainData",
    "Trainer",
    "TrainingInterrupted",
    "blend",
    "finetune",
    "init_distributed",
    "is_trainable",
    "load_state",
    "lr_at",
    "open_run_folder",
    "param_groups",
    "plot_curves",
    "prepare_data",
    "read_clip_list",
    "save_checkpoint",
    "soft_cross_entropy",
    "soft_targets",
    "stored_data",
    "validate",
    "write_clip_list",
    "write_run_files",
]
