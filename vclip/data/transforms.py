"""Clip-level spatial transforms and batch-level Mixup/CutMix.

Layout and range
----------------
A clip is a ``torch.Tensor`` ``[T, C, H, W]`` (frames first, channels RGB). Transforms accept
``uint8`` (0-255) or floating point **on the 0-255 scale** and return ``float32`` on the 0-255
scale; :class:`Normalize` (last) maps to ``(x - mean) / std`` with 0-255 constants. Decoders return
``uint8 [T, H, W, 3]`` numpy arrays: :func:`to_clip_tensor` converts them.

Every random transform draws its parameters **once per clip** from the ``numpy.random.Generator``
passed to it (``transform(clip, rng)``) and applies them to every frame, with batched tensor ops
(no per-frame PIL loop). The official X-CLIP pipeline applies torchvision's ColorJitter to each
frame, which draws new factors per frame (xclip.md §5): :class:`ColorJitter` does that with
``per_frame=True`` (``data.aug.color_jitter_per_frame``); by default it draws once per clip.
Without an rng a fresh unseeded generator is used.

Transforms producing several spatial views (:class:`ThreeCrop`) return ``[V, T, C, H, W]``; the
transforms after them (:class:`Normalize`) work on any leading dimensions.

Defaults of :func:`build_train_transform` / :func:`build_test_transform` reproduce X-CLIP
(``datasets/build.py``; xclip.md §3.3): train = short side ``int(256 / 224 * S)`` → MultiScaleCrop
(1, .875, .75, .66; fixed 5-position grid, ``max_wh_scale_gap`` 1) → resize ``S × S`` → flip 0.5
→ ColorJitter p 0.8 (0.4, 0.4, 0.2, 0.1) → Grayscale p 0.2 → Normalize (ImageNet × 255);
single-view test = short side ``int(256 / 224 * S)`` → centre crop S; three-crop test = short side
S → ThreeCrop S.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vclip.errors import ConfigError

# mean / std on the 0-255 scale
NORM_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # ImageNet (X-CLIP, ViFi-CLIP, OST): (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) × 255
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # OpenAI CLIP: (0.48145466, 0.4578275, 0.40821073) / (0.26862954, 0.26130258, 0.27577711) × 255
    "clip": (
        (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
        (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255),
    ),
}

# ITU-R 601 luma weights (as torchvision's rgb_to_grayscale)
_LUMA = (0.299, 0.587, 0.114)


def _rng(rng) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def to_clip_tensor(frames) -> torch.Tensor:
    """numpy/tensor ``uint8 [T, H, W, 3]`` (decoder output) → ``uint8 [T, 3, H, W]`` tensor."""
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).contiguous()


def _float(clip: torch.Tensor) -> torch.Tensor:
    return clip if clip.dtype == torch.float32 else clip.float()


def _pair(size) -> tuple[int, int]:
    """``size`` (int or (h, w)) → (h, w)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def resize(clip: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of ``[..., C, H, W]`` to ``size = (h, w)`` (float 0-255 out)."""
    clip = _float(clip)
    h, w = size
    if clip.shape[-2:] == (h, w):
        return clip
    lead = clip.shape[:-3]
    x = clip.reshape(-1, *clip.shape[-3:])
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    return x.reshape(*lead, *x.shape[-3:])


def crop(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return clip[..., top : top + height, left : left + width]


# ------------------------------------------------------------------------------------ geometry
class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, clip, rng=None):
        rng = _rng(rng)
        for t in self.transforms:
            clip = t(clip, rng)
        return clip

    def __repr__(self):
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose(\n  {inner}\n)"


class ToFloat:
    """uint8 → float32, keeping the 0-255 scale."""

    def __call__(self, clip, rng=None):
        return _float(clip)

    def __repr__(self):
        return "ToFloat()"


class ResizeShortSide:
    """Resize so that the short side is ``size`` (aspect kept, long side rounded)."""

    def __init__(self, size: int, antialias: bool = True):
        self.size, self.antialias = int(size), antialias

    def __call__(self, clip, rng=None):
        h, w = clip.shape[-2:]
        if h <= w:
            nh, nw = self.size, max(1, int(round(w * self.size / h)))
        else:
            nh, nw = max(1, int(round(h * self.size / w))), self.size
        return resize(clip, (nh, nw), self.antialias)

    def __repr__(self):
        return f"ResizeShortSide({self.size})"


class Resize:
    """Resize to exactly ``size`` (int or (h, w)), aspect not kept."""

    def __init__(self, size, antialias: bool = True):
        self.size, self.antialias = _pair(size), antialias

    def __call__(self, clip, rng=None):
        return resize(clip, self.size, self.antialias)

    def __repr__(self):
        return f"Resize({self.size})"


class CenterCrop:
    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, clip, rng=None):
        H, W = clip.shape[-2:]
        h, w = min(self.size[0], H), min(self.size[1], W)
        return _float(crop(clip, (H - h) // 2, (W - w) // 2, h, w))

    def __repr__(self):
        return f"CenterCrop({self.size})"


class ThreeCrop:
    """Three ``size`` crops along the long side (start, centre, end; centred on the short side),
    as mmaction's ThreeCrop: ``[T, C, H, W]`` → ``[3, T, C, h, w]``."""

    def __init__(self, size):
        self.size = _pair(size)

    def __call__(self, clip, rng=None):
        H, W = clip.shape[-2:]
        h, w = min(self.size[0], H), min(self.size[1], W)
        if W >= H:
            y = (H - h) // 2
            boxes = [(y, 0), (y, (W - w) // 2), (y, W - w)]
        else:
            x = (W - w) // 2
            boxes = [(0, x), ((H - h) // 2, x), (H - h, x)]
        return torch.stack([_float(crop(clip, t, l, h, w)) for t, l in boxes])

    def __repr__(self):
        return f"ThreeCrop({self.size})"


class MultiScaleCrop:
    """TSN/mmaction multi-scale crop with the same box for every frame.

    Crop sides are ``int(short_side * s)`` for ``s`` in ``scales``; a (w, h) pair is drawn uniformly
    among pairs whose scale indices differ by at most ``max_wh_scale_gap``; a side within 2 pixels
    of ``input_size`` snaps to it. The offset is uniform (``random_crop=True``) or drawn from a
    fixed grid of 5 (corners + centre) or 13 positions (``num_fixed_crops``) on quarter steps.
    X-CLIP uses ``random_crop=False``, ``max_wh_scale_gap=1``, 5 fixed positions.
    """

    def __init__(
        self,
        input_size=224,
        scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
        max_wh_scale_gap: int = 1,
        random_crop: bool = False,
        num_fixed_crops: int = 5,
    ):
        if num_fixed_crops not in (5, 13):
            raise ConfigError(f"num_fixed_crops must be 5 or 13, got {num_fixed_crops}")
        self.input_size = _pair(input_size)  # (h, w)
        self.scales = tuple(float(s) for s in scales)
        self.max_wh_scale_gap = int(max_wh_scale_gap)
        self.random_crop = random_crop
        self.num_fixed_crops = num_fixed_crops

    def get_params(self, height: int, width: int, rng) -> tuple[int, int, int, int]:
        """(top, left, crop_h, crop_w)."""
        base = min(height, width)
        sides = [int(base * s) for s in self.scales]
        pairs = [
            (sides[i], sides[j])  # (h, w)
            for i in range(len(sides))
            for j in range(len(sides))
            if abs(i - j) <= self.max_wh_scale_gap
        ]
        ch, cw = pairs[int(rng.integers(len(pairs)))]
        if abs(ch - self.input_size[0]) < 3:
            ch = self.input_size[0]
        if abs(cw - self.input_size[1]) < 3:
            cw = self.input_size[1]
        ch, cw = min(max(ch, 1), height), min(max(cw, 1), width)
        if self.random_crop:
            top = int(rng.integers(height - ch + 1))
            left = int(rng.integers(width - cw + 1))
        else:
            ws, hs = (width - cw) // 4, (height - ch) // 4
            grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # (y-steps, x-steps)
            if self.num_fixed_crops == 13:
                grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
            gy, gx = grid[int(rng.integers(len(grid)))]
            top, left = gy * hs, gx * ws
        return top, left, ch, cw

    def __call__(self, clip, rng=None):
        top, left, h, w = self.get_params(*clip.shape[-2:], _rng(rng))
        return _float(crop(clip, top, left, h, w))

    def __repr__(self):
        return (
            f"MultiScaleCrop(input_size={self.input_size}, scales={self.scales}, "
            f"max_wh_scale_gap={self.max_wh_scale_gap}, random_crop={self.random_crop})"
        )


class RandomResizedCrop:
    """Inception-style crop (area fraction ``scale``, aspect ``ratio``, log-uniform), resized to
    ``size``; 10 attempts, then a centre crop clamped to ``ratio`` (torchvision's rule)."""

    def __init__(self, size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias: bool = True):
        self.size = _pair(size)
        self.scale, self.ratio, self.antialias = tuple(scale), tuple(ratio), antialias

    def get_params(self, height: int, width: int, rng) -> tuple[int, int, int, int]:
        area = height * width
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(*log_r))
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, clip, rng=None):
        top, left, h, w = self.get_params(*clip.shape[-2:], _rng(rng))
        return resize(crop(clip, top, left, h, w), self.size, self.antialias)

    def __repr__(self):
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, clip, rng=None):
        clip = _float(clip)
        return clip.flip(-1) if _rng(rng).random() < self.p else clip

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


# -------------------------------------------------------------------------------------- colour
def rgb_to_grayscale(clip: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` → ``[..., 1, H, W]`` luma (0.299 R + 0.587 G + 0.114 B)."""
    r, g, b = clip.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b, ratio: float, bound: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp_(0.0, bound)


def adjust_brightness(clip, factor: float, bound: float = 255.0):
    return _blend(_float(clip), 0.0, factor, bound)


def adjust_contrast(clip, factor: float, bound: float = 255.0):
    """Blend with each frame's mean grayscale level (torchvision's per-image rule)."""
    clip = _float(clip)
    mean = rgb_to_grayscale(clip).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(clip, mean, factor, bound)


def adjust_saturation(clip, factor: float, bound: float = 255.0):
    clip = _float(clip)
    return _blend(clip, rgb_to_grayscale(clip), factor, bound)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` RGB in [0, 1] → HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(-3)
    minc, _ = rgb.min(-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], -3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-3)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [
        (v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q),
    ]
    out = []
    for c in range(3):
        val = torch.zeros_like(v)
        for k, ch in enumerate(choices):
            val = torch.where(i == k, ch[c], val)
        out.append(val)
    return torch.stack(out, -3)


def adjust_hue(clip, shift: float, bound: float = 255.0):
    """Rotate hue by ``shift`` turns (in [-0.5, 0.5])."""
    clip = _float(clip)
    hsv = rgb_to_hsv(clip / bound)
    h, s, v = hsv.unbind(-3)
    hsv = torch.stack([torch.remainder(h + shift, 1.0), s, v], -3)
    return (hsv_to_rgb(hsv) * bound).clamp_(0.0, bound)


class ColorJitter:
    """With probability ``p`` (decided once per clip), torchvision-style colour jitter — brightness,
    contrast, saturation factors from ``[1 - x, 1 + x]``, hue shift from ``[-hue, hue]``, applied in
    a random order — with **one draw per clip** (the same factors and order for every frame), or
    with ``per_frame=True`` a new draw (factors and order) for every frame, as the official X-CLIP
    code's torchvision ColorJitter applied frame by frame."""

    def __init__(self, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p: float = 0.8,
                 per_frame: bool = False):
        if not 0 <= hue <= 0.5:
            raise ConfigError(f"hue jitter must be in [0, 0.5], got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.p = float(p)
        self.per_frame = bool(per_frame)

    def get_params(self, rng):
        """[(op_name, factor)] in application order (ops with zero strength left out)."""
        ops = []
        for idx in rng.permutation(4):
            if idx == 0 and self.brightness > 0:
                ops.append(("brightness", rng.uniform(max(0, 1 - self.brightness), 1 + self.brightness)))
            elif idx == 1 and self.contrast > 0:
                ops.append(("contrast", rng.uniform(max(0, 1 - self.contrast), 1 + self.contrast)))
            elif idx == 2 and self.saturation > 0:
                ops.append(("saturation", rng.uniform(max(0, 1 - self.saturation), 1 + self.saturation)))
            elif idx == 3 and self.hue > 0:
                ops.append(("hue", rng.uniform(-self.hue, self.hue)))
        return ops

    def get_clip_params(self, rng, num_frames: int):
        """The draw for a clip of ``num_frames`` frames: ``None`` (no jitter, probability
        ``1 - p``) or one :meth:`get_params` list per frame — the same list for every frame, or one
        draw per frame with ``per_frame``."""
        if rng.random() >= self.p:
            return None
        if self.per_frame:
            return [self.get_params(rng) for _ in range(num_frames)]
        return [self.get_params(rng)] * num_frames

    @classmethod
    def apply(cls, clip, ops):
        """``clip`` jittered by ``ops`` (a :meth:`get_params` list), the same for all its frames."""
        clip = _float(clip)
        for name, factor in ops:
            clip = cls._FNS[name](clip, float(factor))
        return clip

    _FNS = {
        "brightness": adjust_brightness,
        "contrast": adjust_contrast,
        "saturation": adjust_saturation,
        "hue": adjust_hue,
    }

    def __call__(self, clip, rng=None):
        """``clip`` ``[T, C, H, W]`` (or one frame ``[C, H, W]``) jittered."""
        clip = _float(clip)
        frames = clip.shape[0] if clip.ndim >= 4 else 1
        params = self.get_clip_params(_rng(rng), frames)
        if params is None:
            return clip
        if not self.per_frame or clip.ndim < 4:
            return self.apply(clip, params[0])
        return torch.stack([self.apply(clip[t], ops) for t, ops in enumerate(params)])

    def __repr__(self):
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p={self.p}, per_frame={self.per_frame})"
        )


class RandomGrayscale:
    """With probability ``p`` replace every frame by its luma, repeated on 3 channels."""

    def __init__(self, p: float = 0.2):
        self.p = float(p)

    def __call__(self, clip, rng=None):
        clip = _float(clip)
        if _rng(rng).random() >= self.p:
            return clip
        return rgb_to_grayscale(clip).expand_as(clip).contiguous()

    def __repr__(self):
        return f"RandomGrayscale(p={self.p})"


class Normalize:
    """``(x - mean) / std`` per channel, constants on the 0-255 scale; ``preset`` is a key of
    :data:`NORM_PRESETS` ("imagenet" | "clip") or pass both ``mean`` and ``std``. Works on ``[..., 3, H, W]``."""

    def __init__(self, preset: str | None = "imagenet", mean=None, std=None):
        if (mean is None) != (std is None):
            raise ConfigError("Normalize: give both mean and std (or neither, for the preset), "
                              f"got mean={mean!r}, std={std!r}")
        if mean is None:
            if preset not in NORM_PRESETS:
                raise ConfigError(f"normalisation preset must be one of {list(NORM_PRESETS)}, got {preset!r}")
            mean, std = NORM_PRESETS[preset]
        self.preset = preset
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, clip, rng=None):
        return (_float(clip) - self.mean) / self.std

    def __repr__(self):
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


# ------------------------------------------------------------------------------ Mixup / CutMix
def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed one-hot targets: ``1 - smoothing + smoothing/K`` on the class, ``smoothing/K``
    elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)
    return out


class MixupCutmix:
    """Batch-level Mixup / CutMix with label smoothing producing soft targets (timm's batch mode).

    With probability ``prob`` the batch is mixed with a partner batch ``x[perm]``: CutMix with
    probability ``switch_prob`` (λ ~ Beta(cutmix_alpha, cutmix_alpha), a box of area ≈ (1 - λ)
    pasted at the same place in every frame, λ corrected to the exact box area) else Mixup
    (λ ~ Beta(mixup_alpha, mixup_alpha)). Targets ``λ y + (1 - λ) y[perm]`` from smoothed one-hots.
    ``partner="permutation"``: ``perm`` is a random permutation of the batch drawn from the rng
    (the official X-CLIP code's ``randperm``; a sample may be its own partner);
    ``"reversed"``: ``perm = [B-1, …, 0]``. Video ``x`` is ``[B, ..., C, H, W]``. Defaults are
    X-CLIP's (0.8 / 1.0 / 0.5, smoothing 0.1, permutation).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
        partner: str = "permutation",
    ):
        if partner not in ("permutation", "reversed"):
            raise ConfigError(f"Mixup/CutMix partner must be 'permutation' or 'reversed', got {partner!r}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob, self.prob = float(switch_prob), float(prob)
        self.label_smoothing = float(label_smoothing)
        self.partner = partner

    def _draw(self, rng) -> tuple[str, float]:
        if rng.random() >= self.prob or (self.mixup_alpha <= 0 and self.cutmix_alpha <= 0):
            return "none", 1.0
        if self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob):
            return "cutmix", float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        return "mixup", float(rng.beta(self.mixup_alpha, self.mixup_alpha))

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float, rng) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): a box of sides ``sqrt(1 - lam)`` × (H, W) around a uniform centre,
        clipped to the image."""
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = np.clip(cy - ch // 2, 0, height), np.clip(cy + ch // 2, 0, height)
        x0, x1 = np.clip(cx - cw // 2, 0, width), np.clip(cx + cw // 2, 0, width)
        return int(y0), int(y1), int(x0), int(x1)

    def partner_index(self, batch_size: int, rng) -> torch.Tensor:
        """``perm`` (int64 [B]): sample ``i`` is mixed with sample ``perm[i]``."""
        if self.partner == "reversed":
            return torch.arange(batch_size - 1, -1, -1)
        return torch.from_numpy(rng.permutation(batch_size)).long()

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, rng=None):
        """``(x, labels int [B])`` → ``(mixed x, soft targets float [B, num_classes])``."""
        rng = _rng(rng)
        y = one_hot_smooth(labels, self.num_classes, self.label_smoothing)
        kind, lam = self._draw(rng)
        if kind == "none":
            return x, y
        perm = self.partner_index(x.shape[0], rng)
        x = x if x.is_floating_point() else x.float()
        other = x[perm.to(x.device)]
        if kind == "mixup":
            x = x.mul(lam).add_(other, alpha=1.0 - lam)
        else:
            H, W = x.shape[-2:]
            y0, y1, x0, x1 = self.cutmix_box(H, W, lam, rng)
            x = x.clone()
            x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
        return x, lam * y + (1.0 - lam) * y[perm.to(y.device)]

    def __repr__(self):
        return (
            f"MixupCutmix(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, prob={self.prob}, "
            f"label_smoothing={self.label_smoothing}, partner={self.partner!r})"
        )


# --------------------------------------------------------------------------------- builders
@dataclass
class TransformConfig:
    """Augmentation settings; defaults are X-CLIP's. ``short_side`` ``None`` = ``int(256/224 * S)``."""

    input_size: int = 224
    short_side: int | None = None
    crop: str = "multiscale"  # "multiscale" | "random_resized" | "center"
    scales: tuple = (1, 0.875, 0.75, 0.66)
    max_wh_scale_gap: int = 1
    random_crop: bool = False  # MultiScaleCrop offsets: uniform instead of the 5-position grid
    rrc_scale: tuple = (0.08, 1.0)
    flip: float = 0.5
    color_jitter: float = 0.8  # probability
    jitter: tuple = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_per_frame: bool = False  # new jitter draw per frame (the official X-CLIP pipeline)
    grayscale: float = 0.2
    norm: str = "imagenet"  # "imagenet" | "clip"
    num_crops: int = 1  # test: 1 (centre) or 3 (ThreeCrop)

    @property
    def resolved_short_side(self) -> int:
        return int(self.short_side) if self.short_side else int(256 / 224 * self.input_size)


def _as_config(cfg, overrides) -> TransformConfig:
    if isinstance(cfg, TransformConfig):
        values = asdict(cfg)
    elif cfg is None:
        values = {}
    else:
        names = [f.name for f in fields(TransformConfig)]
        values = {}
        for n in names:
            v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
            if v is not None:
                values[n] = v
        if isinstance(cfg, dict):
            unknown = set(cfg) - set(names)
            if unknown:
                raise ConfigError(f"unknown transform option(s): {sorted(unknown)}")
    values.update(overrides)
    return TransformConfig(**values)


def build_train_transform(cfg=None, **overrides) -> Compose:
    """The training pipeline (X-CLIP's by default; see the module docstring)."""
    c = _as_config(cfg, overrides)
    S = c.input_size
    steps: list = []
    if c.crop == "multiscale":
        steps += [
            ResizeShortSide(c.resolved_short_side),
            MultiScaleCrop(S, c.scales, c.max_wh_scale_gap, c.random_crop),
            Resize(S),
        ]
    elif c.crop == "random_resized":
        steps += [RandomResizedCrop(S, scale=c.rrc_scale)]
    elif c.crop == "center":
        steps += [ResizeShortSide(c.resolved_short_side), CenterCrop(S)]
    else:
        raise ConfigError(f"train crop must be multiscale|random_resized|center, got {c.crop!r}")
    if c.flip > 0:
        steps.append(RandomHorizontalFlip(c.flip))
    if c.color_jitter > 0:
        steps.append(ColorJitter(*c.jitter, p=c.color_jitter, per_frame=c.jitter_per_frame))
    if c.grayscale > 0:
        steps.append(RandomGrayscale(c.grayscale))
    steps.append(Normalize(c.norm))
    return Compose(steps)


def build_test_transform(cfg=None, **overrides) -> Compose:
    """Deterministic evaluation pipeline: ``num_crops`` 1 → short side ``int(256/224 * S)`` +
    centre crop S (output ``[T, 3, S, S]``); 3 → short side S + ThreeCrop S (``[3, T, 3, S, S]``),
    as X-CLIP."""
    c = _as_config(cfg, overrides)
    S = c.input_size
    if c.num_crops == 1:
        steps = [ResizeShortSide(c.resolved_short_side), CenterCrop(S)]
    elif c.num_crops == 3:
        steps = [ResizeShortSide(S), ThreeCrop(S)]
    else:
        raise ConfigError(f"num_crops must be 1 or 3, got {c.num_crops}")
    return Compose(steps + [Normalize(c.norm)])


def build_mixup(cfg, num_classes: int) -> MixupCutmix | None:
    """Mixup/CutMix from a mapping/object with ``mixup``, ``cutmix``, ``switch_prob``,
    ``label_smoothing``, ``partner`` (X-CLIP defaults .8/1./.5/.1/"permutation"); ``None`` when
    both alphas are 0."""
    def get(name, default):
        if cfg is None:
            return default
        v = cfg.get(name) if isinstance(cfg, dict) else getattr(cfg, name, None)
        return default if v is None else v

    mix, cut = float(get("mixup", 0.8)), float(get("cutmix", 1.0))
    if mix <= 0 and cut <= 0:
        return None
    return MixupCutmix(
        num_classes, mix, cut, float(get("switch_prob", 0.5)), float(get("prob", 1.0)),
        float(get("label_smoothing", 0.1)), str(get("partner", "permutation")),
    )
