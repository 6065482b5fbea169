"""The X-CLIP model and every way to load it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from .. import precision as precisions
from .. import weights
from ..errors import UsageError, WeightsError
from ..options import check_device_name
from ._open_clip import import_open_clip
from .checkpoints import (
    load_file_checkpoint,
    load_hf_dir,
    load_our_dir,
    model_from_clip_state,
    read_tensors,
    save_model,
)
from .config import MAX_FRAMES, XCLIPConfig, backbone_config
from .xclip import XCLIP, VideoFeatures

__all__ = [
    "XCLIP",
    "VideoFeatures",
    "XCLIPConfig",
    "check_device",
    "load_model",
    "resolve_device",
    "save_model",
]

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OPEN_CLIP = re.compile(r"^(ViT-[BL][-/]\d\d(?:-336|@336px)?)(?::(\S+))?$")


def check_device(device: str | torch.device) -> str:
    """`device` as a checked string: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` that this machine has.

    Raises UsageError (one line, exit 2) before anything is loaded.
    """
    text = check_device_name(device)
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {text} requested but CUDA is not available on this machine")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device {text} requested but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device mps requested but MPS is not available on this machine")
    return text


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU. Raises UsageError for a device
    this machine does not have or a string that names none."""
    text = check_device(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(text)


def load_model(
    source: str | Path = weights.DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    frames: int | None = None,
    seed: int = 0,
) -> XCLIP:
    """Load an X-CLIP model in eval mode from any supported source, detected without flags.

    source: a registry name (``xclip models``), a transformers folder or hub id (``owner/name``), an
    official X-CLIP ``.pth``, a CLIP checkpoint file, an open_clip backbone with a pretrained tag
    (``ViT-B-32:openai``; ``ViT-B-32:random`` for random weights), or a folder written by
    :func:`save_model`. ``frames`` is checked against X-CLIP checkpoints and picks the frame count of
    models built from CLIP. ``seed`` fixes the random weights of ``ARCH:random`` and the new X-CLIP
    modules of an open_clip backbone (the global RNG is left as it was). ``precision`` is ``fp32``,
    ``bf16``, ``fp16`` or ``auto`` (None, the default: ``$XCLIP_PRECISION``, else auto): what the device computes fastest (:mod:`xclip_cli.precision`: fp16
    on CUDA, bf16 on a CPU with bf16 units, else fp32); :attr:`XCLIP.precision` tells which it became.

    Model files never run code: pickles are read weights-only, TorchScript archives without running
    them. Raises UsageError for a bad option value, WeightsError for a model that cannot be loaded.
    """
    precision = precisions.check_precision(precision)
    if frames is not None and (
        isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES
    ):
        raise UsageError(f"frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    target = resolve_device(device)  # a device this machine lacks fails before the weights are read
    dtype = PRECISIONS[precisions.resolve_precision(precision, target.type)]
    if dtype is torch.float16 and target.type == "cpu":
        log.warning("fp16 is not supported well on the CPU; using bf16 instead")
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and target.type == "cpu" and not precisions.cpu_bf16_units():
        log.warning("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 runs slower than fp32 here")
    model = _load(str(source), frames, seed, dtype)
    return model.to(device=target, dtype=dtype).eval()  # model.precision follows the dtype


def _load(source: str, frames: int | None, seed: int = 0, dtype: torch.dtype = torch.float32) -> XCLIP:
    """The model `source` names, in `dtype` (weights already in `dtype` are used as read, not copied)."""
    path = Path(source).expanduser()
    if path.exists():
        return _load_path(path, frames, dtype=dtype)
    match = _OPEN_CLIP.match(source)
    if match:
        return _from_open_clip(
            match.group(1), match.group(2) or "openai", frames, source, seed=seed, dtype=dtype
        )
    if source in weights.registry():
        entry = weights.get_entry(source)
        if entry.kind == "clip":
            local = weights.local_copy(entry)
            if local is not None:
                return _load_path(local, frames, dtype=dtype)
            return _from_open_clip(
                entry.open_clip[0], entry.open_clip[1], frames, source, seed=seed, dtype=dtype
            )
        return _load_path(weights.resolve(entry), frames, name=source, dtype=dtype)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        return _load_path(weights.download_hf(source), frames, name=source, dtype=dtype)
    if any(sep in source for sep in ("/", "\\")) or Path(source).suffix:
        raise WeightsError(f"model file or folder not found: {source}")
    weights.get_entry(source)  # raises with suggestions
    raise AssertionError("unreachable")


def _load_path(
    path: Path, frames: int | None, name: str | None = None, *, dtype: torch.dtype = torch.float32
) -> XCLIP:
    """The model in file or folder `path`; its source is `name` (a registry name, a hub id) or the path."""
    if path.is_dir():
        if (path / "xclip_config.json").is_file():
            return load_our_dir(path, frames, name=name, dtype=dtype)
        if (path / "config.json").is_file():
            return load_hf_dir(path, frames, name=name, dtype=dtype)
        raise WeightsError(
            f"{path}: a folder with neither xclip_config.json (xclip-cli) nor config.json (transformers)"
        )
    return load_file_checkpoint(path, frames, name=name, dtype=dtype)


def _from_open_clip(
    arch: str,
    tag: str,
    frames: int | None,
    source: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> XCLIP:
    """An X-CLIP on an open_clip backbone: random (``random``/``none``) or a pretrained tag's weights.

    open_clip (imported only here) resolves the tag to a file (its hub copy first,
    ``open_clip_model.safetensors`` before ``open_clip_pytorch_model.bin``, else the original URL, which
    for OpenAI is a TorchScript ``.pt``); the file is read by :func:`read_tensors`, never by
    ``torch.jit.load`` or a full pickle.
    Random weights come from a generator seeded with `seed`, without touching the global RNG.
    """
    config = backbone_config(arch, frames or 8)
    if tag in ("random", "none"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = XCLIP(config, source=f"{arch}:random")
        return model.to(dtype).eval()
    name = arch.replace("/", "-").replace("@336px", "-336")
    state = read_tensors(_open_clip_file(name, tag))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_from_clip_state(state, frames or 8, source=source, dtype=dtype)
    if model.config != config:
        raise WeightsError(f"{source}: the weights of pretrained {tag!r} are not a {name} backbone")
    return model


def _open_clip_file(name: str, tag: str) -> Path:
    """The local file of open_clip's pretrained `tag` for backbone `name`, downloaded if allowed."""
    pretrained = import_open_clip().pretrained

    if Path(tag).expanduser().is_file():  # open_clip also takes a file for `pretrained`
        return Path(tag).expanduser()
    cfg = pretrained.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(pretrained.list_pretrained_tags_by_model(name)) or "none"
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for {name}; its tags: {tags}")
    weights.hub_offline()  # no network: one quick check, then open_clip uses its cache or fails at once
    try:
        found = pretrained.download_pretrained(cfg)  # prefers the hub copy, and safetensors there
    except Exception as err:  # offline, no network, missing file: open_clip raises anything here
        raise WeightsError(
            f"cannot load open_clip {name} with pretrained {tag!r}: {str(err).splitlines()[0][:300] if str(err) else type(err).__name__}. "
            f"Offline, put OpenAI's {name.replace('-336', '-336px')}.pt in {weights.weights_dir()}/ or pass "
            "a CLIP checkpoint file with --model."
        ) from None
    if not found:
        raise WeightsError(f"open_clip gives no weights file for {name} with pretrained {tag!r}")
    return Path(found)
