"""The X-CLIP architecture as one dataclass, with the published backbones as named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import WeightsError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD  # the official X-CLIP `img_norm_cfg`, 0-255 scale


@dataclass(frozen=True)
class XCLIPConfig:
    """Everything that fixes the shapes of an X-CLIP model.

    Head counts default to ``width // 64`` everywhere, as the official code computes them. The
    transformers conversion of the large models keeps 8 heads in the MIT and the prompt generator
    (its library default); the official large models use 12, which is what we use.
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    text_width: int = 512
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    frames: int = 8
    mit_layers: int = 1
    prompt_layers: int = 2
    prompt_alpha: float = 0.1
    drop_path: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise WeightsError naming the first field that cannot build a model (every config is checked
        here once, whichever loader made it: our json, a transformers config.json, a state dict)."""
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _invalid(name, f"{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise _invalid(name, f"{name} {value} is out of range ({low} to {high})")
        for name in ("embed_dim", "vision_width", "text_width"):
            value = getattr(self, name)
            if value % 64:
                raise _invalid(
                    name,
                    f"{name} {value} is not a multiple of 64 (X-CLIP uses width // 64 attention heads of width 64)",
                )
        if self.patch_size > self.image_size or self.image_size % self.patch_size:
            raise _invalid(
                "image_size",
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}",
            )
        for name, (low, high) in (("prompt_alpha", (-1e6, 1e6)), ("drop_path", (0.0, 0.999))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _invalid(name, f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise _invalid(name, f"{name} {value} is out of range ({low:g} to {high:g})")
        for name in ("mean", "std"):
            value = getattr(self, name)
            ok = (
                isinstance(value, (tuple, list))
                and len(value) == 3
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in value
                )
            )
            if not ok or (name == "std" and min(value) <= 0):
                what = "three finite numbers above 0" if name == "std" else "three finite numbers"
                raise _invalid(name, f"{name} must be {what}, got {value!r}")

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // 64)

    @property
    def text_heads(self) -> int:
        return max(1, self.text_width // 64)

    @property
    def mit_heads(self) -> int:
        return max(1, self.embed_dim // 64)

    @property
    def prompt_heads(self) -> int:
        return max(1, self.embed_dim // 64)

    def replace(self, **changes: Any) -> XCLIPConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XCLIPConfig:
        if not isinstance(data, dict):
            raise WeightsError(f"X-CLIP config must be a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise WeightsError(f"unknown X-CLIP config fields: {', '.join(unknown)}")
        data = dict(data)
        for key in ("mean", "std"):
            if isinstance(data.get(key), list):
                data[key] = tuple(
                    float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                    for v in data[key]
                )
        return cls(**data)


def _invalid(field: str, text: str) -> WeightsError:
    """The error of a config field that cannot work; `field` is kept on it for loaders that name the
    field as their own file spells it."""
    err = WeightsError(f"invalid X-CLIP config: {text}")
    err.field = field  # type: ignore[attr-defined]
    return err


#: Bounds of the integer fields: far beyond any published model, tight enough to refuse nonsense
#: (a negative layer count, 100000 frames) before any memory is allocated for it.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "embed_dim": (64, 8192),
    "image_size": (1, 4096),
    "patch_size": (1, 4096),
    "vision_width": (64, 8192),
    "vision_layers": (1, 256),
    "text_width": (64, 8192),
    "text_layers": (1, 256),
    "context_length": (2, 4096),
    "vocab_size": (1, 1_000_000),
    "frames": (1, 1024),
    "mit_layers": (1, 256),
    "prompt_layers": (1, 256),
}
MAX_FRAMES = _INT_RANGES["frames"][1]


#: The four CLIP backbones of the paper, keyed by their open_clip model names.
BACKBONES: dict[str, XCLIPConfig] = {
    "ViT-B-32": XCLIPConfig(),
    "ViT-B-16": XCLIPConfig(patch_size=16),
    "ViT-L-14": XCLIPConfig(
        embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24, text_width=768
    ),
    "ViT-L-14-336": XCLIPConfig(
        embed_dim=768, image_size=336, patch_size=14, vision_width=1024, vision_layers=24, text_width=768
    ),
}

#: Frame counts the published checkpoints and configs use.
SUPPORTED_FRAMES = (8, 16, 32)


def backbone_config(name: str, frames: int = 8) -> XCLIPConfig:
    """The preset for an open_clip backbone name (``ViT-B/32`` and ``ViT-B-32`` both work)."""
    key = name.replace("/", "-").replace("@336px", "-336").replace("-quickgelu", "")
    if key not in BACKBONES:
        raise WeightsError(f"unknown CLIP backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[key].replace(frames=frames)


def backbone_name(config: XCLIPConfig) -> str | None:
    """The open_clip name of the backbone a config uses, or None for a custom (e.g. tiny) one."""
    for name, preset in BACKBONES.items():
        if preset.replace(frames=config.frames, drop_path=config.drop_path) == config.replace(
            prompt_alpha=preset.prompt_alpha
        ):
            return name
    return None
