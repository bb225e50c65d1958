"""MoTED (Zhang et al., "Enhanced Motion-Text Alignment for Image-to-Video Transfer Learning",
CVPR 2024): a parallel motion encoder on dense frames, LLM-written motion descriptions with a text
motion adapter, cross-attention fusion on both sides and two contrastive losses. Both CLIP towers
are frozen. No official code exists; sizes follow ``docs/methods/moted.md`` (chosen so that the
model lands on the paper's 116 M parameters and 180 GFLOPs at B/16, 8 frames).

One video tensor carries both samplings: ``video`` [B, αT, 3, H, W] holds the α·T dense frames
X_T (α = 2), the sparse clip X_S = X_T[:, ::α] (every α-th frame, T of them) feeds CLIP::

    (Eq. 1)  X⁽ˡ⁾ = class token entering CLIP block l (l = 0…L−1), f_t = CLIP(X_S,t)   [B, T, C], [B, T, E]
    (3D stem) Z⁽⁰⁾ = Conv3d_{α×P×P, stride = kernel}(X_T) + E_s + E_t                   [B, T·K, Cm]
    (Eq. 2)  Z⁽ˡ⁾ = Temp-Block⁽ˡ⁾(Z⁽ˡ⁻¹⁾, X⁽ˡ⁻¹⁾):
               LME  Z ← Z + MSA(LN Z);  Z ← Z + MLP(LN Z)         joint space-time attention (+ ToMe)
               GME  G = W_l LN(X⁽ˡ⁻¹⁾);  G ← G + MSA_t(LN(G + E_g))   cross-frame attention [B, T, Cm]
               INT  Z ← Z + CrossAttn(q = LN Z, k = v = LN G)
    m  = W_m LN(Pool(Z⁽ᴸ⁾))                                     motion embedding      [B, E]
    v  = mean_t [f_t + CrossAttn(q = LN f_t, k = v = LN(W_kv Z⁽ᴸ⁾))]   vision fusion  [B, E]

Text side, per class i (c_i: the class name through the frozen text tower, prompt-ensembled;
E_i: the k + 1 normalised description embeddings, 1 conceptual + k discriminative)::

    H_i = E_i + MHSA(LN E_i)          text motion adapter (attention over a class's descriptions)
    e_i = mean_j H_ij                 motion-enhanced text embedding
    e'_i = c_i + CrossAttn(q = LN c_i, k = v = LN H_i)     text fusion

    (Eq. 3) S_m = s · cos(m, e)   (Eq. 4) S_v = s · cos(v, e')   s = exp(logit_scale), frozen
    (Eq. 5) L = L_motion + L_video = CE(S_m, y) + CE(S_v, y)

Prediction: S_v (``predict: video``) or S_v + S_m (``predict: video+motion``). The output
projections of both fusions and of the adapter start at zero, so at step 0 S_v equals CLIP-mean's
logits with the same class-name templates.

The frozen text features (class names and descriptions) are encoded once and cached by the base
class; the trainable adapter and text fusion run on them in ``outputs`` (no text-side module).
Descriptions reach the method through the vocabulary (``vocabulary_descriptors``: files written by
``vclip describe --kind moted-conceptual|moted-discriminative``); without description files every
class is described by its class name alone (the fallback; Table 3a's "class names" row).
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vclip.backbone.hooks import ForwardState, LayerTaps, TokenMerging, parse_merge_schedule
from vclip.backbone.model import MLP, Attention, LayerNorm, ResidualAttentionBlock
from vclip.errors import ConfigError
from vclip.methods.base import MethodOutput, VideoMethod, Vocabulary, cross_entropy
from vclip.methods.xclip import CrossAttention

log = logging.getLogger(__name__)

DESCRIPTION_KINDS = {"conceptual": "moted-conceptual", "discriminative": "moted-discriminative"}


@dataclass
class MoTEDOptions:
    #: dense frames per sparse frame (the 3D stem's temporal kernel and stride; paper: 2)
    alpha: int = 2
    #: width Cm of the motion encoder (choice: 256 lands on the paper's parameters and FLOPs)
    motion_width: int = 256
    #: heads of the motion encoder's attentions; None = Cm / 64
    motion_heads: Optional[int] = None
    #: MLP ratio of the LME blocks
    mlp_ratio: float = 4.0
    #: "query": DiST-style query pooling (a query per frame over its tokens, then a video query over
    #: the frame queries); "avg": the (size-weighted) mean of the motion tokens
    pooling: Literal["query", "avg"] = "query"
    #: query-pooling layers (DiST: 4 for K400, 2 for SSv2)
    pooling_layers: int = 4
    #: ToMe merging in the LME blocks: any schedule of ``vclip.backbone.hooks.parse_merge_schedule``
    #: (int, per-layer list, {r, inflect}); 0 = off. Merging mixes frames, so it needs pooling: avg
    lme_merge: Any = 0
    #: 0: temporal block l reads X⁽ˡ⁻¹⁾, the class token entering CLIP block l−1 (Eq. 2 literal);
    #: 1: it reads the class token leaving CLIP block l−1 (DiST's pairing)
    tap_offset: int = 0
    #: the test-time score: S_v, or S_v + S_m
    predict: Literal["video", "video+motion"] = "video"
    #: description files written by `vclip describe --kind moted-conceptual` / `moted-discriminative`
    #: (one path, or a list, e.g. one file per dataset of a zero-shot run: the first file covering
    #: every class is used, else per class the first file that has it); neither set: each class is
    #: described by its name alone
    conceptual_descriptions: Union[str, list[str], None] = None
    discriminative_descriptions: Union[str, list[str], None] = None
    #: discriminative descriptions used per class (the first k of the file's; paper: 5)
    num_discriminative: int = 5
    #: how a description is encoded (Table 1's "slapping: a quick hand movement ...")
    description_template: str = "{class_name}: {description}"
    #: ablation toggles (Table 3b/3c): the text motion adapter, the text fusion, the vision fusion
    adapter: bool = True
    text_fusion: bool = True
    vision_fusion: bool = True
    #: heads of the adapter and fusion attentions (joint-space width); None = E / 64
    fusion_heads: Optional[int] = None
    #: length of the learnable temporal position embeddings (stem, GME, pooling); None = T
    #: (data.num_frames). At another T they are interpolated linearly, so a model trained at 8
    #: frames evaluates at 32 (zero-shot) when this is set to 8 in both configs
    temporal_positions: Optional[int] = None


def _heads(dim: int, heads: int | None) -> int:
    return heads or max(1, dim // 64)


def _resize_time(pos: torch.Tensor, t: int) -> torch.Tensor:
    """A temporal position embedding [T0, D] at T frames (linear interpolation when T ≠ T0)."""
    if pos.shape[0] == t:
        return pos
    out = F.interpolate(pos.t().unsqueeze(0).float(), size=t, mode="linear", align_corners=False)
    return out[0].t().to(pos.dtype)


# ------------------------------------------------------------------------------ motion encoder
class GlobalMotionExtraction(nn.Module):
    """GME: ``G = W_l LN(X⁽ˡ⁻¹⁾)``; ``G ← G + MSA_t(LN(G + E_g))`` across the T frames of a video."""

    def __init__(self, clip_width: int, width: int, heads: int, num_frames: int):
        super().__init__()
        self.ln_in = LayerNorm(clip_width)
        self.proj = nn.Linear(clip_width, width)
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))
        self.ln = LayerNorm(width)
        self.attn = Attention(width, heads)

    def forward(self, x_cls: torch.Tensor) -> torch.Tensor:
        g = self.proj(self.ln_in(x_cls))                                  # [B, T, Cm]
        pos = _resize_time(self.temporal_embedding, g.shape[1]).to(g.dtype)
        return g + self.attn(self.ln(g + pos))[0]


class FeatureIntegration(nn.Module):
    """INT: ``Z ← Z + CrossAttn(q = LN Z, k = v = LN G)`` (local motion queries the global one)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_q = LayerNorm(width)
        self.ln_kv = LayerNorm(width)
        self.attn = CrossAttention(width, heads)

    def forward(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return z + self.attn(self.ln_q(z), self.ln_kv(g))


class TemporalBlock(nn.Module):
    """Eq. 2: LME (joint space-time attention + MLP, optional ToMe), GME, their integration."""

    def __init__(self, clip_width: int, width: int, heads: int, num_frames: int, mlp_ratio: float):
        super().__init__()
        self.lme = ResidualAttentionBlock(width, heads, mlp_ratio, "quick_gelu", 1e-5)
        self.gme = GlobalMotionExtraction(clip_width, width, heads, num_frames)
        self.integration = FeatureIntegration(width, heads)

    def forward(self, z, x_cls, size, hooks, state, index):
        z, size = self.lme(z, size, hooks, state, index)
        return self.integration(z, self.gme(x_cls)), size


class MotionEncoder(nn.Module):
    """The 3D stem (kernel = stride = α × P × P) with spatial + temporal position embeddings, then
    one temporal block per CLIP block. Input dense frames [B, αT, 3, H, W] and the class-token taps
    (L × [B, T, C]); output the motion tokens [B, T·K, Cm] (fewer when merging) and their sizes."""

    def __init__(self, clip_width: int, width: int, heads: int, layers: int, patch: int, grid: int, alpha: int,
                 num_frames: int, mlp_ratio: float, merge: Any = 0):
        super().__init__()
        self.alpha = alpha
        self.stem = nn.Conv3d(3, width, kernel_size=(alpha, patch, patch), stride=(alpha, patch, patch))
        self.spatial_embedding = nn.Parameter(torch.zeros(grid * grid, width))
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))
        self.blocks = nn.ModuleList(TemporalBlock(clip_width, width, heads, num_frames, mlp_ratio)
                                    for _ in range(layers))
        schedule = parse_merge_schedule(merge, layers)
        self.merging = TokenMerging(schedule, layers, class_token=False) if any(schedule) else None
        #: recompute each temporal block in the backward pass (set with CLIP's: model.grad_checkpointing)
        self.grad_checkpointing = False

    def forward(self, dense: torch.Tensor, taps: Sequence[torch.Tensor]):
        b, n = dense.shape[:2]
        x = self.stem(dense.permute(0, 2, 1, 3, 4).to(self.stem.weight.dtype))    # [B, Cm, T, h, w]
        t = x.shape[2]
        z = x.flatten(3).permute(0, 2, 3, 1)                                       # [B, T, K, Cm]
        if z.shape[2] != self.spatial_embedding.shape[0]:
            raise ValueError(f"motion encoder: {z.shape[2]} patches per frame, built for "
                             f"{self.spatial_embedding.shape[0]}")
        pos = self.spatial_embedding[None] + _resize_time(self.temporal_embedding, t)[:, None]
        z = (z + pos.to(z.dtype)).flatten(1, 2)                                    # [B, T·K, Cm]
        hooks = [self.merging] if self.merging is not None else []
        state = ForwardState(tower="motion")
        for h in hooks:
            z = h.on_embed(z, state)
        size = None
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                z, size = checkpoint(block, z, taps[i].to(z.dtype), size, hooks, state, i, use_reentrant=False)
            else:
                z, size = block(z, taps[i].to(z.dtype), size, hooks, state, i)
        return z, size


# ------------------------------------------------------------------------------ pooling head
class QueryAttention(nn.Module):
    """``q + CrossAttn(LN q, LN kv)`` with one LayerNorm shared by queries and keys/values."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln = LayerNorm(width)
        self.attn = CrossAttention(width, heads)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return q + self.attn(self.ln(q), self.ln(kv))


class FeedForward(nn.Module):
    """``x + MLP_4×(LN x)``."""

    def __init__(self, width: int):
        super().__init__()
        self.ln = LayerNorm(width)
        self.mlp = MLP(width, 4 * width, "quick_gelu")

    def forward(self, x):
        return x + self.mlp(self.ln(x))


class PoolingLayer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.frame_attn = QueryAttention(width, heads)
        self.frame_ffn = FeedForward(width)
        self.video_attn = QueryAttention(width, heads)
        self.video_ffn = FeedForward(width)


class QueryPooling(nn.Module):
    """DiST-style "adaptive pooling" of Z⁽ᴸ⁾: per layer, every frame's query attends to that frame's
    K tokens (+ MLP); then the video query attends to the T frame queries plus a temporal position
    embedding (+ MLP). Returns the video query [B, Cm]."""

    def __init__(self, width: int, heads: int, layers: int, num_frames: int):
        super().__init__()
        self.frame_query = nn.Parameter(torch.zeros(1, 1, width))
        self.video_query = nn.Parameter(torch.zeros(1, 1, width))
        self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))
        self.layers = nn.ModuleList(PoolingLayer(width, heads) for _ in range(layers))

    def forward(self, z: torch.Tensor, t: int) -> torch.Tensor:
        b, n, c = z.shape
        tokens = z.reshape(b * t, n // t, c)
        qf = z.new_zeros(b * t, 1, c) + self.frame_query.to(z.dtype)     # (a sum, not a view of the parameter)
        qv = z.new_zeros(b, 1, c) + self.video_query.to(z.dtype)
        pos = _resize_time(self.temporal_embedding, t).to(z.dtype)
        for layer in self.layers:
            qf = layer.frame_ffn(layer.frame_attn(qf, tokens))
            qv = layer.video_ffn(layer.video_attn(qv, qf.view(b, t, c) + pos))
        return qv[:, 0]


# ------------------------------------------------------------------------------ fusions, adapter
class VisionFusion(nn.Module):
    """``v_t = f_t + CrossAttn(q = LN f_t, k = v = LN(W_kv Z))`` (image features query the motion tokens)."""

    def __init__(self, motion_width: int, embed_dim: int, heads: int):
        super().__init__()
        self.kv_proj = nn.Linear(motion_width, embed_dim)
        self.ln_q = LayerNorm(embed_dim)
        self.ln_kv = LayerNorm(embed_dim)
        self.attn = CrossAttention(embed_dim, heads)

    def forward(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return f + self.attn(self.ln_q(f), self.ln_kv(self.kv_proj(z.to(self.kv_proj.weight.dtype)).to(f.dtype)))


class TextMotionAdapter(nn.Module):
    """``H_i = E_i + MHSA(LN E_i)`` over the k + 1 descriptions of each class; ``e_i = mean_j H_ij``."""

    def __init__(self, embed_dim: int, heads: int):
        super().__init__()
        self.ln = LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, heads)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.attn(self.ln(e))[0]


class TextFusion(nn.Module):
    """``e'_i = c_i + CrossAttn(q = LN c_i, k = v = LN H_i)`` (the class name queries its descriptions)."""

    def __init__(self, embed_dim: int, heads: int):
        super().__init__()
        self.ln_q = LayerNorm(embed_dim)
        self.ln_kv = LayerNorm(embed_dim)
        self.attn = CrossAttention(embed_dim, heads)

    def forward(self, c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return c + self.attn(self.ln_q(c)[:, None], self.ln_kv(h))[:, 0]


# ------------------------------------------------------------------------------ descriptions
def _paths(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def read_descriptions(paths: Sequence[str], class_names: Sequence[str], kind: str, key: str,
                      count: int | None = None) -> list[list[str]]:
    """Per class, its descriptions of ``kind`` (vclip files written by ``vclip describe``): all from
    the first file in ``paths`` that covers every class (its discriminative neighbours were chosen
    within one vocabulary), else per class from the first file that has it; the first ``count`` of
    them when given. Errors name ``model.options.<key>``, the file and the class."""
    from vclip.errors import AnnotationError
    from vclip.text.descriptors import read_descriptors

    tables: list[dict[str, list[str]]] = []
    for path in paths:
        try:
            ds = read_descriptors(path, None, kind=kind)
        except AnnotationError as e:
            raise ConfigError(f"model.options.{key}: {e}") from None
        if not ds.kind:
            raise ConfigError(f"model.options.{key}: {path} is not a vclip description file (write it with "
                              f"`vclip describe --kind {kind}`)")
        tables.append({name: list(texts) for name, texts in zip(ds.class_names, ds.texts())})
    table = next((t for t in tables if all(c in t for c in class_names)), None)
    if table is None:
        table = {}
        for t in tables:
            for name, texts in t.items():
                table.setdefault(name, texts)
    out = []
    for name in class_names:
        if name not in table:
            raise ConfigError(f"model.options.{key}: no {kind} descriptions for class {name!r} in "
                              f"{', '.join(paths)} (generate them with `vclip describe --kind {kind}` on this "
                              "label list)")
        texts = table[name]
        if count is not None:
            if len(texts) < count:
                raise ConfigError(f"model.options.{key}: class {name!r} has {len(texts)} {kind} descriptions, "
                                  f"model.options.num_discriminative asks for {count}")
            texts = texts[:count]
        out.append(texts)
    return out


# ------------------------------------------------------------------------------ the method
class MoTED(VideoMethod):
    """MoTED on one frozen CLIP (see the module docstring)."""

    Options = MoTEDOptions
    parameter_groups = {"new": ("motion_encoder.", "motion_pooling.", "motion_ln.", "motion_proj.",
                                "vision_fusion.", "text_adapter.", "text_fusion.")}
    loss_weights = {"motion": 1.0, "video": 1.0}
    temperature_follows_text = True
    default_templates = ("{}",)
    no_weight_decay = VideoMethod.no_weight_decay + ("_embedding", "_query")

    def __init__(self, clip, *, num_frames: int, options: MoTEDOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        o = self.options
        v, e = clip.config.vision, clip.config.embed_dim
        width, heads = o.motion_width, _heads(o.motion_width, o.motion_heads)
        fheads = _heads(e, o.fusion_heads)
        positions = o.temporal_positions or num_frames
        self.motion_encoder = MotionEncoder(v.width, width, heads, v.layers, v.patch_size,
                                            v.image_size // v.patch_size, o.alpha, positions, o.mlp_ratio,
                                            o.lme_merge)
        self.motion_pooling = QueryPooling(width, heads, o.pooling_layers, positions) if o.pooling == "query" else None
        self.motion_ln = LayerNorm(width)
        self.motion_proj = nn.Linear(width, e, bias=False)
        self.vision_fusion = VisionFusion(width, e, fheads) if o.vision_fusion else None
        self.text_adapter = TextMotionAdapter(e, fheads) if o.adapter else None
        self.text_fusion = TextFusion(e, fheads) if o.text_fusion else None
        self.reset_parameters()
        self.clip.requires_grad_(False)   # both towers and logit_scale: frozen (the paper)

    def reset_parameters(self) -> None:
        """New Linear/Conv weights and position embeddings/queries trunc-normal(0.02), biases 0,
        LayerNorms 1/0; the output projections of the fusions and the adapter zero (S_v starts as
        CLIP-mean)."""
        for name, mod in self.named_modules():
            if name.startswith("clip") or not name:
                continue
            if isinstance(mod, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, Attention):
                nn.init.trunc_normal_(mod.in_proj_weight, std=0.02)
                nn.init.zeros_(mod.in_proj_bias)
        for name, p in self.named_parameters():
            if not name.startswith("clip.") and name.endswith(("_embedding", "_query")):
                nn.init.trunc_normal_(p, std=0.02)
        for mod in (self.vision_fusion, self.text_fusion):
            if mod is not None:
                nn.init.zeros_(mod.attn.proj.weight)
                nn.init.zeros_(mod.attn.proj.bias)
        if self.text_adapter is not None:
            nn.init.zeros_(self.text_adapter.attn.out_proj.weight)
            nn.init.zeros_(self.text_adapter.attn.out_proj.bias)

    # ------------------------------------------------------------------ options, sampling
    @classmethod
    def parse_options(cls, options):
        o = super().parse_options(options)
        for key in ("alpha", "motion_width", "pooling_layers", "num_discriminative"):
            if getattr(o, key) < 1:
                raise ConfigError(f"model.options.{key}: must be >= 1, got {getattr(o, key)}")
        for key in ("motion_heads", "fusion_heads", "temporal_positions"):
            if getattr(o, key) is not None and getattr(o, key) < 1:
                raise ConfigError(f"model.options.{key}: must be >= 1 or null, got {getattr(o, key)}")
        heads = _heads(o.motion_width, o.motion_heads)
        if o.motion_width % heads:
            raise ConfigError(f"model.options.motion_width: {o.motion_width} is not divisible by {heads} heads")
        if o.tap_offset not in (0, 1):
            raise ConfigError(f"model.options.tap_offset: 0 (Eq. 2: block inputs) or 1 (block outputs), "
                              f"got {o.tap_offset!r}")
        try:
            merging = any(parse_merge_schedule(o.lme_merge, 1 << 10))
        except ValueError as e:
            raise ConfigError(f"model.options.lme_merge: {e}") from None
        if merging and o.pooling == "query":
            raise ConfigError("model.options.lme_merge: merging mixes the frames' tokens, which query pooling "
                              "needs per frame; set model.options.pooling=avg with it")
        fields = {f for _, f, _, _ in string.Formatter().parse(o.description_template) if f is not None}
        if "description" not in fields or not fields <= {"description", "class_name"}:
            raise ConfigError(f"model.options.description_template: {o.description_template!r} must contain "
                              "{description} and may contain {class_name}, nothing else in braces")
        return o

    @classmethod
    def sampled_frames(cls, options, num_frames: int) -> int:
        """α·T dense frames per view: the motion encoder's input; CLIP takes every α-th."""
        return cls.parse_options(options).alpha * num_frames

    @classmethod
    def vocabulary_descriptors(cls, options, class_names: Sequence[str]):
        """Per class ``[conceptual] + discriminative[:k]`` from the files the options name (either
        kind alone when only its file is set); None without files (class names alone)."""
        o = cls.parse_options(options)
        con, dis = _paths(o.conceptual_descriptions), _paths(o.discriminative_descriptions)
        if not con and not dis:
            log.warning("MoTED without description files: every class is described by its name alone (set "
                        "model.options.conceptual_descriptions / discriminative_descriptions)")
            return None
        per_class = [[] for _ in class_names]
        if con:
            for acc, texts in zip(per_class, read_descriptions(con, class_names, DESCRIPTION_KINDS["conceptual"],
                                                               "conceptual_descriptions", 1)):
                acc.extend(texts)
        if dis:
            for acc, texts in zip(per_class, read_descriptions(dis, class_names,
                                                               DESCRIPTION_KINDS["discriminative"],
                                                               "discriminative_descriptions",
                                                               o.num_discriminative)):
                acc.extend(texts)
        return tuple(tuple(d) for d in per_class)

    @classmethod
    def example_vocabulary(cls, num_classes: int, options=None) -> Vocabulary:
        """Class names only (the fallback): ``vclip flops`` then counts one sentence per class, the
        papers' fvcore convention (one text input); descriptions are encoded once per vocabulary."""
        return super().example_vocabulary(num_classes, options)

    # ------------------------------------------------------------------ video
    def _vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.clip.visual.parameters())

    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` [B, αT, 3, H, W] (dense) → ``{"video": v [B, E], "motion": m [B, E],
        "frames": f [B, T, E]}``."""
        if video.dim() != 5:
            raise ValueError(f"expected video [B, αT, 3, H, W], got shape {tuple(video.shape)}")
        o, a = self.options, self.options.alpha
        b, n = video.shape[:2]
        if n % a:
            raise ValueError(f"MoTED: {n} frames per view is not a multiple of alpha={a} (the sampler delivers "
                             f"alpha·T dense frames; data.num_frames is T)")
        t = n // a
        layers = self.clip.config.vision.layers
        taps = LayerTaps(at="input", class_token=True)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._vision_trainable()):
            out = self.encode_frames(video[:, ::a], hooks=[taps], return_tokens=o.tap_offset == 1)
        x = [out.state.input_taps[i] for i in range(layers)]
        if o.tap_offset == 1:
            x = x[1:] + [out.tokens[:, 0]]
        f = out.embeds.view(b, t, -1)
        self.motion_encoder.grad_checkpointing = self.clip.visual.transformer.grad_checkpointing
        z, size = self.motion_encoder(video, [xi.view(b, t, -1) for xi in x])
        if self.motion_pooling is not None:
            pooled = self.motion_pooling(z, t)
        elif size is None:
            pooled = z.mean(dim=1)
        else:
            w = size.to(z.dtype).unsqueeze(-1)
            pooled = (z * w).sum(1) / w.sum(1)
        m = self.motion_proj(self.motion_ln(pooled))
        if self.vision_fusion is not None:
            f = self.vision_fusion(f, z)
        return {"video": f.mean(dim=1), "motion": m, "frames": f}

    # ------------------------------------------------------------------ text
    def description_sentences(self, vocab: Vocabulary) -> list[list[str]]:
        """Per class, the sentences whose embeddings E_i the adapter reads: its descriptions in
        ``description_template``, or (no descriptions) the class-name prompts themselves."""
        if vocab.descriptors is None:
            return vocab.prompts()
        counts = {len(d) for d in vocab.descriptors}
        if len(counts) != 1 or 0 in counts:
            raise ConfigError(f"MoTED: every class needs the same number (>= 1) of descriptions, got {sorted(counts)}")
        tmpl = self.options.description_template
        return [[tmpl.format(description=d, class_name=c) for d in ds]
                for c, ds in zip(vocab.class_names, vocab.descriptors)]

    def encode_vocabulary(self, vocab: Vocabulary) -> dict[str, torch.Tensor]:
        """Frozen text features: ``names`` c [K, E] (prompt ensemble, normalised) and ``descriptions``
        E [K, n, E] (normalised). Without descriptions, E_i is c_i (one sentence per class)."""
        names = self.encode_prompt_ensemble(vocab)
        if vocab.descriptors is None:
            return {"names": names, "descriptions": names[:, None]}
        sentences = self.description_sentences(vocab)
        flat = [s for per in sentences for s in per]
        desc = F.normalize(self.encode_texts(flat), dim=-1).view(len(vocab), len(sentences[0]), -1)
        return {"names": names, "descriptions": desc}

    def text_embeddings(self, class_features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(e [K, E] motion-enhanced, e' [K, E] fused) from the frozen features: adapter, pooling,
        text fusion (each skipped when its toggle is off: H = E, e' = c)."""
        c, desc = class_features["names"], class_features["descriptions"]
        if self.text_adapter is not None:
            desc = self.text_adapter(desc.to(self.text_adapter.ln.weight.dtype))
        e = desc.mean(dim=1)
        fused = self.text_fusion(c.to(desc.dtype), desc) if self.text_fusion is not None else c
        return e, fused

    # ------------------------------------------------------------------ scores and losses
    def outputs(self, video_features, class_features) -> MethodOutput:
        e, fused = self.text_embeddings(class_features)
        s = self.clip.logit_scale.exp().float()
        motion = s * F.normalize(video_features["motion"].float(), dim=-1) @ F.normalize(e.float(), dim=-1).t()
        video = s * F.normalize(video_features["video"].float(), dim=-1) @ F.normalize(fused.float(), dim=-1).t()
        logits = video if self.options.predict == "video" else video + motion
        return MethodOutput(logits, aux={"motion_logits": motion, "video_logits": video})

    def logits(self, video_features, class_features) -> torch.Tensor:
        return self.outputs(video_features, class_features).logits

    def losses(self, output: MethodOutput, targets: torch.Tensor, label_smoothing: float = 0.0
               ) -> dict[str, torch.Tensor]:
        """Eq. 5's two terms, unweighted: ``motion`` = CE(S_m, y) (Eq. 3), ``video`` = CE(S_v, y) (Eq. 4)."""
        return {"motion": cross_entropy(output.aux["motion_logits"], targets, label_smoothing),
                "video": cross_entropy(output.aux["video_logits"], targets, label_smoothing)}


__all__ = ["MoTED", "MoTEDOptions", "read_descriptions"]
