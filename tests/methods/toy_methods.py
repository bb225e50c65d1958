"""Small methods that exercise the method interface the way ViLT-CLIP, MoTED and ALT will: deep text
prompts outside ``clip.text`` (a text-side module), an auxiliary loss on intermediate tensors, and
three parameter groups. Importable by spawned processes (DDP tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vclip.backbone import CLIP, get_config
from vclip.backbone.hooks import DeepPrompts
from vclip.methods.base import MethodOutput, Vocabulary
from vclip.methods.clip import CLIPMean

NAMES = ("moving left", "moving right", "rotating", "growing")


class PromptedMean(CLIPMean):
    """CLIP-mean whose class names are encoded with learnable text prompts (``text_prompts``, a
    text-side module outside ``clip.text``), plus a temporal head and a "decoder" (three LR levels),
    and a scenario-style auxiliary loss ``prior = 1 − mean cos(c_k, c_k^plain)`` on the class features."""

    text_side_modules = ("text_prompts",)
    parameter_groups = {"decoder": ("decoder.",), "new": ("text_prompts", "head.")}
    default_lr_mults = {"decoder": 100.0}
    loss_weights = {"ce": 1.0, "prior": 0.5}
    no_weight_decay = CLIPMean.no_weight_decay + ("text_prompts",)

    def __init__(self, clip: CLIP, *, num_frames: int, options=None, n_ctx: int = 2):
        super().__init__(clip, num_frames=num_frames, options=options)
        width, embed = clip.config.text.width, clip.config.embed_dim
        self.text_prompts = nn.Parameter(0.02 * torch.randn(n_ctx, width))
        self.head = nn.Linear(embed, embed)
        self.decoder = nn.Linear(embed, embed)
        nn.init.eye_(self.head.weight), nn.init.zeros_(self.head.bias)
        nn.init.eye_(self.decoder.weight), nn.init.zeros_(self.decoder.bias)

    def encode_video(self, video):
        return self.decoder(self.head(super().encode_video(video)))

    def encode_vocabulary(self, vocab: Vocabulary):
        prompted = self.encode_prompt_ensemble(vocab, hooks=[DeepPrompts([self.text_prompts])])
        with torch.no_grad():
            plain = self.encode_prompt_ensemble(vocab)
        return {"prompted": prompted, "plain": plain}

    def outputs(self, video_features, class_features) -> MethodOutput:
        logits = self.logits(video_features, class_features["prompted"])
        return MethodOutput(logits, aux={"class_features": class_features["prompted"], "plain": class_features["plain"]})

    def losses(self, output, targets, label_smoothing=0.0):
        terms = super().losses(output, targets, label_smoothing)
        cos = F.cosine_similarity(output.aux["class_features"], output.aux["plain"], dim=-1)
        terms["prior"] = 1.0 - cos.mean()
        return terms


def frozen_prompted(seed: int = 0) -> PromptedMean:
    """A PromptedMean on the tiny CLIP, every CLIP weight frozen (τ too)."""
    torch.manual_seed(seed)
    m = PromptedMean(CLIP(get_config("tiny")), num_frames=4)
    m.freeze(text=True, vision=True, logit_scale=True)
    return m


def batch(seed: int = 1, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 3, 32, 32, generator=g), torch.arange(b) % len(NAMES)
