"""Frames to model input: resize, crop, augment and normalise as official X-CLIP does.

Inputs are uint8 RGB frames ``[N, H, W, 3]`` (numpy or torch), as :func:`read_frames` returns them.
Resizing and cropping stay in uint8 (cheap, and what the official mmcv/PIL pipeline does between
steps); conversion to float happens once, straight into the output tensor.

torch only: importing torchvision costs about 1.5 s of start-up (it imports ``torch._dynamo``), so the
resize and greyscale steps are torchvision's kernels called the way torchvision calls them
(:func:`_resize`, :func:`_grayscale`; tests check they give bit-identical results).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import numpy as np
import torch

from ..imagenet import IMAGENET_MEAN, IMAGENET_STD  # one definition of the ImageNet statistics, re-exported

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize", "short_side_for", "test_views", "train_transform"]

# MultiScaleCrop(scales=(1, .875, .75, .66), max_wh_scale_gap=1) as in the official training config.
_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)
# ColorJitter(brightness=.4, contrast=.4, saturation=.2, hue=.1) sampling ranges, torchvision order.
_JITTER_RANGES = ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))


def short_side_for(image_size: int, crops: int = 1) -> int:
    """Short side that frames are resized to before cropping ``image_size`` squares.

    One centre crop (and training) resizes to ``int(256 / 224 * image_size)`` (256 for 224); three
    crops resize to ``image_size`` itself, so the crops span the whole short side. Decoders can
    downscale to this size directly.
    """
    if crops == 1:
        return int(256 / 224 * image_size)
    if crops == 3:
        return image_size
    raise ValueError(f"crops must be 1 or 3, got {crops}")


def normalize(
    frames: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(frames - mean) / std`` per channel, for float frames ``[..., 3, H, W]`` on the 0-255 scale."""
    mean_t = torch.as_tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean_t) / std_t


def test_views(
    frames_u8: np.ndarray | torch.Tensor,
    *,
    image_size: int,
    crops: int = 1,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    shared: bool = False,
) -> torch.Tensor:
    """Evaluation crops of one clip, float32 ``[crops, N, 3, S, S]`` with S = ``image_size``.

    ``crops=1``: resize the short side to :func:`short_side_for` and take the centre square.
    ``crops=3``: resize the short side to S and take three squares along the long side, in the
    official ThreeCrop order: start (left/top), end (right/bottom), middle.

    The crops go from uint8 into one contiguous float32 tensor in one pass, normalised in place.
    ``shared``: allocate it in shared memory, for a tensor about to be sent to another process (a
    decode worker's clip): torch would otherwise copy it there when it is pickled.
    """
    x = _as_uint8_nchw(frames_u8)
    x = _resize_short_side(x, short_side_for(image_size, crops))
    height, width = x.shape[-2:]
    if crops == 1:
        offsets = [((height - image_size) // 2, (width - image_size) // 2)]
    elif height == image_size:  # landscape (or square): slide along the width
        step = (width - image_size) // 2
        offsets = [(0, 0), (0, 2 * step), (0, step)]
    else:  # portrait: slide along the height
        step = (height - image_size) // 2
        offsets = [(0, 0), (2 * step, 0), (step, 0)]
    views = _empty_float((len(offsets), x.shape[0], 3, image_size, image_size), shared)
    for view, (top, left) in zip(views, offsets):
        view.copy_(x[..., top : top + image_size, left : left + image_size])  # uint8 -> float, NCHW
    return _normalize_(views, mean, std)


# pytest would otherwise collect ``test_views`` as a test wherever a test module imports it.
test_views.__test__ = False  # type: ignore[attr-defined]


def train_transform(
    frames_u8: np.ndarray | torch.Tensor,
    *,
    image_size: int,
    generator: torch.Generator,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Official X-CLIP training augmentation of one clip, float32 ``[N, 3, S, S]``.

    Resize the short side to ``int(256/224*S)``; MultiScaleCrop (crop sides from the scales
    (1, .875, .75, .66) of the short side, width and height at most one scale step apart, placed at
    a corner or the centre); resize to S x S; horizontal flip (p=0.5); ColorJitter (p=0.8,
    brightness .4, contrast .4, saturation .2, hue .1); greyscale (p=0.2); normalise. Crop, flip and
    the jitter/greyscale coin flips are shared by all frames; jitter factors and their order are drawn
    per frame, as the official pipeline calls torchvision's ColorJitter once per frame. All randomness
    comes from ``generator``, so a seeded generator gives the same output.
    """
    x = _as_uint8_nchw(frames_u8)
    x = _resize_short_side(x, short_side_for(image_size, 1))
    height, width = x.shape[-2:]

    base = min(height, width)
    sides = [int(base * scale) for scale in _CROP_SCALES]
    candidates = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_w, crop_h = candidates[_randint(len(candidates), generator)]
    # mmaction2 snaps sides within 2 pixels of the target size to it (saves a needless resize).
    crop_w = image_size if abs(crop_w - image_size) < 3 else crop_w
    crop_h = image_size if abs(crop_h - image_size) < 3 else crop_h
    w_step, h_step = (width - crop_w) // 4, (height - crop_h) // 4
    positions = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    left, top = positions[_randint(len(positions), generator)]
    x = x[..., top : top + crop_h, left : left + crop_w]
    x = _resize(x, image_size, image_size)

    if _coin(0.5, generator):
        x = x.flip(-1)
    x = x.float().contiguous()
    if _coin(0.8, generator):
        x = _color_jitter_per_frame(x, generator)
    if _coin(0.2, generator):
        x = _grayscale(x).expand_as(x)
    return normalize(x, mean, std).contiguous()


# ---------------------------------------------------------------------------------------------- helpers


def _as_uint8_nchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    # A channels-last view, no copy; torch's uint8 antialiased resize is fastest on this layout.
    return x.permute(0, 3, 1, 2)


def _resize_short_side(x: torch.Tensor, short_side: int) -> torch.Tensor:
    height, width = x.shape[-2:]
    if min(height, width) == short_side:
        return x  # the decoder already downscaled to this size
    scale = short_side / min(height, width)
    # Round like mmcv's rescale, and pin the short side exactly.
    new_h = short_side if height <= width else int(height * scale + 0.5)
    new_w = short_side if width < height else int(width * scale + 0.5)
    return _resize(x, new_h, new_w)


#: Whether torch's uint8 antialiased bilinear kernel is used as is. torchvision (``resize_image``)
#: calls it only where it is vectorised (AVX2/AVX512, arm64); elsewhere it resizes in float32 and rounds.
_NATIVE_UINT8_RESIZE = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or (
    platform.machine() in ("aarch64", "arm64")
)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's ``resize(x, [height, width], BILINEAR, antialias=True)`` of uint8 ``[N, 3, H, W]``.

    The same call of ``torch.nn.functional.interpolate`` as torchvision's ``resize_image`` (same
    kernel, same dtype handling), so the pixels are bit-identical, without importing torchvision.
    """
    if (height, width) == tuple(x.shape[-2:]):
        return x
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[0] == 1 and x.numel() != x.stride(0):
        # As torchvision does: restride a single channels-last frame so that interpolate keeps the
        # layout (pytorch/pytorch#68430) and the uint8 kernel needs no re-packing of its output.
        x = x.as_strided(x.shape, (x.numel(), *x.stride()[1:]))
    native = x.dtype in (torch.float32, torch.float64) or (x.dtype == torch.uint8 and _NATIVE_UINT8_RESIZE)
    y = x if native else x.float()
    y = torch.nn.functional.interpolate(
        y, size=[height, width], mode="bilinear", align_corners=False, antialias=True
    )
    return y if native else y.round_().to(x.dtype)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` of float ``[..., 3, H, W]``: ``[..., 1, H, W]``, the same ops."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3)


def _empty_float(shape: tuple[int, ...], shared: bool) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory when ``shared`` (no copy when it is pickled)."""
    if not shared:
        return torch.empty(shape, dtype=torch.float32)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * 4)  # what DataLoader workers' collate does
    strides = torch.empty(shape, device="meta").stride()
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape, strides)


def _normalize_(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """:func:`normalize` in place (the same float ops, so the same values)."""
    mean_t = torch.as_tensor(mean, dtype=frames.dtype).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=frames.dtype).view(3, 1, 1)
    return frames.sub_(mean_t).div_(std_t)


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def _coin(p: float, generator: torch.Generator) -> bool:
    return float(torch.rand((), generator=generator)) < p


def _color_jitter_per_frame(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision ColorJitter on float frames ``[N, 3, H, W]`` (0-255), fresh factors and order per frame.

    Batched rather than one torchvision call per frame (hue alone costs ~30 ms a frame that way):
    at each of the four steps, the frames whose step-th op is the same go through it together.
    Unlike PIL, values are not rounded to integers between ops; the difference is far below the
    jitter itself.
    """
    n = x.shape[0]
    low = torch.tensor([r[0] for r in _JITTER_RANGES])
    high = torch.tensor([r[1] for r in _JITTER_RANGES])
    factors = low + (high - low) * torch.rand(n, 4, generator=generator)
    orders = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)  # a random permutation per frame
    ops = (_brightness, _contrast, _saturation, _hue)
    for step in range(4):
        for op_index, op in enumerate(ops):
            chosen = (orders[:, step] == op_index).nonzero().flatten()
            if len(chosen):
                x[chosen] = op(x[chosen], factors[chosen, op_index].view(-1, 1, 1, 1))
    return x


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp_(0, 255)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp_(0, 255)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * _grayscale(x)).clamp_(0, 255)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (per frame): RGB -> HSV, shift H, HSV -> RGB, as torchvision."""
    r, g, b = (x / 255).unbind(-3)
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (value - r) / safe, (value - g) / safe, (value - b) / safe
    hue = torch.where(value == r, bc - gc, torch.where(value == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)

    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = sector.long() % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * frac)
    t = value * (1.0 - saturation * (1.0 - frac))
    candidates = torch.stack([value, q, p, p, t, value, t, value, value, q, p, p, p, p, t, value, value, q])
    candidates = candidates.view(3, 6, *value.shape)  # per output channel, the value in each sector
    index = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *value.shape)
    rgb = torch.gather(candidates, 1, index).squeeze(1)  # [3, n, H, W]
    return (rgb.movedim(0, 1) * 255).clamp_(0, 255)
