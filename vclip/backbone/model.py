"""The one CLIP implementation of vclip: a ViT image tower and a causal text tower.

Parameter names follow OpenAI's release (``visual.conv1``, ``visual.transformer.resblocks.{i}.attn
.in_proj_weight``, ``ln_1``, ``mlp.c_fc`` ...), with the text tower under ``text.`` instead of at
the top level, so OpenAI and open_clip weights load with a prefix change and X-CLIP/ViFi-CLIP/OST
checkpoints keep their familiar names.

Methods extend the towers through **hooks** (``vclip.backbone.hooks.TowerHook``): small objects
handed to ``forward`` that the towers call at fixed points of every block. With no hook (or with
hooks that do nothing) the computation is exactly plain CLIP. See ``docs/architecture.md``.

Block (pre-LN, as in CLIP), with the hook points marked::

    state.size = s                                    # before block 0's hooks (None = all 1)
    x = hook.before_block(i, x)                       # (b) deep prompts replaced; (d) input taps
    s = state.size                                    # a hook that adds/removes tokens updates it
    e = hook.extra_tokens(i, x)                       # (a) e.g. X-CLIP message tokens [N, E, D]
    x = x + Attn(LN1([x; e]))[:, :L]                  # extra tokens attend, then are dropped
    x, s = hook.merge(i, x, metric=k̄, size=s)         # (c) ToMe: merge between attention and MLP
    x = x + MLP(LN2(x))
    state.size = s                                    # after every block, outside checkpointing
    x = hook.after_block(i, x)                        # (d) layer taps

    Attn(h) = softmax(q kᵀ / √d + log s) v            # log-size bias over keys when sizes are set

At most one hook may implement ``merge`` (ValueError otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vclip.backbone.config import CLIPConfig, TextConfig, VisionConfig
from vclip.backbone.hooks import ForwardState, TowerHook, check_single_merge


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (also under autocast), returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class QuickGELU(nn.Module):
    """x · σ(1.702 x), the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """``"quick_gelu"`` (OpenAI's CLIP) or ``"gelu"`` (exact, erf); any other name is refused."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation: expected 'quick_gelu' or 'gelu', got {name!r}")


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (identity at rate 0 or in eval)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (OpenAI's ``in_proj_*`` layout),
    computed by ``scaled_dot_product_attention``.

    ``num_queries``: only the first ``num_queries`` tokens produce outputs (the rest are keys and
    values only — extra tokens whose outputs are discarded). ``key_bias``: an additive logit bias
    over keys, [N, S] (ToMe's log-size). ``return_metric``: also return the keys averaged over heads
    ([N, S, head_dim], ToMe's similarity metric).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        num_queries: int | None = None,
        key_bias: torch.Tensor | None = None,
        return_metric: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, s, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if num_queries is not None and num_queries < s:
            q = q[:, :, :num_queries]
        mask = None
        if key_bias is not None:
            mask = key_bias[:, None, None, :].to(q.dtype)
            if causal:
                lq = q.shape[2]
                upper = torch.ones(lq, s, dtype=torch.bool, device=x.device).triu(1)
                mask = mask.masked_fill(upper, float("-inf"))
            causal = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, q.shape[2], d))
        metric = k.mean(dim=1) if return_metric else None
        return out, metric


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LN transformer block with the hook points of the module docstring."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, activation: str, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.ln_1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.ln_2 = LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), activation)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        size: torch.Tensor | None = None,
        hooks: Sequence[TowerHook] = (),
        state: ForwardState | None = None,
        index: int = 0,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        length = x.shape[1]
        extras = [e for e in (h.extra_tokens(index, x, state) for h in hooks) if e is not None]
        if extras:
            h = self.ln_1(torch.cat([x, *extras], dim=1))
        else:
            h = self.ln_1(x)
        key_bias = None
        if size is not None and (state is None or state.proportional_attention):
            key_bias = size.log()
            if extras:  # extra tokens count once
                key_bias = F.pad(key_bias, (0, h.shape[1] - length))
        want_metric = any(hk.needs_metric for hk in hooks)
        a, metric = self.attn(
            h, causal=causal, num_queries=length if extras else None, key_bias=key_bias, return_metric=want_metric
        )
        x = x + self.drop_path(a)
        if metric is not None and extras:
            metric = metric[:, :length]
        for hk in hooks:
            x, size = hk.merge(index, x, metric, size, state)
        x = x + self.drop_path(self.mlp(self.ln_2(x)))
        return x, size


def drop_path_rates(rate: float, layers: int) -> list[float]:
    """Per-block drop-path rates, linear from 0 to ``rate`` over ``layers`` blocks."""
    return [rate * i / max(layers - 1, 1) for i in range(layers)]


class Transformer(nn.Module):
    """A stack of blocks; calls ``before_block``/``after_block`` hooks around each one and keeps
    ``state.size`` current at both points (see the module docstring)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        activation: str = "quick_gelu",
        eps: float = 1e-5,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, activation, eps, r)
            for r in drop_path_rates(drop_path, layers)
        )
        self.grad_checkpointing = False

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth on the attention and MLP residuals of every block, linearly spaced
        over depth from 0 (first block) to ``rate`` (last block); 0 turns it off."""
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        for block, r in zip(self.resblocks, drop_path_rates(rate, self.layers)):
            block.drop_path.p = r

    def forward(
        self,
        x: torch.Tensor,
        hooks: Sequence[TowerHook] = (),
        state: ForwardState | None = None,
        causal: bool = False,
        size: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        check_single_merge(hooks)
        if state is not None:
            state.size = size
        for i, block in enumerate(self.resblocks):
            for h in hooks:
                x = h.before_block(i, x, state)
            if state is not None:
                size = state.size
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, size = checkpoint(block, x, size, hooks, state, i, causal, use_reentrant=False)
            else:
                x, size = block(x, size, hooks, state, i, causal)
            if state is not None:
                state.size = size
            for h in hooks:
                x = h.after_block(i, x, state)
        return x, size


@dataclass
class TowerOutput:
    """What a tower returns.

    ``embeds``: projected pooled embedding [N, embed_dim] (not normalised).
    ``tokens``: the final layer's token sequence before the final LayerNorm [N, L, width]
    (vision: class token first, then patches, then any tokens a hook appended); set when
    ``return_tokens=True``.
    ``pooled``: the pooled token after the final LayerNorm, before projection [N, width].
    ``state``: the forward state, holding what hooks recorded (``state.taps`` / ``state.input_taps``
    for layer taps, ``state.size`` for the final token sizes, ``state.source`` with source tracking).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    state: ForwardState | None = None


class VisionTransformer(nn.Module):
    """CLIP's image tower: conv patch embedding, class token, positional embedding, ``ln_pre``,
    pre-LN blocks, ``ln_post`` on the class token, projection."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, activation: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_tokens, w))
        self.ln_pre = LayerNorm(w, eps=eps)
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, activation, eps)
        self.ln_post = LayerNorm(w, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth in the image tower's blocks (see ``Transformer.set_drop_path``)."""
        self.transformer.set_drop_path(rate)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] → [N, 1 + patches, width] with positional embedding added."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        if x.shape[1] != self.positional_embedding.shape[0]:
            raise ValueError(
                f"input of {pixels.shape[-2]}x{pixels.shape[-1]} px gives {x.shape[1] - 1} patches, but the "
                f"model was built for {self.cfg.image_size} px ({self.positional_embedding.shape[0] - 1} patches); "
                "resize the input or load the weights with image_size=... to interpolate the positional embedding"
            )
        return x + self.positional_embedding.to(x.dtype)

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` + ``proj`` on any tokens [..., width] → [..., embed_dim], e.g. region tokens
        (``return_tokens=True``) into the joint space. On the class token ``tokens[:, 0]`` this is
        exactly (bit for bit) the tower's ``embeds``."""
        h = self.ln_post(tokens)
        return h @ self.proj.to(h.dtype)

    def forward(
        self,
        pixels: torch.Tensor,
        hooks: Sequence[TowerHook] = (),
        state: ForwardState | None = None,
        return_tokens: bool = False,
    ) -> TowerOutput:
        state = state if state is not None else ForwardState(tower="vision")
        x = self.embed(pixels)
        for h in hooks:
            x = h.on_embed(x, state)
        x = self.ln_pre(x)
        x, state.size = self.transformer(x, hooks, state, causal=False, size=state.size)
        pooled = self.ln_post(x[:, 0])
        embeds = pooled @ self.proj.to(pooled.dtype)
        return TowerOutput(embeds=embeds, pooled=pooled, tokens=x if return_tokens else None, state=state)


class TextTransformer(nn.Module):
    """CLIP's text tower: token + positional embedding, causal pre-LN blocks, ``ln_final``, the
    end-of-text token's feature (the highest token id in each row) projected."""

    def __init__(self, cfg: TextConfig, embed_dim: int, activation: str = "quick_gelu", eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, activation, eps)
        self.ln_final = LayerNorm(w, eps=eps)
        self.text_projection = nn.Parameter(torch.empty(w, embed_dim))

    def forward(
        self,
        tokens: torch.Tensor,
        hooks: Sequence[TowerHook] = (),
        state: ForwardState | None = None,
        return_tokens: bool = False,
    ) -> TowerOutput:
        if tokens.shape[-1] != self.cfg.context_length:
            raise ValueError(
                f"text tokens have length {tokens.shape[-1]}, the model expects {self.cfg.context_length}"
            )
        state = state if state is not None else ForwardState(tower="text")
        state.eot_index = tokens.argmax(dim=-1)
        x = self.token_embedding(tokens)
        for h in hooks:  # before the positional embedding: inserted prompts take positions 1…n_ctx
            x = h.on_embed(x, state)
        x = x + self.positional_embedding.to(x.dtype)
        x, _ = self.transformer(x, hooks, state, causal=True)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), state.eot_index]
        embeds = pooled @ self.text_projection.to(pooled.dtype)
        return TowerOutput(embeds=embeds, pooled=pooled, tokens=x if return_tokens else None, state=state)


class CLIP(nn.Module):
    """Image tower ``visual``, text tower ``text`` and the learned ``logit_scale`` (log of τ⁻¹)."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        act, eps = config.activation, config.layer_norm_eps
        self.visual = VisionTransformer(config.vision, config.embed_dim, act, eps)
        self.text = TextTransformer(config.text, config.embed_dim, act, eps)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenAI's initialisation (text tower and residual projections scaled by depth)."""
        for tower in (self.visual, self.text):
            t = tower.transformer
            attn_std = t.width**-0.5
            proj_std = attn_std * (2 * t.layers) ** -0.5
            fc_std = (2 * t.width) ** -0.5
            for block in t.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.zeros_(block.mlp.c_fc.bias)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                nn.init.zeros_(block.mlp.c_proj.bias)
        nn.init.normal_(self.text.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text.positional_embedding, std=0.01)
        nn.init.normal_(self.text.text_projection, std=self.text.transformer.width**-0.5)

    def set_grad_checkpointing(self, enabled: bool = True, towers: Sequence[str] = ("visual", "text")) -> None:
        """Gradient checkpointing per block in the named towers (``"visual"``, ``"text"``; default
        both). E.g. ``towers=("text",)`` when the text tower re-encodes a large vocabulary with
        gradients at every step (deep text prompts) and the image tower is cheap to keep."""
        unknown = [t for t in towers if t not in ("visual", "text")]
        if unknown:
            raise ValueError(f"set_grad_checkpointing: unknown tower(s) {unknown}; expected 'visual' and/or 'text'")
        for name in towers:
            getattr(self, name).transformer.grad_checkpointing = enabled

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False, hooks: Sequence[TowerHook] = ()) -> torch.Tensor:
        e = self.visual(pixels, hooks).embeds
        return F.normalize(e, dim=-1) if normalize else e

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False, hooks: Sequence[TowerHook] = ()) -> torch.Tensor:
        e = self.text(tokens, hooks).embeds
        return F.normalize(e, dim=-1) if normalize else e

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP logits: (per image [N_img, N_txt], per text [N_txt, N_img])."""
        img = self.encode_image(pixels, normalize=True)
        txt = self.encode_text(tokens, normalize=True)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype


def interpolate_positional_embedding(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Resize a vision positional embedding [1 + g², D] to ``num_tokens`` = 1 + g'² (bicubic on the
    patch grid, class position kept) — for running a checkpoint at another resolution."""
    if pos.shape[0] == num_tokens:
        return pos
    old, new = math.isqrt(pos.shape[0] - 1), math.isqrt(num_tokens - 1)
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(pos.dtype)])
