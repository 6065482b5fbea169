"""CLIP's towers (OpenAI's ViT image and text transformers), as open_clip 3.3 builds ``CLIP(quick_gelu=True)``.

The same parameter names, shapes, numerics and random initialisation (in the same order, so a seeded
build draws the same weights), without importing open_clip: its package import alone takes seconds
(timm, torchvision, torch._dynamo). Official and open_clip state dicts load with ``strict=True``.

Built under ``torch.device("meta")`` (for weights that are loaded next) nothing is drawn, and only ops
with native meta kernels run: torch's Python meta kernels (``randn``, ``normal_``, a tensor times a
scalar) would import torch.fx and torch._dynamo, a second and a half of start-up.

Attention keeps ``nn.MultiheadAttention`` modules as the holders of its weights (``attn.in_proj_weight``,
``attn.out_proj.weight``...) but is computed here, with ``F.scaled_dot_product_attention``: the fused
kernels in every precision, causal masking without a mask tensor.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output has the input's dtype (open_clip's ``LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation, ``x * sigmoid(1.702 x)``: what CLIP and X-CLIP were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _building_on_meta() -> bool:
    """Whether modules are being built on the meta device (``with torch.device("meta"):``)."""
    return torch.empty(0).is_meta


def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
    """``scale * torch.randn(*shape)``, the same draws (randn is ``empty().normal_()``); on the meta
    device an empty tensor, without torch's Python meta kernels."""
    x = torch.empty(*shape)
    if x.is_meta:
        return x
    x.normal_()
    return x if scale == 1.0 else x.mul_(scale)


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """CLIP's additive causal mask: 0 on and below the diagonal, -inf above."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """What ``attn(x, x, x, need_weights=False)[0]`` computes (batch first, ``[N, L, W]``), through SDPA.

    ``causal`` is CLIP's causal mask (each token attends to itself and the tokens before it).
    """
    n, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x [N, H, L, W/H]
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal)
    return F.linear(out.transpose(1, 2).reshape(n, length, width), attn.out_proj.weight, attn.out_proj.bias)


def mlp(width: int) -> nn.Sequential:
    """CLIP's block MLP: ``c_fc`` (4x wider), QuickGELU, ``c_proj``."""
    return nn.Sequential(
        OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=QuickGELU(), c_proj=nn.Linear(width * 4, width))
    )


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    open_clip's block also has ``ls_1``/``ls_2`` layer scales, identities without parameters for CLIP.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        self.mlp = mlp(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self_attention(self.attn, self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower: patches, class token, positions, ``ln_pre``, blocks, ``ln_post`` of the class
    token, ``proj``."""

    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int
    ) -> None:
        super().__init__()
        grid = image_size // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(randn(width, scale=scale))
        self.positional_embedding = nn.Parameter(randn(grid * grid + 1, width, scale=scale))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(randn(width, output_dim, scale=scale))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` images -> ``[N, 1 + grid^2, W]`` tokens, class token first, after ``ln_pre``."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.embed(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """CLIP: the image tower as ``visual``, the text tower's parts at the top level (OpenAI's layout)."""

    def __init__(
        self,
        embed_dim: int,
        *,
        image_size: int,
        patch_size: int,
        vision_width: int,
        vision_layers: int,
        vision_heads: int,
        context_length: int,
        vocab_size: int,
        text_width: int,
        text_layers: int,
        text_heads: int,
    ) -> None:
        super().__init__()
        # Built in open_clip's order (image tower, then the text tower's embedding and blocks, then its
        # init), so that the same seed gives the same weights; registered in open_clip's order.
        meta = _building_on_meta()
        self.visual = VisionTransformer(
            image_size, patch_size, vision_width, vision_layers, vision_heads, embed_dim
        )
        token_embedding = nn.Embedding(vocab_size, text_width, _weight=torch.empty(vocab_size, text_width))
        if not meta:  # what nn.Embedding itself draws (redrawn below, but it moves the seeded RNG on)
            nn.init.normal_(token_embedding.weight)
        self.transformer = Transformer(text_width, text_layers, text_heads)
        self.token_embedding = token_embedding
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        # Not in any state dict, so never loaded: a real tensor even when the weights are built on meta.
        self.register_buffer(
            "attn_mask", causal_mask(context_length, "cpu" if meta else None), persistent=False
        )
        self.logit_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))
        if not meta:
            self._init_text()

    def _init_text(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.visual.conv1.weight.dtype))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``[K, L]`` token ids -> ``[K, D]``: causal blocks, ``ln_final`` at the end token (the largest id)."""
        dtype = self.text_projection.dtype
        x = self.token_embedding(ids).to(dtype) + self.positional_embedding[: ids.shape[1]].to(dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ self.text_projection

    def forward(
        self, image: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image and text features and ``exp(logit_scale)``, as open_clip's CLIP returns them."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(ids), dim=-1)
        return image_features, text_features, self.logit_scale.exp()
