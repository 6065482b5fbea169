"""The X-CLIP model and every way to load it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from .. import weights
from ..errors import WeightsError
from .checkpoints import load_file_checkpoint, load_hf_dir, load_our_dir, save_model
from .config import XCLIPConfig, backbone_config
from .xclip import XCLIP, VideoFeatures

__all__ = ["XCLIP", "VideoFeatures", "XCLIPConfig", "load_model", "resolve_device", "save_model"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OPEN_CLIP = re.compile(r"^(ViT-[BL][-/]\d\d(?:-336|@336px)?)(?::(\S+))?$")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(f"device {device} requested but CUDA is not available on this machine")
    return device


def load_model(
    source: str | Path = weights.DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    frames: int | None = None,
) -> XCLIP:
    """Load an X-CLIP model in eval mode from any supported source, detected without flags.

    source: a registry name (``xclip models``), a transformers folder or hub id (``owner/name``), an
    official X-CLIP ``.pth``, a CLIP checkpoint file, an open_clip backbone with a pretrained tag
    (``ViT-B-32:openai``; ``ViT-B-32:random`` for random weights), or a folder written by
    :func:`save_model`. ``frames`` is checked against X-CLIP checkpoints and picks the frame count of
    models built from CLIP.
    """
    if precision not in PRECISIONS:
        raise WeightsError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    model = _load(str(source), frames)
    target = resolve_device(device)
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and target.type == "cpu":
        log.warning("fp16 is not supported well on the CPU; using bf16 instead")
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and target.type == "cpu" and not _native_cpu_bf16():
        log.warning("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 runs slower than fp32 here")
    model = model.to(device=target, dtype=dtype).eval()
    model.precision = {v: k for k, v in PRECISIONS.items()}[dtype]
    return model


def _native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (torch's own probes; older torch lacks them: assume yes)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None) or all(probe is None for probe in probes)


def _load(source: str, frames: int | None) -> XCLIP:
    path = Path(source).expanduser()
    if path.exists():
        return _load_path(path, frames)
    match = _OPEN_CLIP.match(source)
    if match:
        return _from_open_clip(match.group(1), match.group(2) or "openai", frames, source)
    if source in weights.registry():
        entry = weights.get_entry(source)
        if entry.kind == "clip":
            local = weights.local_copy(entry)
            if local is not None:
                return _load_path(local, frames)
            return _from_open_clip(entry.open_clip[0], entry.open_clip[1], frames, source)
        model = _load_path(weights.resolve(entry), frames)
        model.source = source
        return model
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        model = _load_path(weights.download_hf(source), frames)
        model.source = source
        return model
    if any(sep in source for sep in ("/", "\\")) or Path(source).suffix:
        raise WeightsError(f"model file or folder not found: {source}")
    weights.get_entry(source)  # raises with suggestions
    raise AssertionError("unreachable")


def _load_path(path: Path, frames: int | None) -> XCLIP:
    if path.is_dir():
        if (path / "xclip_config.json").is_file():
            return load_our_dir(path, frames)
        if (path / "config.json").is_file():
            return load_hf_dir(path, frames)
        raise WeightsError(
            f"{path}: a folder with neither xclip_config.json (xclip-cli) nor config.json (transformers)"
        )
    return load_file_checkpoint(path, frames)


def _from_open_clip(arch: str, tag: str, frames: int | None, source: str) -> XCLIP:
    config = backbone_config(arch, frames or 8)
    if tag in ("random", "none"):
        model = XCLIP(config)
        model.source = f"{arch}:random"
        return model.eval()
    import open_clip

    name = arch.replace("/", "-").replace("@336px", "-336")
    try:
        clip = open_clip.create_model(name, pretrained=tag, force_quick_gelu=True, require_pretrained=True)
    except Exception as err:  # open_clip raises RuntimeError for offline, unknown tag...
        raise WeightsError(
            f"cannot load open_clip {name} with pretrained {tag!r}: {str(err).splitlines()[0][:300]}. "
            f"Offline, put OpenAI's {name.replace('-336', '-336px')}.pt in {weights.weights_dir()}/ or pass "
            "a CLIP checkpoint file with --model."
        ) from None
    model = XCLIP(config, clip)
    model.source = source
    return model.eval()
