"""X-CLIP (Ni et al., ECCV 2022) on CLIP, computing what the official code computes.

The CLIP towers are those of :mod:`.clip` (open_clip's ``CLIP(quick_gelu=True)``, parameter for
parameter, without importing open_clip); X-CLIP's additions wrap them:

* every visual block becomes a cross-frame communication block (message tokens built from each
  frame's class token, exchanged across the frames of a video, attended to, then dropped);
* a multi-frame integration transformer (MIT) turns per-frame embeddings into one video embedding;
* a video-specific prompt generator adds a video-conditioned offset to the frozen text features.

Parameter names follow the official checkpoints (``message_fc``, ``mit``, ``prompts_generator``...), so
an official state dict loads with ``strict=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import FrameCountError
from ._open_clip import simple_tokenizer
from .clip import CLIP, LayerNorm, QuickGELU, ResidualAttentionBlock, randn, self_attention
from .config import XCLIPConfig

log = logging.getLogger(__name__)

_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class VideoFeatures:
    """What scoring needs from the visual side: enough to score any vocabulary later.

    embedding: ``[B, D]`` MIT output (not normalised).
    prompt_tokens: ``[B, N, D]`` frame-averaged, projected last-layer patch tokens, the keys and
    values of the prompt generator.
    """

    embedding: torch.Tensor
    prompt_tokens: torch.Tensor

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def __getitem__(self, index: int | slice) -> VideoFeatures:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return VideoFeatures(self.embedding[index], self.prompt_tokens[index])

    def to(self, *args, **kwargs) -> VideoFeatures:
        return VideoFeatures(self.embedding.to(*args, **kwargs), self.prompt_tokens.to(*args, **kwargs))

    @staticmethod
    def cat(items: Sequence[VideoFeatures]) -> VideoFeatures:
        return VideoFeatures(
            torch.cat([f.embedding for f in items]), torch.cat([f.prompt_tokens for f in items])
        )


class DropPath(nn.Module):
    """Stochastic depth as the official X-CLIP applies it.

    The official tensors are sequence-first when the mask is drawn with shape ``(x.shape[0], 1, 1)``, so
    a whole token position is dropped for every sample of the batch. Ours are batch-first, hence the
    mask over dim 1. Only active in training with p > 0 (every released config uses p = 0).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.floor(keep + torch.rand(1, x.shape[1], 1, dtype=x.dtype, device=x.device))
        return x / keep * mask


class CrossFrameBlock(nn.Module):
    """A CLIP ViT block with X-CLIP's cross-frame message token (official ``CrossFramelAttentionBlock``).

    Takes the pretrained block's ``attn``, ``ln_1``, ``mlp`` and ``ln_2`` under their own names, so CLIP
    weights load unchanged, and adds ``message_fc``, ``message_ln`` and ``message_attn``. Both
    attentions are computed with SDPA from the ``nn.MultiheadAttention`` weights (:func:`self_attention`).
    """

    def __init__(self, block: ResidualAttentionBlock, frames: int, heads: int, drop_path: float) -> None:
        super().__init__()
        width = block.ln_1.normalized_shape[0]
        self.frames = frames
        # Registration order = official state-dict order.
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.attn = block.attn
        self.ln_1 = block.ln_1
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = block.mlp
        self.ln_2 = block.ln_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B*T, L, W]`` tokens, frames of a video contiguous."""
        bt, length, width = x.shape
        # Rebuilt in every block from that block's class tokens; nothing persists across blocks.
        msg = self.message_fc(x[:, 0]).view(bt // self.frames, self.frames, width)
        q = self.message_ln(msg)
        msg = msg + self.drop_path(self_attention(self.message_attn, q))
        # One message token per frame, appended after the spatial tokens for the attention only.
        x = torch.cat([x, msg.reshape(bt, 1, width)], dim=1)
        x = x + self.drop_path(self_attention(self.attn, self.ln_1(x)))
        x = x[:, :length]
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def _init_trunc_normal(module: nn.Module) -> None:
    """Official init of the MIT and prompt modules: trunc_normal(0.02) linears, zero bias, LN 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MultiframeIntegrationTransformer(nn.Module):
    """Temporal position embedding, pre-LN transformer over T, residual to the input, mean over T."""

    def __init__(self, frames: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, frames, width))
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.apply(_init_trunc_normal)
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, T, D]`` frame embeddings -> ``[B, D]``."""
        out = self.resblocks(x + self.positional_embedding.to(x.dtype))
        return (out + x).mean(dim=1)


class PromptAttention(nn.Module):
    """Cross attention of the prompt generator: text queries, visual keys/values, no q/k/v bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, c = q.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, x.shape[1], self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v))
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class PromptGeneratorLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.cross_attn = PromptAttention(width, heads)
        self.norm1 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        # Indices 0 and 3 as in the official Sequential(Linear, QuickGELU, Dropout, Linear).
        self.mlp = nn.Sequential(
            nn.Linear(width, width * 4), QuickGELU(), nn.Dropout(0.0), nn.Linear(width * 4, width)
        )

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        q = self.norm1(text)
        text = text + self.cross_attn(q, visual, visual)
        return text + self.mlp(self.norm3(text))


class VideoSpecificPrompt(nn.Module):
    """Video-specific prompt generator: returns ``alpha * decoder(text, visual)`` (a per-channel alpha)."""

    def __init__(self, layers: int, width: int, heads: int, alpha: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.ModuleList([PromptGeneratorLayer(width, heads) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((width,), float(alpha)))  # ones * alpha, meta-safe
        self.apply(_init_trunc_normal)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text


def build_clip(config: XCLIPConfig) -> CLIP:
    """A randomly initialised CLIP with the backbone shapes of `config`: the weights open_clip's
    ``CLIP(quick_gelu=True)`` draws from the same seed. Under ``torch.device("meta")`` nothing is drawn
    (for weights that are loaded next), and only the causal mask buffer is a real tensor."""
    return CLIP(
        config.embed_dim,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_width=config.vision_width,
        vision_layers=config.vision_layers,
        vision_heads=config.vision_heads,
        context_length=config.context_length,
        vocab_size=config.vocab_size,
        text_width=config.text_width,
        text_layers=config.text_layers,
        text_heads=config.text_heads,
    )


def as_our_clip(config: XCLIPConfig, clip: nn.Module) -> CLIP:
    """`clip` if it is one of ours; else our towers holding its very parameters (an open_clip ``CLIP``, or
    any module with CLIP's parameter names and shapes, loaded strictly), so that ours compute."""
    if isinstance(clip, CLIP):
        return clip
    with torch.device("meta"):
        ours = build_clip(config)
    ours.load_state_dict(clip.state_dict(keep_vars=True), strict=True, assign=True)
    ours.attn_mask = ours.attn_mask.to(ours.logit_scale.device)
    return ours


class XCLIP(nn.Module):
    """The X-CLIP video classifier.

    Build it with :func:`xclip_cli.load_model`; ``XCLIP(config)`` gives random weights and
    ``XCLIP(config, clip)`` takes a CLIP's weights (ours from :func:`build_clip`, or open_clip's
    ``CLIP``) and initialises the new modules the way the official code does, ready for fine-tuning.

    Provenance is given at construction (the loaders pass it) and read, never set, afterwards:
    ``source`` names where the weights came from (a registry name, hub id, path or ``ARCH:random``;
    ``"random"`` for a bare ``XCLIP(config)``), ``metadata`` is what :func:`save_model` stored with
    them, and :attr:`precision` follows the weights' dtype.
    """

    #: Where the weights came from, as the user named them.
    source: str
    #: What was saved with the weights (``save_model(..., metadata=)``); empty when nothing was.
    metadata: dict

    def __init__(
        self,
        config: XCLIPConfig,
        clip: nn.Module | None = None,
        *,
        source: str = "random",
        metadata: dict | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.source = source
        self.metadata = dict(metadata or {})
        clip = as_our_clip(config, clip) if clip is not None else build_clip(config)
        embed, vwidth = config.embed_dim, config.vision_width

        # Registration order = the official state-dict order (own parameters, then modules).
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.prompts_visual_proj = nn.Parameter(randn(vwidth, embed))  # official: std 1
        self.prompts_generator = VideoSpecificPrompt(
            config.prompt_layers, embed, config.prompt_heads, config.prompt_alpha
        )
        self.mit = MultiframeIntegrationTransformer(config.frames, embed, config.mit_layers, config.mit_heads)
        self.visual = clip.visual
        rates = [config.drop_path * i / max(1, config.vision_layers - 1) for i in range(config.vision_layers)]
        self.visual.transformer.resblocks = nn.ModuleList(
            CrossFrameBlock(block, config.frames, config.vision_heads, rate)
            for block, rate in zip(clip.visual.transformer.resblocks, rates)
        )
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.ln_final = clip.ln_final
        self.prompts_visual_ln = LayerNorm(vwidth)
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.grad_checkpointing = False

    # -- what inputs the checkpoint expects ------------------------------------------------------
    @property
    def frames(self) -> int:
        return self.config.frames

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """Normalisation mean on the 0-255 scale (ImageNet, as the official pipeline)."""
        return self.config.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.config.std

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: the weights' dtype as ``load_model(precision=)`` names it."""
        return _PRECISION_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch."))

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    # -- text ---------------------------------------------------------------------------------------
    @cached_property
    def _tokenizer(self):
        return simple_tokenizer(self.config.context_length)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """CLIP BPE ids ``[K, 77]``: SOT + tokens + EOT, zero padded; long texts keep EOT at the end.

        A text longer than the context is cut (as CLIP does), with a warning naming it and where it was
        cut, once per text and model.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ids = self._tokenizer(texts)
        for text, row in zip(texts, ids):
            if row[-1] == self._tokenizer.eot_token_id and text not in self._warned_long:
                self._warn_cut(text)
        return ids

    @cached_property
    def _warned_long(self) -> set[str]:
        return set()

    def _warn_cut(self, text: str) -> None:
        tokenizer, context = self._tokenizer, self.config.context_length
        tokens = tokenizer.encode(text)
        room = context - 2  # SOT and EOT take two places
        if len(tokens) <= room:  # it fits exactly: not cut
            return
        self._warned_long.add(text)
        # Where the cut falls in the user's own words: the longest run of whole words that fits.
        words, low, high = text.split(), 0, len(text.split())
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (
                (mid, high) if len(tokenizer.encode(" ".join(words[:mid]))) <= room else (low, mid - 1)
            )
        kept = " ".join(words[:low]) if low else tokenizer.decode(tokens[:room]).strip()
        tail = kept if len(kept) <= 40 else "..." + kept[-40:].lstrip()
        shown = text if len(text) <= 60 else text[:57] + "..."
        log.warning(
            "label %r is longer than the text encoder's %d tokens; cut after %r (%d of its %d tokens kept)",
            shown,
            context,
            tail,
            room,
            len(tokens),
        )

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``[K, L]`` token ids -> ``[K, D]`` text features (EOT pooling, projected, not normalised)."""
        ids = ids.to(self.device)
        # The tower is causal and pools at the end token, so the padding after the longest label's end
        # token cannot change any output: dropping it makes a large vocabulary several times cheaper.
        length = int(ids.argmax(dim=-1).max()) + 1
        ids = ids[:, :length]
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.dtype)
        x = self.transformer(x, causal=True)  # CLIP's causal mask (``attn_mask``), as SDPA's own
        x = self.ln_final(x)
        # The end-of-text token has the largest id in every sequence.
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return x @ self.text_projection

    # -- video --------------------------------------------------------------------------------------
    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.ndim != 5:
            raise FrameCountError(
                f"expected frames shaped [videos, {self.frames}, 3, {self.image_size}, {self.image_size}], "
                f"got {list(frames.shape)}"
            )
        if frames.shape[1] != self.frames:
            raise FrameCountError(
                f"this model was built for {self.frames} frames per video, got {frames.shape[1]} "
                f"(the MIT temporal embedding is [1, {self.frames}, {self.config.embed_dim}])"
            )
        if tuple(frames.shape[2:]) != (3, self.image_size, self.image_size):
            raise FrameCountError(
                f"expected frames of 3x{self.image_size}x{self.image_size}, got {'x'.join(map(str, frames.shape[2:]))}"
            )

    def encode_video(self, frames: torch.Tensor) -> VideoFeatures:
        """``[B, T, 3, H, W]`` normalised frames -> :class:`VideoFeatures` (video embedding, prompt tokens)."""
        self._check_frames(frames)
        b, t = frames.shape[:2]
        x = self.visual.embed(frames.flatten(0, 1).to(device=self.device, dtype=self.dtype))
        for block in self.visual.transformer.resblocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        cls = self.visual.ln_post(x[:, 0]) @ self.visual.proj  # [BT, D]
        # Prompt keys/values: last-block patch tokens without ln_post, projected, averaged over frames.
        tokens = self.prompts_visual_ln(x[:, 1:]) @ self.prompts_visual_proj
        tokens = tokens.view(b, t, *tokens.shape[1:]).mean(dim=1)
        return VideoFeatures(self.mit(cls.view(b, t, -1)), tokens)

    # -- scores -------------------------------------------------------------------------------------
    def logits(self, video: VideoFeatures, text: torch.Tensor) -> torch.Tensor:
        """Video-specific prompts, then ``exp(logit_scale) * cos`` -> ``[B, K]`` float32 logits."""
        tokens = video.prompt_tokens.to(device=self.device, dtype=self.dtype)
        text = text.to(device=self.device, dtype=self.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        text = text + self.prompts_generator(text, tokens)
        text = F.normalize(text.float(), dim=-1)
        embedding = F.normalize(video.embedding.to(self.device).float(), dim=-1)
        return self.logit_scale.exp().float() * torch.einsum("bd,bkd->bk", embedding, text)

    def forward(self, frames: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` for frames ``[B, T, 3, H, W]`` and token ids ``[K, L]``."""
        return self.logits(self.encode_video(frames), self.encode_text(ids))

    # -- training helpers ---------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
