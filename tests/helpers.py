"""Builders for tiny, randomly initialised models saved in every real checkpoint format."""

from __future__ import annotations

from pathlib import Path

import torch

from xclip_cli.model import XCLIP, XCLIPConfig
from xclip_cli.model.checkpoints import official_to_hf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "videos"

#: Small enough for CPU tests, real in every structural respect (heads = width // 64 everywhere).
TINY = XCLIPConfig(
    embed_dim=64,
    image_size=32,
    patch_size=16,
    vision_width=128,
    vision_layers=2,
    text_width=64,
    text_layers=2,
    frames=8,
)


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give every parameter non-trivial values, so that no zero bias or unit LayerNorm hides a mapping bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(4.6052)
            elif p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1 + scale * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen))
    return module


def tiny_model(seed: int = 0, **changes) -> XCLIP:
    return randomize(XCLIP(TINY.replace(**changes)), seed).eval()


def hf_config(config: XCLIPConfig):
    """The transformers XCLIPConfig of the same architecture."""
    from transformers import XCLIPConfig as HFConfig

    return HFConfig(
        projection_dim=config.embed_dim,
        prompt_layers=config.prompt_layers,
        prompt_alpha=config.prompt_alpha,
        prompt_num_attention_heads=config.prompt_heads,
        text_config=dict(
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.context_length,
        ),
        vision_config=dict(
            hidden_size=config.vision_width,
            intermediate_size=4 * config.vision_width,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_frames=config.frames,
            mit_hidden_size=config.embed_dim,
            mit_intermediate_size=4 * config.embed_dim,
            mit_num_hidden_layers=config.mit_layers,
            mit_num_attention_heads=config.mit_heads,
        ),
    )


def hf_model_from(model: XCLIP):
    """A transformers XCLIPModel holding exactly `model`'s weights (converted to its layout)."""
    from transformers import XCLIPModel

    hf = XCLIPModel(hf_config(model.config)).eval()
    missing, unexpected = hf.load_state_dict(official_to_hf(model.state_dict()), strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing
    return hf


def save_official(model: XCLIP, path: Path) -> Path:
    """Save as the official code does: {'model', 'optimizer', ..., 'config': yacs CfgNode}."""
    from yacs.config import CfgNode

    cfg = CfgNode()
    cfg.DATA = CfgNode()
    cfg.DATA.NUM_FRAMES = model.frames
    cfg.MODEL = CfgNode()
    cfg.MODEL.ARCH = "ViT-B/32"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {},
            "lr_scheduler": {},
            "max_accuracy": 0.0,
            "epoch": 3,
            "config": cfg,
        },
        path,
    )
    return path


def frames_for(config: XCLIPConfig, videos: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(videos, config.frames, 3, config.image_size, config.image_size, generator=gen)


def open_clip_clip(config: XCLIPConfig):
    """open_clip's own ``CLIP(quick_gelu=True)`` with the backbone shapes of `config` (scriptable, as OpenAI's
    models were)."""
    from xclip_cli.model._open_clip import import_open_clip

    model = import_open_clip().model
    vision = model.CLIPVisionCfg(
        layers=config.vision_layers,
        width=config.vision_width,
        head_width=64,
        patch_size=config.patch_size,
        image_size=config.image_size,
    )
    text = model.CLIPTextCfg(
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
    )
    return model.CLIP(config.embed_dim, vision, text, quick_gelu=True)
