"""ALT, "Align before Adapt" (ICLR 2024 submission; CVPR 2024 as "... Entity-to-Region Alignments"):
region tokens by token merging, aligned to a text-entity corpus, decoded into one video embedding.

No official code exists; vclip follows the ICLR text literally ("design C" of
``shared/reference/alt_tome.md``: everything after the ViT in the joint d-dimensional space).
Shapes for ViT-B/16, T frames, K corpus entities, d = 512::

    (Eqs. 1–3) E_L = ViT(frames) with ToMe r = 8 in every block and proportional attention
               (softmax(QKᵀ/√d + log s)): [B·T, N + 1 − L·r = 101, 768], class token first
    (A2)       X = ln_post(E_L) · proj                               [B·T, 101, d]  (every token)
    (Eq. 4)    w = cos(X, S),  A = softmax_K(w / τ + γ),  γ ~ Gumbel(0, 1)      [B·T, 101, K]
    (Eq. 5)    Â = onehot(argmax_K A) + (A − sg(A))          exactly one-hot forward, ∂Â = ∂A backward
    (Eq. 6)    Q̂ = MLP(Â S): flatten 101·d → Linear → d         one query per frame, [B, T, d]
    (Eq. 7)    X̂ = X[:, 0]                                        frame class embeddings, [B, T, d]
    (Eq. 8)    per decoder block i = 1…M (M = 4):
               X̂'_i = X̂ + Conv1d_i(X̂)                      (over time, kernel 3)
               Q̂'_i = Q̂_{i−1} + SA_i(LN Q̂_{i−1})
               Q̂_i  = Q̂'_i + CA_i(LN Q̂'_i, LN X̂'_i)
    (Eq. 9)    z = Linear(mean_t Q̂_M)
    (Eq. 10)   logits = exp(logit_scale) · cos(z, c_k),  c = the 16-template class ensemble

S is the entity corpus encoded once by the frozen text tower (``model.options.corpus``: a file of
``vclip describe --kind alt-corpus``) plus the label-word units of the vocabulary's classes and
default body parts (the paper expands the corpus with each new dataset's labels; without a
corpus file these alone are the corpus — the documented fallback). At evaluation there is no
noise and Â S is a gather of the best entity (the same value). Trained: the ViT (LR × 1) and the
new modules (query MLP and final Linear: group ``new``; decoder: group ``decoder``; both at
``lr × train.lr_mult_new`` unless ``train.lr_mults`` says otherwise); the text tower, the
corpus and ``logit_scale`` are frozen.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vclip.backbone.hooks import TokenMerging, parse_merge_schedule
from vclip.backbone.model import CLIP, LayerNorm
from vclip.errors import ConfigError
from vclip.methods.base import VideoMethod, Vocabulary
from vclip.text.templates import PRESETS

log = logging.getLogger(__name__)


@dataclass
class ALTOptions:
    #: ToMe tokens merged in every block (paper: 8; Table 8 sweeps 0 / 4 / 8 / 13)
    r: int = 8
    #: ToMe's proportional attention (Eq. 2)
    proportional_attention: bool = True
    #: the entity corpus (``vclip describe --kind alt-corpus``); None: label words + body parts only
    corpus: Optional[str] = None
    #: add the label-word units of the vocabulary's classes and the body parts to the corpus
    label_entities: bool = True
    #: the sentence the text tower encodes per corpus entity (the paper does not say)
    entity_template: str = "{unit}: {description}"
    #: Gumbel-softmax temperature τ (App. B: 1)
    tau: float = 1.0
    #: multiply the cosines by exp(logit_scale) before the noise (cosines in [−1, 1] are small
    #: against Gumbel noise of std 1.28; off = the paper)
    align_scale: bool = False
    #: Gumbel noise at evaluation too (off: deterministic argmax, GroupViT's evaluation)
    gumbel_at_eval: bool = False
    #: Eq. 6's MLP: "flatten" (tokens·d → d, the literal reading) or "mean" (size-weighted mean of
    #: the aligned embeddings → Linear d → d; any token count)
    query_pool: Literal["flatten", "mean"] = "flatten"
    #: decoder blocks M (B: 4, L: 6), heads, temporal kernel
    decoder_layers: int = 4
    decoder_heads: int = 8
    conv_kernel: int = 3
    #: the temporal convolution in every decoder block (Table C4 ablates it)
    temporal_conv: bool = True
    #: convolve the previous block's X̂' instead of X̂ in every block (Eq. 8 literal: off)
    chain_conv: bool = False
    #: entities of the stand-in corpus ``vclip flops`` counts the alignment with (reference: ≈ 5 k)
    example_corpus_size: int = 5000


def merged_token_count(tokens: int, schedule: list[int]) -> int:
    """Tokens left after ToMe's schedule (each block's r clamped to (T − 1) // 2, class token kept):
    N + 1 − L·r without clamping (Eq. 3): 197 → 101 for B/16 with r = 8."""
    for r in schedule:
        tokens -= min(r, (tokens - 1) // 2)
    return tokens


def hard_alignment(w: torch.Tensor, tau: float = 1.0, noise: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Eqs. 4–5: ``A = softmax(w / τ + γ)`` over the last axis, γ ~ Gumbel(0, 1) i.i.d. per entry
    (``noise``), and ``Â = onehot(argmax A) + (A − sg(A))``. ``A − sg(A)`` is exactly zero in the
    forward, so Â is exactly one-hot in any dtype, while its gradient is that of A."""
    logits = w / tau
    if noise:
        e = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        e.exponential_(generator=generator)
        gumbel = -e.clamp_min(torch.finfo(torch.float32).tiny).log()
        logits = logits + gumbel.to(logits.dtype)
    soft = logits.softmax(dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(dim=-1, keepdim=True), 1.0)
    return hard + (soft - soft.detach())


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (q, k, v and output
    projections with biases). ``query`` [B, Lq, d], ``kv`` [B, Lk, d] → [B, Lq, d]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ALT decoder: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, lq, d = query.shape
        h = self.heads

        def split(x):
            return x.view(b, x.shape[1], h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(query)), split(self.k_proj(kv)), split(self.v_proj(kv)))
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, d))


class DecoderBlock(nn.Module):
    """One block of Eq. 8: ``X̂' = X̂ + Conv1d(X̂)`` over time; ``Q̂' = Q̂ + SA(LN Q̂)``;
    ``Q̂ = Q̂' + CA(LN Q̂', LN X̂')`` (pre-LN residuals, no feed-forward)."""

    def __init__(self, dim: int, heads: int, kernel: int = 3, conv: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2) if conv else None
        self.ln_self = LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads)
        self.ln_query = LayerNorm(dim)
        self.ln_frames = LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, heads)

    def forward(self, q: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q`` [B, T, d] frame queries, ``frames`` X̂ [B, T, d] → (Q̂_i, X̂'_i)."""
        x = frames
        if self.conv is not None:
            x = frames + self.conv(frames.transpose(1, 2)).transpose(1, 2)
        h = self.ln_self(q)
        q = q + self.self_attn(h, h)
        kv = self.ln_frames(x)
        q = q + self.cross_attn(self.ln_query(q), kv)
        return q, x


class VideoDecoder(nn.Module):
    """M decoder blocks (Eq. 8); every block convolves X̂ itself unless ``chain_conv``."""

    def __init__(self, dim: int, layers: int = 4, heads: int = 8, kernel: int = 3, conv: bool = True,
                 chain_conv: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, kernel, conv) for _ in range(layers))
        self.chain_conv = chain_conv

    def forward(self, q: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        x = frames
        for block in self.blocks:
            q, x_i = block(q, x)
            if self.chain_conv:
                x = x_i
        return q


class ALT(VideoMethod):
    """ALT on one CLIP (see the module docstring).

    ``encode_video``: ``{"tokens": X [B, T, n, d], "sizes": [B, T, n]}`` (projected region tokens
    and their ToMe sizes). ``encode_vocabulary``: ``{"classes": [C, d] ensemble, "entities": S
    [K, d]}``, both normalised. ``outputs``: Eqs. 4–10, with the alignment's entity indices in
    ``aux["assignment"]`` [B, T, n] and the video embedding in ``aux["video"]`` [B, d].
    """

    Options = ALTOptions
    parameter_groups = {"decoder": ("decoder.",), "new": ("query_mlp.", "final_mlp.")}
    temperature_follows_text = True
    flops_count_text = False
    merges_tokens_itself = True
    default_templates = PRESETS["actionclip16"]

    def __init__(self, clip: CLIP, *, num_frames: int, options: ALTOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        o = self.options
        v, d = clip.config.vision, clip.config.embed_dim
        self.schedule = parse_merge_schedule(o.r, v.layers)
        self.merging = TokenMerging(self.schedule, v.layers, proportional_attention=o.proportional_attention)
        self.num_tokens = merged_token_count(v.num_tokens, self.schedule)
        self.corpus_entities: list[dict] = []
        if o.corpus:
            from vclip.errors import AnnotationError
            from vclip.text.corpus import read_corpus

            try:
                self.corpus_entities = read_corpus(o.corpus)
            except AnnotationError as e:
                raise ConfigError(f"model.options.corpus: {e}") from None
        self.query_mlp = nn.Linear(self.num_tokens * d if o.query_pool == "flatten" else d, d)
        self.decoder = VideoDecoder(d, o.decoder_layers, o.decoder_heads, o.conv_kernel, o.temporal_conv, o.chain_conv)
        self.final_mlp = nn.Linear(d, d)
        self.reset_parameters()
        self.freeze(text=True)  # the text tower, the corpus and logit_scale stay fixed (App. B)

    @classmethod
    def parse_options(cls, options):
        o = super().parse_options(options)
        if isinstance(o.r, bool) or not isinstance(o.r, int) or o.r < 0:
            raise ConfigError(f"model.options.r: expected an int >= 0, got {o.r!r}")
        if not o.tau > 0:
            raise ConfigError(f"model.options.tau: must be > 0, got {o.tau}")
        if o.decoder_layers < 1 or o.decoder_heads < 1:
            raise ConfigError("model.options.decoder_layers and decoder_heads must be >= 1")
        if o.conv_kernel < 1 or o.conv_kernel % 2 == 0:
            raise ConfigError(f"model.options.conv_kernel: must be odd and >= 1, got {o.conv_kernel}")
        if o.example_corpus_size < 1:
            raise ConfigError(f"model.options.example_corpus_size: must be >= 1, got {o.example_corpus_size}")
        if "{unit}" not in o.entity_template:
            raise ConfigError(f"model.options.entity_template: {o.entity_template!r} must contain {{unit}}")
        if not o.corpus and not o.label_entities:
            raise ConfigError("model.options: label_entities is false and no corpus is given: the entity corpus "
                              "would be empty")
        return o

    def reset_parameters(self) -> None:
        """New Linear/Conv1d weights trunc-normal(0.02), biases 0, LayerNorms 1/0 (X-CLIP's convention)."""
        for m in (self.query_mlp, self.decoder, self.final_mlp):
            for mod in m.modules():
                if isinstance(mod, (nn.Linear, nn.Conv1d)):
                    nn.init.trunc_normal_(mod.weight, std=0.02)
                    nn.init.zeros_(mod.bias)
                elif isinstance(mod, nn.LayerNorm):
                    nn.init.ones_(mod.weight)
                    nn.init.zeros_(mod.bias)

    # ------------------------------------------------------------------ text side
    def entity_sentences(self, vocab: Vocabulary) -> list[str]:
        """The corpus S as sentences: the corpus file's entities, then (``label_entities``) the
        label-word units of the vocabulary's classes and the body parts, then any per-class
        descriptors the vocabulary carries; deduplicated (normalised text), first occurrence kept."""
        from vclip.text.corpus import BODY_PARTS, entity_sentences, label_units, normalise_unit

        sentences = entity_sentences(self.corpus_entities, self.options.entity_template)
        units = {normalise_unit(e["unit"]) for e in self.corpus_entities}
        if self.options.label_entities:
            for u in [w for c in vocab.class_names for w in label_units(c)] + list(BODY_PARTS):
                if normalise_unit(u) not in units:
                    units.add(normalise_unit(u))
                    sentences.append(u)
        if vocab.descriptors:
            sentences += [d for per in vocab.descriptors for d in per]
        seen, out = set(), []
        for s in sentences:
            key = re.sub(r"\s+", " ", s.strip().lower())
            if key and key not in seen:
                seen.add(key)
                out.append(s)
        if not out:
            raise ConfigError("ALT: the entity corpus is empty (set model.options.corpus or label_entities)")
        return out

    def encode_vocabulary(self, vocab: Vocabulary) -> dict[str, torch.Tensor]:
        entities = F.normalize(self.encode_texts(self.entity_sentences(vocab)), dim=-1)
        return {"classes": self.encode_prompt_ensemble(vocab), "entities": entities}

    @classmethod
    def example_vocabulary(cls, num_classes: int, options=None) -> Vocabulary:
        """One template per class (the corpus and class text are computed offline and not counted)
        and ``example_corpus_size`` stand-in entities carried as descriptors."""
        opts = cls.parse_options(options or {})
        names = tuple(f"class {i}" for i in range(num_classes))
        k = opts.example_corpus_size
        per = [tuple(f"entity {j}" for j in range(i, k, num_classes)) for i in range(num_classes)]
        return Vocabulary(names, ("{}",), per)

    # ------------------------------------------------------------------ video side
    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = video.shape[:2]
        out = self.encode_frames(video, hooks=[self.merging], return_tokens=True)
        n = out.tokens.shape[1]
        if n != self.num_tokens:
            raise ValueError(f"ALT was built for {self.num_tokens} region tokens per frame, the image tower gave {n} "
                             "(another image size than the model's?)")
        x = self.clip.visual.project_tokens(out.tokens)
        size = out.state.size if out.state.size is not None else x.new_ones(x.shape[:2])
        return {"tokens": x.view(b, t, n, -1), "sizes": size.view(b, t, n)}

    def align(self, tokens: torch.Tensor, entities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 4–6 up to Â S: (aligned entity embeddings [..., n, d], entity index [..., n])."""
        s = entities.to(tokens.dtype)
        w = F.normalize(tokens, dim=-1) @ s.t()
        if self.options.align_scale:
            w = w * self.clip.logit_scale.exp().to(w.dtype)
        if self.training or self.options.gumbel_at_eval:
            a_hat = hard_alignment(w, self.options.tau, noise=True)
            return a_hat @ s, a_hat.detach().argmax(dim=-1)
        index = w.argmax(dim=-1)
        return s[index], index

    def outputs(self, video_features: dict[str, torch.Tensor], class_features: dict[str, torch.Tensor]):
        from vclip.methods.base import MethodOutput

        x, sizes = video_features["tokens"], video_features["sizes"]
        b, t, n, d = x.shape
        aligned, index = self.align(x, class_features["entities"])
        if self.options.query_pool == "flatten":
            q = self.query_mlp(aligned.reshape(b, t, n * d))
        else:
            wts = (sizes / sizes.sum(dim=-1, keepdim=True)).to(aligned.dtype)
            q = self.query_mlp((aligned * wts.unsqueeze(-1)).sum(dim=2))
        q = self.decoder(q, x[:, :, 0])
        z = self.final_mlp(q.mean(dim=1))
        c = class_features["classes"]
        logits = self.clip.logit_scale.exp() * F.normalize(z, dim=-1) @ c.to(z.dtype).t()
        return MethodOutput(logits, aux={"video": z, "assignment": index})

    def logits(self, video_features, class_features) -> torch.Tensor:
        return self.outputs(video_features, class_features).logits


__all__ = ["ALT", "ALTOptions", "DecoderBlock", "VideoDecoder", "hard_alignment", "merged_token_count"]
