"""The interface every method implements.

A method wraps one ``CLIP`` (``self.clip``) and adds what its paper adds. It implements three
things::

    encode_video(video [B, T, 3, H, W])   -> video features (tensor or dict)
    encode_vocabulary(vocab)              -> class features (tensor or dict), differentiable
    logits(video_features, class_features) -> [B, K]

and inherits the rest: the cached ``class_features`` (evaluation and frozen-text training reuse the
encoded vocabulary; the cache is keyed by the vocabulary's content *and* the text weights'
identity/version counters, so an optimizer step or a weight load invalidates it), ``forward``,
``loss`` (a dict of named terms, ``"loss"`` being the total), and parameter-group helpers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vclip.backbone.model import CLIP
from vclip.backbone.tokenizer import get_tokenizer


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


@dataclass
class NoOptions:
    pass


class VideoMethod(nn.Module):
    """Base class of video methods (see module docstring)."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type] = NoOptions
    #: parameter-name prefixes of modules the method adds to CLIP (trained at ``lr × lr_mult_new``)
    new_module_prefixes: ClassVar[tuple[str, ...]] = ()
    #: whether the method has trainable modules besides CLIP's
    adds_modules: ClassVar[bool] = False
    #: default prompt templates when the config does not set them
    default_templates: ClassVar[tuple[str, ...]] = ("{}",)

    def __init__(self, clip: CLIP, *, num_frames: int, options: Any = None):
        super().__init__()
        self.clip = clip
        self.num_frames = num_frames
        self.options = options if options is not None else self.Options()
        self._class_cache: tuple[tuple, Any] | None = None

    # ------------------------------------------------------------------ to implement
    def encode_video(self, video: torch.Tensor):
        raise NotImplementedError

    def encode_vocabulary(self, vocab: Vocabulary):
        raise NotImplementedError

    def logits(self, video_features, class_features) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ provided
    @classmethod
    def parse_options(cls, options: dict | None):
        """The method's typed options from a config mapping; errors name ``model.options.<key>``."""
        from vclip.config import from_dict

        if dataclasses.is_dataclass(options):
            return options
        return from_dict(cls.Options, dict(options or {}), "model.options")

    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text.parameters())

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

    def forward(self, video: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
        return self.logits(self.encode_video(video), self.class_features(vocab))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
        """Cross-entropy over the classes; ``targets`` are class ids [B] or soft targets [B, K]
        (Mixup/CutMix, already smoothed)."""
        if targets.dim() == 2:
            ce = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            ce = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return {"loss": ce, "ce": ce.detach()}

    def is_new_parameter(self, name: str) -> bool:
        return name.startswith(self.new_module_prefixes)

    # ------------------------------------------------------------------ helpers for methods
    def encode_frames(self, video: torch.Tensor, **tower_kwargs):
        """Run the image tower on every frame: [B, T, 3, H, W] → TowerOutput over B·T frames."""
        if video.dim() != 5:
            raise ValueError(f"expected video [B, T, 3, H, W], got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        return self.clip.visual(video.flatten(0, 1), **tower_kwargs)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """Text-tower embeddings of sentences, [N, embed_dim], tokenized with CLIP's BPE."""
        tok = get_tokenizer()
        device = self.clip.text.positional_embedding.device
        ctx = self.clip.config.text.context_length
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = tok(list(texts[i : i + batch_size]), context_length=ctx).to(device)
            out.append(self.clip.text(tokens).embeds)
        return torch.cat(out)

    def encode_prompt_ensemble(self, vocab: Vocabulary) -> torch.Tensor:
        """CLIP's prompt ensembling: per class, the normalised mean of the normalised embeddings of
        the class name in every template. [K, embed_dim], normalised."""
        prompts = vocab.prompts()
        flat = [p for per_class in prompts for p in per_class]
        emb = F.normalize(self.encode_texts(flat), dim=-1)
        emb = emb.view(len(prompts), len(vocab.templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)

