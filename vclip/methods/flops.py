"""``vclip flops``: GFLOPs per view of a method, in the convention of the papers' tables.

The papers (X-CLIP and those that copy its table) measured with fvcore's ``FlopCountAnalysis`` on one
video ``[1, T, 3, H, W]`` plus one text sentence ``[1, 77]``; fvcore counts **one multiply-add as one
FLOP**. We count the same way: ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
multiply-add, so halved) over matrix products and convolutions, with attention counted explicitly:
during counting ``scaled_dot_product_attention`` runs as its two matrix products (QKᵀ and AV), which
FlopCounterMode otherwise reports as zero on CPU. Element-wise operations, softmax and LayerNorm are
not counted (fvcore skips most of them too; they are < 1 % of a ViT).

The model is built on the ``meta`` device: no memory, no weights, a few seconds even for ViT-L.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vclip.errors import ConfigError


@dataclass
class FlopReport:
    method: str
    arch: str
    num_frames: int
    image_size: int
    num_texts: int
    #: multiply-adds, i.e. FLOPs in fvcore's convention
    gflops: float
    #: GFLOPs per part: "image tower" (with hooks run inside it, e.g. X-CLIP's message attention),
    #: "text tower", "rest" (what the method adds outside the towers)
    parts: dict

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
        return (f"{self.method} {self.arch}, {self.num_frames} frames × {self.image_size} px + {self.num_texts} text: "
                f"{self.gflops:.1f} GFLOPs per view ({parts}) — fvcore convention: 1 multiply-add = 1 FLOP, "
                "attention matmuls counted, element-wise ops not")


def _math_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Attention as two matmuls, for counting (same result as SDPA, no dropout)."""
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        lq, lk = scores.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    if attn_mask is not None:
        scores = scores + attn_mask if attn_mask.dtype != torch.bool else scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1) @ value


@contextlib.contextmanager
def explicit_attention():
    """Within the block, ``F.scaled_dot_product_attention`` is computed as explicit matmuls."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _math_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def count_macs(fn, *args, **kwargs) -> tuple[int, dict]:
    """Multiply-adds of ``fn(*args, **kwargs)`` and the per-module counts (FlopCounterMode's)."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False)
    with explicit_attention(), mode, torch.no_grad():
        fn(*args, **kwargs)
    per_module = {name: sum(c.values()) // 2 for name, c in mode.get_flop_counts().items()}
    return mode.get_total_flops() // 2, per_module


def build_for_count(method: str, arch: str, num_frames: int, image_size: int | None = None, options: dict | None = None):
    """A method on a meta-device CLIP (shapes only)."""
    from vclip.backbone import CLIP, get_config
    from vclip.methods import METHODS

    if method not in METHODS:
        raise ConfigError(f"--method: unknown method {method!r} (known: {', '.join(METHODS)})")
    cfg = get_config(arch)
    if image_size:
        cfg.vision.image_size = image_size
        cfg.validate()
    cls = METHODS[method]
    with torch.device("meta"):
        m = cls(CLIP(cfg), num_frames=num_frames, options=cls.parse_options(options or {}))
    return m.eval()


def method_flops(method: str = "xclip", arch: str = "ViT-B-16", num_frames: int = 8, image_size: int | None = None,
                 num_texts: int = 1, options: dict | None = None) -> FlopReport:
    """GFLOPs (multiply-adds) of one view: one video [1, T, 3, H, W] and ``num_texts`` sentences."""
    from vclip.methods.base import Vocabulary

    m = build_for_count(method, arch, num_frames, image_size, options)
    size = m.clip.config.vision.image_size
    video = torch.empty(1, num_frames, 3, size, size, device="meta")
    vocab = Vocabulary(tuple(f"class {i}" for i in range(num_texts)))
    total, per_module = count_macs(lambda: m.logits(m.encode_video(video), m.encode_vocabulary(vocab)))
    # FlopCounterMode names modules by the class of the outermost module called
    image = per_module.get("VisionTransformer", 0)
    text = per_module.get("TextTransformer", 0)
    parts = {"image tower": image / 1e9, "text tower": text / 1e9, "rest": (total - image - text) / 1e9}
    return FlopReport(method=method, arch=arch, num_frames=num_frames, image_size=size, num_texts=num_texts,
                      gflops=total / 1e9, parts=parts)


def register(subparsers) -> None:
    p = subparsers.add_parser("flops", help="GFLOPs per view of a method (fvcore convention: 1 multiply-add = 1 FLOP)")
    p.add_argument("--method", default="xclip", help="method name (default: xclip)")
    p.add_argument("--arch", default="ViT-B-16", help="CLIP architecture (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, ...)")
    p.add_argument("--frames", type=int, default=8, help="frames per view (default 8)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the architecture's)")
    p.add_argument("--texts", type=int, default=1, help="text sentences counted with the view (default 1, as the papers)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(handler=_flops)


def _flops(args) -> int:
    if args.frames < 1 or args.texts < 1:
        raise ConfigError("--frames and --texts must be >= 1")
    r = method_flops(args.method, args.arch, args.frames, args.image_size, args.texts)
    if args.json:
        print(json.dumps({**r.__dict__, "convention": "fvcore: 1 multiply-add = 1 FLOP"}, indent=2))
    else:
        print(r.line())
    return 0


__all__ = ["FlopReport", "count_macs", "explicit_attention", "method_flops", "register"]
