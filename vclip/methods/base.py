"""The interface every method implements.

A method wraps one ``CLIP`` (``self.clip``) and adds what its paper adds. It implements three
things::

    encode_video(video [B, T', 3, H, W])   -> video features (tensor or dict)
    encode_vocabulary(vocab)               -> class features (tensor or dict), differentiable
    logits(video_features, class_features) -> [B, K]          (or ``outputs`` for more than logits)

and inherits the rest:

* ``forward(video, vocab_or_class_features, targets=None)`` returns a :class:`MethodOutput`:
  ``logits`` [B, K], named auxiliary tensors ``aux`` and, when ``targets`` are given, the named
  loss terms ``losses`` — all computed inside the (DDP-wrapped, possibly compiled) call, as
  nanoGPT's ``forward(idx, targets)``. The trainer weighs the terms with ``train.loss_weights``
  (defaults: the class's ``loss_weights``) and sums them; evaluation reads ``output.logits``.
* The cached ``class_features``: the encoded vocabulary is computed once under ``no_grad`` and
  reused while nothing that produces it trains; the cache key is the vocabulary's content and the
  identity/version counters of every *text-side* parameter (``clip.text`` and the modules named in
  ``text_side_modules``), so an optimizer step or a weight load invalidates it. When any text-side
  parameter trains, training re-encodes the vocabulary with gradients on every step.
* Parameter groups (``parameter_groups``: name → parameter-name prefixes, each with an LR
  multiplier) and weight decay per parameter (``decays``: by default not biases, < 2-D tensors and
  the ``no_weight_decay`` names), read by ``vclip.engine.optim``.
* Freezing (``freeze``), loading (``from_pretrained``), and the vocabulary's per-class descriptors
  (``vocabulary_descriptors``) with working defaults, so a new method is one file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vclip.backbone.hooks import TokenMerging, parse_merge_schedule
from vclip.backbone.model import CLIP
from vclip.backbone.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

#: substrings of parameter names that never get weight decay (besides biases and < 2-D tensors)
NO_DECAY_KEYWORDS = ("positional_embedding", "position_embedding", "class_embedding", "logit_scale")


def default_decays(name: str, param: torch.Tensor, keywords: Sequence[str] = NO_DECAY_KEYWORDS) -> bool:
    """The universal weight-decay rule: no decay for biases, tensors with fewer than two dimensions
    (LayerNorm weights, scales) and names containing one of ``keywords``."""
    no = param.ndim < 2 or name.endswith(".bias") or name == "bias" or any(k in name for k in keywords)
    return not no


@dataclass(frozen=True)
class Vocabulary:
    """The classes a model scores: names, prompt templates, optional per-class descriptors."""

    class_names: tuple[str, ...]
    templates: tuple[str, ...] = ("{}",)
    #: per-class lists of sentences (OST/MoTED descriptors); None when unused
    descriptors: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "templates", tuple(self.templates))
        if self.descriptors is not None:
            object.__setattr__(self, "descriptors", tuple(tuple(d) for d in self.descriptors))
            if len(self.descriptors) != len(self.class_names):
                raise ValueError(f"{len(self.descriptors)} descriptor lists for {len(self.class_names)} classes")
        if not self.class_names:
            raise ValueError("a vocabulary needs at least one class")

    def __len__(self) -> int:
        return len(self.class_names)

    def prompts(self) -> list[list[str]]:
        """Per class, the class name in every template."""
        return [[t.format(name) for t in self.templates] for name in self.class_names]

    @property
    def key(self) -> str:
        blob = json.dumps([self.class_names, self.templates, self.descriptors])
        return hashlib.sha1(blob.encode()).hexdigest()


TOKEN_MERGING_KEYS = ("r", "inflect", "proportional_attention")


def token_merging_hook(spec: Mapping | None, layers: int, what: str = "model.token_merging") -> TokenMerging | None:
    """The ``TokenMerging`` hook of a ``model.token_merging`` mapping, or None when it merges nothing.

    Keys: ``r`` (an int per block, or a per-block list), ``inflect`` (with an int ``r``: ToMe's
    (r, inflect) linear schedule, −1 = decreasing 2r → 0), ``proportional_attention`` (default
    true). Errors are ConfigErrors naming ``what``."""
    from vclip.errors import ConfigError

    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{what}: expected a mapping such as {{r: 8}}, got {spec!r}")
    unknown = [k for k in spec if k not in TOKEN_MERGING_KEYS]
    if unknown:
        raise ConfigError(f"{what}.{unknown[0]}: unknown key (known: {', '.join(TOKEN_MERGING_KEYS)})")
    if "r" not in spec:
        raise ConfigError(f"{what}: needs r (tokens merged per block), e.g. {{r: 8}}")
    prop = spec.get("proportional_attention", True)
    if not isinstance(prop, bool):
        raise ConfigError(f"{what}.proportional_attention: expected true or false, got {prop!r}")
    schedule = {"r": spec["r"], "inflect": spec["inflect"]} if "inflect" in spec else spec["r"]
    try:
        per_layer = parse_merge_schedule(schedule, layers)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None
    if not any(per_layer):
        return None
    return TokenMerging(per_layer, layers, proportional_attention=prop)


@dataclass
class MethodOutput:
    """What a method's ``forward`` returns.

    ``logits``: [B, K] class scores (what evaluation and prediction read).
    ``aux``: named auxiliary tensors (e.g. the class features a loss regularises, motion logits).
    ``losses``: named, unweighted loss terms, set when ``forward`` got ``targets``; the trainer
    multiplies each by its weight (``train.loss_weights.<name>``, default the method's
    ``loss_weights``) and sums them.
    """

    logits: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class NoOptions:
    pass


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy in fp32; ``targets`` are class ids [B] or soft targets [B, K] (Mixup/CutMix,
    already smoothed: ``label_smoothing`` then does not apply)."""
    if targets.dim() == 2:
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class VideoMethod(nn.Module):
    """Base class of video methods (see module docstring)."""

    Options: ClassVar[type] = NoOptions
    #: default prompt templates when the config does not set them
    default_templates: ClassVar[tuple[str, ...]] = ("{}",)
    #: parameter groups of the modules the method adds to CLIP: group name → parameter-name
    #: prefixes (first matching group wins; every other parameter is in group "clip", LR × 1).
    #: A group trains at ``lr × train.lr_mults[group]``, default ``default_lr_mults[group]``, else
    #: ``lr × train.lr_mult_new``.
    parameter_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    default_lr_mults: ClassVar[dict[str, float]] = {}
    #: substrings of parameter names trained without weight decay (biases and < 2-D tensors never
    #: get it either)
    no_weight_decay: ClassVar[tuple[str, ...]] = NO_DECAY_KEYWORDS
    #: attribute-name prefixes of the method's own modules that ``encode_vocabulary`` runs through
    #: (deep text prompts, mapping layers, text adapters): they count as text side for the cache
    text_side_modules: ClassVar[tuple[str, ...]] = ()
    #: the loss terms ``losses`` may return, with their default weights
    loss_weights: ClassVar[dict[str, float]] = {"ce": 1.0}
    #: the paper fixes τ together with the text tower: freezing the text tower freezes logit_scale
    temperature_follows_text: ClassVar[bool] = False
    #: ``vclip flops``: whether encoding the vocabulary counts in a view's cost (the papers count
    #: one class sentence); False (ALT: its corpus and class embeddings are computed once,
    #: offline) counts the whole video path against class features encoded beforehand
    flops_count_text: ClassVar[bool] = True
    #: the method runs token merging by its own options (ALT): ``model.token_merging`` is refused
    merges_tokens_itself: ClassVar[bool] = False

    def __init__(self, clip: CLIP, *, num_frames: int, options: Any = None):
        super().__init__()
        self.clip = clip
        self.num_frames = num_frames
        self.options = options if options is not None else self.Options()
        self._class_cache: tuple[tuple, Any] | None = None
        #: ToMe in the image tower (``set_token_merging``; ``model.token_merging``), None = off
        self.token_merging: TokenMerging | None = None

    # ------------------------------------------------------------------ to implement
    def encode_video(self, video: torch.Tensor):
        raise NotImplementedError

    def encode_vocabulary(self, vocab: Vocabulary):
        raise NotImplementedError

    def logits(self, video_features, class_features) -> torch.Tensor:
        raise NotImplementedError

    def outputs(self, video_features, class_features) -> MethodOutput:
        """Logits and named auxiliary tensors; override to expose more than ``logits``."""
        return MethodOutput(self.logits(video_features, class_features))

    def losses(self, output: MethodOutput, targets: torch.Tensor, label_smoothing: float = 0.0
               ) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms (keys of ``loss_weights``): cross-entropy over the classes."""
        return {"ce": cross_entropy(output.logits, targets, label_smoothing)}

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse_options(cls, options: dict | None):
        """The method's typed options from a config mapping; errors name ``model.options.<key>``."""
        from vclip.config import from_dict

        if dataclasses.is_dataclass(options):
            return options
        return from_dict(cls.Options, dict(options or {}), "model.options")

    @classmethod
    def from_pretrained(cls, source: str, cfg) -> "VideoMethod":
        """The method for a run config whose ``model.pretrained`` is ``source``: CLIP weights (name,
        file, directory) loaded through ``load_clip``, the method's own modules freshly initialised.
        Methods with checkpoints of their own (X-CLIP) override this."""
        from vclip.backbone.weights import load_clip

        clip = load_clip(source, trust_checkpoint=cfg.model.trust_checkpoint, image_size=cfg.data.image_size)
        return cls(clip, num_frames=cfg.data.num_frames, options=cls.parse_options(cfg.model.options))

    @classmethod
    def vocabulary_descriptors(cls, options, class_names: Sequence[str]) -> tuple[tuple[str, ...], ...] | None:
        """Per-class descriptor sentences the vocabulary carries (OST reads them from the files its
        options name); None for methods that score class names only."""
        return None

    @classmethod
    def example_vocabulary(cls, num_classes: int, options=None) -> Vocabulary:
        """A stand-in vocabulary of ``num_classes`` classes with whatever the method needs
        (descriptors ...), for FLOP counting and tests."""
        names = tuple(f"class {i}" for i in range(num_classes))
        return Vocabulary(names, cls.default_templates)

    @classmethod
    def sampled_frames(cls, options, num_frames: int) -> int:
        """Frames the sampler delivers per view for T = ``num_frames`` under ``options`` (the
        method's parsed options or a config mapping), known before the model is built: the data
        path (``vclip.engine.data``, ``vclip predict``) asks this. Override it, not
        :meth:`input_frames`, when a method samples more than T frames."""
        return num_frames

    def input_frames(self, num_frames: int | None = None) -> int:
        """Frames the sampler delivers per view for ``num_frames`` (default: the method's T). One
        video tensor carries every sampling a method needs (MoTED: α·T dense frames, of which every
        α-th feeds CLIP). Defaults to :meth:`sampled_frames` with this model's options."""
        return type(self).sampled_frames(self.options, num_frames or self.num_frames)

    # ------------------------------------------------------------------ freezing
    def freeze(self, *, text: bool | None = None, vision: bool | None = None,
               logit_scale: bool | None = None) -> None:
        """Freeze (True) or unfreeze (False) CLIP's towers and τ; None leaves a part as it is.
        With ``temperature_follows_text`` (the paper fixes τ with the text side), freezing the text
        tower freezes ``logit_scale`` too unless ``logit_scale`` says otherwise."""
        if text is not None:
            self.clip.text.requires_grad_(not text)
            if logit_scale is None and self.temperature_follows_text:
                logit_scale = text
        if vision is not None:
            self.clip.visual.requires_grad_(not vision)
        if logit_scale is not None:
            self.clip.logit_scale.requires_grad_(not logit_scale)
        self.clear_cache()

    def parameter_group(self, name: str) -> str:
        """The group of parameter ``name`` (``parameter_groups`` order; "clip" otherwise)."""
        for group, prefixes in self.parameter_groups.items():
            if name.startswith(tuple(prefixes)):
                return group
        return "clip"

    def decays(self, name: str, param: torch.Tensor) -> bool:
        """Whether parameter ``name`` (without DDP/compile prefixes) gets weight decay; the optimizer
        asks this. Default: :func:`default_decays` with the class's ``no_weight_decay`` names."""
        return default_decays(name, param, self.no_weight_decay)

    def lr_mults(self, lr_mult_new: float = 10.0, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """LR multiplier of every group: ``overrides`` (``train.lr_mults``), else the class's
        ``default_lr_mults``, else ``lr_mult_new`` for added modules and 1 for "clip"."""
        mults = {"clip": 1.0, **{g: lr_mult_new for g in self.parameter_groups}, **self.default_lr_mults}
        return {**mults, **dict(overrides or {})}

    # ------------------------------------------------------------------ class features
    def text_parameters(self) -> list[nn.Parameter]:
        """Every parameter that shapes the class features: ``clip.text`` and ``text_side_modules``."""
        params = list(self.clip.text.parameters())
        if self.text_side_modules:
            params += [p for n, p in self.named_parameters() if n.startswith(self.text_side_modules)]
        return params

    def text_trainable(self) -> bool:
        return any(p.requires_grad for p in self.text_parameters())

    def _text_version(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype, str(p.device)) for p in self.text_parameters())

    def class_features(self, vocab: Vocabulary):
        """Encoded vocabulary: recomputed with gradients when the text side trains, otherwise
        computed once under ``no_grad`` and reused until the vocabulary or the text weights change."""
        if self.training and self.text_trainable():
            return self.encode_vocabulary(vocab)
        key = (vocab.key, self._text_version(), self.training)
        if self._class_cache is not None and self._class_cache[0] == key:
            return self._class_cache[1]
        with torch.no_grad():
            feats = self.encode_vocabulary(vocab)
        self._class_cache = (key, feats)
        return feats

    def clear_cache(self) -> None:
        self._class_cache = None

    # ------------------------------------------------------------------ forward
    def forward(self, video: torch.Tensor, vocab: Vocabulary | Any, targets: torch.Tensor | None = None,
                label_smoothing: float = 0.0) -> MethodOutput:
        """``video`` [B, T', 3, H, W]; ``vocab`` a :class:`Vocabulary` (encoded through the cache) or
        class features already encoded; ``targets`` class ids [B] or soft targets [B, K] add the
        loss terms."""
        class_features = self.class_features(vocab) if isinstance(vocab, Vocabulary) else vocab
        out = self.outputs(self.encode_video(video), class_features)
        if targets is not None:
            out.losses = self.losses(out, targets, label_smoothing)
        return out

    # ------------------------------------------------------------------ token merging
    def set_token_merging(self, spec: Mapping | None) -> None:
        """ToMe token merging in the image tower of every frame ``encode_frames`` encodes (any
        method): ``spec`` as ``model.token_merging`` (``{"r": 8}``; see :func:`token_merging_hook`);
        None or empty turns it off. Merging sits between attention and MLP in every block, with
        proportional attention; the class token and tokens a hook appends for attention only
        (X-CLIP's message tokens) never merge."""
        hook = token_merging_hook(spec, self.clip.config.vision.layers)
        if hook is not None and self.merges_tokens_itself:
            from vclip.errors import ConfigError

            raise ConfigError(f"model.token_merging: {type(self).__name__} merges tokens by its own options "
                              "(model.options.r)")
        self.token_merging = hook

    # ------------------------------------------------------------------ helpers for methods
    def encode_frames(self, video: torch.Tensor, **tower_kwargs):
        """Run the image tower on every frame: [B, T, 3, H, W] → TowerOutput over B·T frames.
        ``tower_kwargs`` (``hooks``, ``state``, ``return_tokens``) go to ``clip.visual``; the
        method's token merging (``set_token_merging``) is appended to the hooks."""
        if video.dim() != 5:
            raise ValueError(f"expected video [B, T, 3, H, W], got shape {tuple(video.shape)}")
        if self.token_merging is not None:
            tower_kwargs["hooks"] = [*tower_kwargs.get("hooks", ()), self.token_merging]
        return self.clip.visual(video.flatten(0, 1), **tower_kwargs)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024, **tower_kwargs) -> torch.Tensor:
        """Text-tower embeddings of sentences, [N, embed_dim], tokenized with CLIP's BPE.
        ``tower_kwargs`` (``hooks`` — e.g. deep text prompts) go to ``clip.text`` for every batch."""
        tok = get_tokenizer()
        device = self.clip.text.positional_embedding.device
        ctx = self.clip.config.text.context_length
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = tok(list(texts[i : i + batch_size]), context_length=ctx).to(device)
            out.append(self.clip.text(tokens, **tower_kwargs).embeds)
        return torch.cat(out)

    def encode_prompt_ensemble(self, vocab: Vocabulary, **tower_kwargs) -> torch.Tensor:
        """CLIP's prompt ensembling: per class, the normalised mean of the normalised embeddings of
        the class name in every template. [K, embed_dim], normalised."""
        prompts = vocab.prompts()
        flat = [p for per_class in prompts for p in per_class]
        emb = F.normalize(self.encode_texts(flat, **tower_kwargs), dim=-1)
        emb = emb.view(len(prompts), len(vocab.templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)
