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
    #: T, the frames the method scores per view, and the frames it samples for them (MoTED: α·T dense)
    num_frames: int
    input_frames: int
    image_size: int
    #: class sentences counted with the view (0: the text side is left out, as ALT's table does)
    num_texts: int
    #: multiply-adds of one view, i.e. FLOPs in fvcore's convention (video side + text side)
    gflops: float
    #: GFLOPs per part: "image tower" (with hooks run inside it, e.g. X-CLIP's message attention),
    #: "text tower", "rest" (what the method adds outside the towers)
    parts: dict
    #: temporal clips × spatial crops, and the total over them (the papers' "× views" figures)
    views: tuple = (1, 1)
    gflops_per_video: float = 0.0
    #: methods whose class features train (``text_side_modules``: deep text prompts) re-encode every
    #: class at every training step: the text tower's forward GFLOPs per class (None otherwise)
    text_gflops_per_class: float | None = None
    #: with ``train_classes`` C: C × the above, the text tower's forward cost of one training step
    train_classes: int = 0
    text_gflops_per_train_step: float | None = None

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
        frames = f"{self.num_frames} frames" + (f" ({self.input_frames} sampled)" if self.input_frames != self.num_frames
                                               else "")
        c, k = self.views
        texts = f"{self.num_texts} text{'s' if self.num_texts != 1 else ''}" if self.num_texts else "no text"
        text_step = ""
        if self.text_gflops_per_class is not None:
            text_step = (f"; training re-encodes every class at every step: text tower {self.text_gflops_per_class:.2f} "
                         "GFLOPs forward per class")
            if self.train_classes:
                text_step += f", {self.text_gflops_per_train_step:.1f} per step for {self.train_classes} classes"
        return (f"{self.method} {self.arch}, {frames} × {self.image_size} px + {texts}: "
                f"{self.gflops:.1f} GFLOPs per view ({parts}); {c}×{k} views: {self.gflops_per_video:.1f} GFLOPs per "
                f"video{text_step} — fvcore convention: 1 multiply-add = 1 FLOP, attention matmuls counted, "
                "element-wise ops not")


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


def build_for_count(method: str, arch: str, num_frames: int, image_size: int | None = None, options: dict | None = None,
                    device: str = "meta", token_merging: dict | None = None):
    """A method on a meta-device CLIP (shapes only; ``device="cpu"``: random weights), with
    ``token_merging`` as ``model.token_merging``."""
    from vclip.backbone import CLIP, get_config
    from vclip.methods import method_class

    cls = method_class(method)
    cfg = get_config(arch)
    if image_size:
        cfg.vision.image_size = image_size
        cfg.validate()
    with torch.device(device):
        m = cls(CLIP(cfg), num_frames=num_frames, options=cls.parse_options(options or {}))
    m.set_token_merging(token_merging)
    return m.eval()


def _count(method, arch, num_frames, image_size, options, num_texts, device, token_merging=None):
    m = build_for_count(method, arch, num_frames, image_size, options, device, token_merging)
    size = m.clip.config.vision.image_size
    frames = m.input_frames(num_frames)
    video = torch.zeros(1, frames, 3, size, size, device=device)
    # methods are called part by part (not through Module.__call__), so that FlopCounterMode names
    # the towers as the outermost modules
    if not type(m).flops_count_text:
        # the text side is computed once, offline (ALT's corpus and class ensemble): encode it
        # uncounted and count the whole video path against max(num_texts, 1) classes
        vocab = type(m).example_vocabulary(max(num_texts, 1), options)
        with torch.no_grad():
            feats = m.encode_vocabulary(vocab)
        total, per_module = count_macs(lambda: m.outputs(m.encode_video(video), feats))
    elif num_texts:
        vocab = type(m).example_vocabulary(num_texts, options)
        total, per_module = count_macs(lambda: m.outputs(m.encode_video(video), m.encode_vocabulary(vocab)))
    else:
        total, per_module = count_macs(lambda: m.encode_video(video))
    return m, frames, total, per_module


def method_flops(method: str = "xclip", arch: str = "ViT-B-16", num_frames: int = 8, image_size: int | None = None,
                 num_texts: int = 1, options: dict | None = None, views: tuple[int, int] = (1, 1),
                 train_classes: int = 0, token_merging: dict | None = None) -> FlopReport:
    """GFLOPs (multiply-adds) of one view — one video with the frames the method samples for
    ``num_frames`` (``VideoMethod.input_frames``) and ``num_texts`` classes of the method's stand-in
    vocabulary (``example_vocabulary``: descriptors, corpora sized by ``options``) — and of one
    video over ``views`` (clips × crops). ``num_texts=0`` leaves the text side out; methods with
    ``flops_count_text = False`` (ALT) never count it. For a method with ``text_side_modules`` the
    text tower's forward cost per class of a training step is added (and its total for
    ``train_classes`` classes). ``token_merging``: ``model.token_merging``."""
    if num_frames < 1 or num_texts < 0 or train_classes < 0:
        raise ConfigError(f"frames must be >= 1, texts and train classes >= 0, got {num_frames}, {num_texts} "
                          f"and {train_classes}")
    try:
        m, frames, total, per_module = _count(method, arch, num_frames, image_size, options, num_texts, "meta",
                                              token_merging)
    except (RuntimeError, NotImplementedError):
        # data-dependent steps (OST's Sinkhorn stopping rule) need values: count on random CPU weights
        m, frames, total, per_module = _count(method, arch, num_frames, image_size, options, num_texts, "cpu",
                                              token_merging)
    size = m.clip.config.vision.image_size
    # FlopCounterMode names modules by the class of the outermost module called
    image = per_module.get("VisionTransformer", 0)
    text = per_module.get("TextTransformer", 0)
    parts = {"image tower": image / 1e9, "text tower": text / 1e9, "rest": (total - image - text) / 1e9}
    per_class = per_step = None
    if type(m).text_side_modules:
        if num_texts:
            per_class = text / num_texts / 1e9
        else:
            try:
                one = _count(method, arch, num_frames, image_size, options, 1, "meta", token_merging)[3]
            except (RuntimeError, NotImplementedError):
                one = _count(method, arch, num_frames, image_size, options, 1, "cpu", token_merging)[3]
            per_class = one.get("TextTransformer", 0) / 1e9
        per_step = train_classes * per_class
    c, k = views
    return FlopReport(method=method, arch=arch, num_frames=num_frames, input_frames=frames, image_size=size,
                      num_texts=num_texts if type(m).flops_count_text else 0, gflops=total / 1e9, parts=parts,
                      views=(c, k), gflops_per_video=c * k * total / 1e9, text_gflops_per_class=per_class,
                      train_classes=train_classes, text_gflops_per_train_step=per_step)


def register(subparsers) -> None:
    p = subparsers.add_parser("flops", help="GFLOPs per view and per video of a method (fvcore convention: "
                                            "1 multiply-add = 1 FLOP)")
    p.add_argument("--method", default="xclip", help="method name (default: xclip)")
    p.add_argument("--arch", default="ViT-B-16", help="CLIP architecture (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, ...)")
    p.add_argument("--frames", type=int, default=8,
                   help="T, frames per view the method scores (default 8; a method that samples more, e.g. "
                        "MoTED's dense motion frames, is counted with all it samples)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the architecture's)")
    p.add_argument("--texts", type=int, default=1,
                   help="class sentences counted with the view (default 1, as the papers; 0 leaves the text "
                        "side out; methods whose cost grows with the classes: their number)")
    p.add_argument("--views", default="1x1", help="temporal clips × spatial crops for the per-video total (e.g. 4x3)")
    p.add_argument("--train-classes", type=int, default=0, metavar="C",
                   help="methods whose class features train (deep text prompts): also the text tower's forward "
                        "cost of one training step over C classes")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (model.options.KEY), e.g. a corpus size; repeatable")
    p.add_argument("--token-merging", type=int, default=0, metavar="R",
                   help="ToMe: merge R tokens in every image-tower block (model.token_merging={r: R}; ALT: use "
                        "--option r=R)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(handler=_flops)


def _flops(args) -> int:
    from vclip.config import parse_override
    from vclip.protocols.runner import parse_views

    if args.frames < 1 or args.texts < 0 or args.train_classes < 0:
        raise ConfigError("--frames must be >= 1, --texts and --train-classes >= 0")
    (views,) = parse_views(args.views) if "," not in args.views else (None,)
    if views is None:
        raise ConfigError(f"--views: one CLIPSxCROPS value such as 4x3, got {args.views!r}")
    options: dict = {}
    for o in args.option:
        options.update(parse_override(o))
    if args.token_merging < 0:
        raise ConfigError(f"--token-merging must be >= 0, got {args.token_merging}")
    merging = {"r": args.token_merging} if args.token_merging else None
    r = method_flops(args.method, args.arch, args.frames, args.image_size, args.texts, options, views,
                     args.train_classes, merging)
    if args.json:
        print(json.dumps({**r.__dict__, "convention": "fvcore: 1 multiply-add = 1 FLOP"}, indent=2))
    else:
        print(r.line())
    return 0


__all__ = ["FlopReport", "count_macs", "explicit_attention", "method_flops", "register"]
