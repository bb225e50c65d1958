"""X-CLIP (Ni et al., "Expanding Language-Image Pretrained Models for General Video Recognition",
ECCV 2022), exact to the official code (microsoft/VideoX ``X-CLIP/``), built on vclip's one CLIP.

Three modules are added to CLIP; their parameter names are the official ones, so official
checkpoints load by a prefix change (``vclip.methods.xclip_convert``):

* **Cross-frame communication** (``message_fc``, ``message_ln``, ``message_attn``; one of each per
  vision block): a ``TowerHook`` whose ``extra_tokens`` turns the class token of every frame at the
  block input into a message token (linear), lets the T message tokens of a video attend to each
  other (pre-LN multi-head attention, width/64 heads, residual), and appends each frame's message
  token to that frame's sequence for the block's self-attention; the block drops it before the MLP.
* **Multi-frame integration transformer** (``mit``): temporal position embedding, ``mit_layers``
  pre-LN blocks, residual from the input without the position embedding, mean over frames.
* **Video-specific prompt generator** (``prompts_visual_ln``, ``prompts_visual_proj``,
  ``prompts_generator``): last-layer patch tokens (without ``ln_post``) → LayerNorm → projection →
  mean over frames → LayerNorm; ``prompt_layers`` layers of cross-attention (text queries) + MLP;
  text' = text + α ⊙ G(text, visual), α per channel (init 0.1).

Logits: ``exp(logit_scale) · cos(video_b, text'_{b,k})`` — the text features are per video.

Defaults are those the official runs used (``models/xclip.py::load``): 1 MIT layer, 2 prompt
layers, α 0.1, bare class names, text tower and ``logit_scale`` frozen with the class features
computed once and cached, drop-path 0. New modules start from the official initialisations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vclip.backbone.hooks import ForwardState, TowerHook
from vclip.backbone.model import CLIP, Attention, LayerNorm, QuickGELU, ResidualAttentionBlock
from vclip.methods.base import VideoMethod, Vocabulary

log = logging.getLogger(__name__)


@dataclass
class XCLIPOptions:
    #: blocks of the multi-frame integration transformer (official effective default 1)
    mit_layers: int = 1
    #: layers of the video-specific prompt generator (official effective default 2)
    prompt_layers: int = 2
    #: initial value of the prompt generator's per-channel α
    prompt_alpha: float = 0.1
    #: stochastic depth in the vision tower (message attention, attention and MLP residuals),
    #: linear over depth from 0 to this rate (official MODEL.DROP_PATH_RATE, default 0)
    drop_path: float = 0.0
    #: freeze the text tower and logit_scale and cache the class features (official MODEL.FIX_TEXT)
    fix_text: bool = True
    #: heads of the MIT / prompt-generator attention; None = embed_dim / 64 (the official rule)
    mit_heads: Optional[int] = None
    prompt_heads: Optional[int] = None
    #: when a checkpoint was trained with another number of frames, interpolate the MIT temporal
    #: position embedding (linear) instead of refusing to load it
    interpolate_frames: bool = True


def default_heads(dim: int) -> int:
    """The official head count of X-CLIP's MIT and prompt generator: dim / 64 (at least 1)."""
    return max(1, dim // 64)


# ---------------------------------------------------------------------------- cross-frame messages


class CrossFrameCommunication(TowerHook):
    """(a) X-CLIP's message tokens, one per frame and vision block.

    At block ``i``'s input ``x`` [B·T, L, D]: ``msg = message_fc[i](x[:, 0])`` viewed as [B, T, D],
    ``msg = msg + DropPath_i(message_attn[i](message_ln[i](msg)))`` (attention across the T frames of
    each video), returned as [B·T, 1, D]: the block appends it for attention and drops it before the
    MLP. T is ``state.extras["num_frames"]``, else the ``num_frames`` given here. Pure (safe under
    gradient checkpointing: drop-path masks are replayed with the RNG state).
    """

    def __init__(self, message_fc: nn.ModuleList, message_ln: nn.ModuleList, message_attn: nn.ModuleList,
                 drop_paths: list[nn.Module], num_frames: int):
        self.message_fc, self.message_ln, self.message_attn = message_fc, message_ln, message_attn
        self.drop_paths = drop_paths
        self.num_frames = num_frames

    def extra_tokens(self, index: int, x: torch.Tensor, state: ForwardState) -> torch.Tensor:
        t = (state.extras.get("num_frames") if state is not None else None) or self.num_frames
        n, _, d = x.shape
        if n % t:
            raise ValueError(f"{n} frames in the batch are not a whole number of {t}-frame videos")
        msg = self.message_fc[index](x[:, 0]).view(n // t, t, d)
        attended, _ = self.message_attn[index](self.message_ln[index](msg))
        msg = msg + self.drop_paths[index](attended)
        return msg.reshape(n, 1, d)


# ---------------------------------------------------------------------------- MIT


class MultiframeIntegrationTransformer(nn.Module):
    """Temporal position embedding + pre-LN blocks (the backbone's block, QuickGELU, 4× MLP),
    residual from the input without the position embedding, mean over frames.
    [B, T, D] → [B, D]."""

    def __init__(self, num_frames: int, dim: int, layers: int = 1, heads: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, num_frames, dim))
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(dim, heads or default_heads(dim), 4.0, "quick_gelu", 1e-5) for _ in range(layers)
        )
        self.reset_parameters()

    @property
    def num_frames(self) -> int:
        return self.positional_embedding.shape[1]

    def reset_parameters(self) -> None:
        """Official init: position embedding and every Linear trunc-normal(0.02) with zero bias,
        attention in_proj xavier-uniform with zero bias, LayerNorms 1/0."""
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        for block in self.resblocks:
            nn.init.xavier_uniform_(block.attn.in_proj_weight)
            nn.init.zeros_(block.attn.in_proj_bias)
            for lin in (block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj):
                nn.init.trunc_normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            for ln in (block.ln_1, block.ln_2):
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_frames:
            raise ValueError(
                f"X-CLIP's MIT was built for {self.num_frames} frames, got {x.shape[1]}; load the weights with "
                f"num_frames={x.shape[1]} to interpolate its temporal position embedding"
            )
        h = x + self.positional_embedding.to(x.dtype)
        for block in self.resblocks:
            h, _ = block(h)
        return (h + x).mean(dim=1)


# ---------------------------------------------------------------------------- prompt generator


class CrossAttention(nn.Module):
    """Multi-head cross-attention: q/k/v projections without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"prompt generator: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        m, h = kv.shape[1], self.heads
        q = self.q_proj(q).view(b, n, h, d // h).transpose(1, 2)
        k = self.k_proj(kv).view(b, m, h, d // h).transpose(1, 2)
        v = self.v_proj(kv).view(b, m, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PromptGeneratorLayer(nn.Module):
    """``x = x + CrossAttn(norm1(x), visual); x = x + MLP(norm3(x))`` (MLP 4×, QuickGELU)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.norm1 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)
        # indices as in the official Sequential(Linear, QuickGELU, Dropout, Linear): mlp.0 / mlp.3
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), QuickGELU(), nn.Identity(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), visual)
        return x + self.mlp(self.norm3(x))


class VideoSpecificPrompt(nn.Module):
    """G(text, visual) = α ⊙ decoder(text, norm(visual)); text [B, K, D], visual [B, N, D]."""

    def __init__(self, dim: int, layers: int = 2, alpha: float = 0.1, heads: int | None = None):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.decoder = nn.ModuleList(PromptGeneratorLayer(dim, heads or default_heads(dim)) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((dim,), float(alpha)))
        self.reset_parameters(alpha)

    def reset_parameters(self, alpha: float) -> None:
        """Official init: Linear trunc-normal(0.02) with zero bias, LayerNorms 1/0, α constant."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.alpha.fill_(alpha)

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha.to(text.dtype) * text


# ---------------------------------------------------------------------------- the method


class XCLIP(VideoMethod):
    """X-CLIP on one CLIP (see module docstring).

    ``encode_video`` returns ``{"video": [B, E] MIT embedding, "tokens": [B, N, E] frame-averaged
    projected patch tokens}``; ``encode_vocabulary`` the text embeddings [K, E] (raw, not normalised:
    they are the prompt generator's queries); ``logits`` runs the prompt generator per video.
    """

    Options = XCLIPOptions
    #: the official two LR levels: CLIP at lr, the added modules at lr × train.lr_mult_new
    parameter_groups = {"new": ("message_", "mit.", "prompts_")}
    #: official MODEL.FIX_TEXT freezes logit_scale with the text tower
    temperature_follows_text = True
    default_templates = ("{}",)

    def __init__(self, clip: CLIP, *, num_frames: int, options: XCLIPOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        o = self.options
        if o.mit_layers < 1 or o.prompt_layers < 0:
            raise ValueError(f"X-CLIP needs mit_layers >= 1 and prompt_layers >= 0, got {o.mit_layers}, {o.prompt_layers}")
        width, heads, layers = clip.config.vision.width, clip.config.vision.heads, clip.config.vision.layers
        embed = clip.config.embed_dim
        eps = clip.config.layer_norm_eps
        # cross-frame communication, one set per vision block (official init = PyTorch defaults)
        self.message_fc = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.message_ln = nn.ModuleList(LayerNorm(width, eps=eps) for _ in range(layers))
        self.message_attn = nn.ModuleList(Attention(width, heads) for _ in range(layers))
        for attn in self.message_attn:  # as nn.MultiheadAttention: xavier in_proj, zero biases
            nn.init.zeros_(attn.out_proj.bias)
        self.mit = MultiframeIntegrationTransformer(num_frames, embed, o.mit_layers, o.mit_heads)
        self.prompts_visual_ln = LayerNorm(width, eps=eps)
        self.prompts_visual_proj = nn.Parameter(torch.randn(width, embed))
        self.prompts_generator = VideoSpecificPrompt(embed, o.prompt_layers, o.prompt_alpha, o.prompt_heads)
        if o.drop_path:
            clip.visual.set_drop_path(o.drop_path)
        if o.fix_text:
            self.freeze(text=True)

    # ------------------------------------------------------------------ configuration
    @property
    def mit_heads(self) -> int:
        return self.mit.resblocks[0].attn.heads

    @property
    def prompt_heads(self) -> int:
        return self.prompts_generator.decoder[0].cross_attn.heads if len(self.prompts_generator.decoder) else \
            default_heads(self.clip.config.embed_dim)

    def cross_frame_hook(self, num_frames: int | None = None) -> CrossFrameCommunication:
        drops = [block.drop_path for block in self.clip.visual.transformer.resblocks]
        return CrossFrameCommunication(self.message_fc, self.message_ln, self.message_attn, drops,
                                       num_frames or self.num_frames)

    # ------------------------------------------------------------------ the interface
    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        if video.dim() != 5:
            raise ValueError(f"expected video [B, T, 3, H, W], got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        state = ForwardState(tower="vision", extras={"num_frames": t})
        out = self.encode_frames(video, hooks=[self.cross_frame_hook(t)], state=state, return_tokens=True)
        frames = out.embeds.view(b, t, -1)
        video_emb = self.mit(frames)
        patches = self.prompts_visual_ln(out.tokens[:, 1:])
        patches = patches @ self.prompts_visual_proj.to(patches.dtype)
        tokens = patches.view(b, t, patches.shape[1], -1).mean(dim=1)
        return {"video": video_emb, "tokens": tokens}

    def encode_vocabulary(self, vocab: Vocabulary) -> torch.Tensor:
        """Text embeddings [K, E] of the class names in the templates (bare names by default); with
        several templates, the mean of the raw embeddings."""
        prompts = vocab.prompts()
        flat = [p for per_class in prompts for p in per_class]
        emb = self.encode_texts(flat)
        return emb.view(len(prompts), len(vocab.templates), -1).mean(dim=1)

    def logits(self, video_features: dict[str, torch.Tensor], class_features: torch.Tensor) -> torch.Tensor:
        video, tokens = video_features["video"], video_features["tokens"]
        text = class_features.to(tokens.dtype).unsqueeze(0).expand(video.shape[0], -1, -1)
        text = text + self.prompts_generator(text, tokens)
        v = F.normalize(video, dim=-1)
        t = F.normalize(text, dim=-1)
        return self.clip.logit_scale.exp() * torch.einsum("bd,bkd->bk", v, t.to(v.dtype))

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, source: str, cfg) -> "XCLIP":
        """The method for a run config whose ``model.pretrained`` is ``source``: a full X-CLIP
        checkpoint (official ``.pth``, transformers ``microsoft/xclip-*`` directory, vclip X-CLIP
        state dict) loads every weight; a plain CLIP (file, directory, name) loads the CLIP weights
        and initialises the new modules as the official code does."""
        from vclip.methods.xclip_convert import from_run_config

        return from_run_config(source, cfg)


__all__ = ["XCLIP", "XCLIPOptions", "CrossFrameCommunication", "MultiframeIntegrationTransformer",
           "VideoSpecificPrompt", "default_heads"]
