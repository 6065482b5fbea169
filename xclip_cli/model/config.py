"""The X-CLIP architecture as one dataclass, with the published backbones as named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..errors import WeightsError

# ImageNet statistics on the 0-255 scale: the official X-CLIP `img_norm_cfg` (not CLIP's statistics).
from ..video.transforms import IMAGENET_MEAN, IMAGENET_STD


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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise WeightsError(f"unknown X-CLIP config fields: {', '.join(unknown)}")
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)


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
