"""The official X-CLIP recipe (``utils/optimizer.py``, ``main.py``, ``datasets/blending.py``): which parameters
train, the AdamW groups, the learning-rate schedule, soft targets, mixup/cutmix and the loss."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def is_trainable(name: str) -> bool:
    """Official ``fix_text``: only the visual side, MIT and prompt modules train (logit_scale is frozen)."""
    return "visual." in name or "mit" in name or "prompts" in name


_NEW_MODULES = ("message_", "mit", "prompts")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, new_lr_mult: float = 10.0
) -> list[dict[str, Any]]:
    """The official AdamW groups: {CLIP, message_, mit, prompts} x {decay, no decay}, non-empty only.

    No decay for 1-D parameters, names ending ``.bias`` and names containing ``positional_embedding``.
    Each group carries ``name`` and ``base_lr`` (the peak of its schedule).
    """
    groups = []
    for key, group_lr in (("clip", lr), *((k, lr * new_lr_mult) for k in _NEW_MODULES)):
        buckets: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": []}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if key == "clip" and any(k in name for k in _NEW_MODULES):
                continue
            if key != "clip" and key not in name:
                continue
            no_decay = p.ndim == 1 or name.endswith(".bias") or "positional_embedding" in name
            buckets["no_decay" if no_decay else "decay"].append(p)
        for kind, params in buckets.items():
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": group_lr,
                        "base_lr": group_lr,
                        "name": f"{key}/{kind}",
                        "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                    }
                )
    return groups


def lr_at(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """timm ``CosineLRScheduler(t_in_epochs=False, warmup_lr_init=0)`` as the official code configures it.

    Linear warmup from 0 over ``warmup_steps``; afterwards ``min_lr + (base - min_lr) * (1 + cos(pi *
    step / total)) / 2`` (the cosine counts from step 0, not from the end of warmup, as timm does).
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    t = min(step, total_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t / max(1, total_steps)))


def soft_targets(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """Smoothed one-hot targets: off = smoothing / K, on = 1 - smoothing + off (official blending)."""
    off = smoothing / classes
    out = torch.full((labels.shape[0], classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def blend(
    frames: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    *,
    mixup: float,
    cutmix: float,
    switch_prob: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``CutmixMixupBlending`` of a batch ``[B, T, 3, H, W]``: cutmix (one box shared by all
    frames) with probability `switch_prob` when both are on, else mixup; alphas 0 turn either off."""
    if mixup <= 0 and cutmix <= 0:
        return frames, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    perm = torch.from_numpy(rng.permutation(frames.shape[0])).to(frames.device)
    if use_cutmix:
        lam = float(rng.beta(cutmix, cutmix))
        h, w = frames.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_w, cut_h = int(w * ratio), int(h * ratio)
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
        y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
        frames = frames.clone()
        frames[..., y1:y2, x1:x2] = frames[perm][..., y1:y2, x1:x2]
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (w * h)
    else:
        lam = float(rng.beta(mixup, mixup))
        frames = lam * frames + (1.0 - lam) * frames[perm]
    return frames, lam * targets + (1.0 - lam) * targets[perm]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """timm ``SoftTargetCrossEntropy``: mean over the batch of ``-sum(target * log_softmax)``."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class Classifier(nn.Module):
    """The model with its frozen class-text features, ``frames -> logits`` (what DDP wraps)."""

    def __init__(self, model: nn.Module, text: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text", text, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.logits(self.model.encode_video(frames), self.text)
