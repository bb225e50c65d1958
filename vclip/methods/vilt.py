"""ViLT-CLIP (Wang, Liu, Jiao et al., AAAI 2024): deep multimodal prompts in both frozen CLIP towers,
coupled by a bidirectional linear mapping, plus the scenario-guided loss. No official code exists;
this follows the paper's Eqs. 4–14 (choices where it is silent: docs/methods/vilt.md).

Prompts (b tokens per block, prompt depth Dp, switch layer K = N/2 with N the tower depth; block
indices 0-based, i = the block the prompts enter)::

    blocks i < K        (Eq. 10):  text   U_i = P_i  (learned, [b, 512])     vision V_i = F(P_i)
    blocks K ≤ i < Dp   (Eq. 11):  vision V_i = P̃_i (learned, [b, 768])     text   U_i = F̃(P̃_i)

    F  = one shared Linear(d_text → d_vision),  F̃ = one shared Linear(d_vision → d_text)

Both lists enter the towers through the backbone's ``DeepPrompts`` hook: vision prompts are appended
after the patch tokens (after the positional embedding, before ``ln_pre``), text prompts right after
the start token (positions 1…b; the end-of-text index moves by b); before block i (1 ≤ i < Dp) they
are replaced by the next ones, from block Dp on they are carried like any other token.

Video and class features, logits and loss::

    z_t = f_img(x_t; V)                 per frame                    [B·T, E]
    v   = mean_t z_t                    TemporalPooling (Eq. 4)      [B, E]
    c_i = f_txt("{name_i}." ; U)        prompts after SOS            [C, E]
    logits = cos(v, c) / τ,  τ = 0.07 (fixed)                        (Eq. 13)
    L   = CE(logits, y) + α · L_cos,   L_cos = 1 − (1/C) Σ_i cos(c_i, c_clip,i)   (Eqs. 12, 14)

with ``c_clip`` the frozen CLIP text features of "a video of a person doing {name}." (computed once
per vocabulary, cached). α is the weight of the loss term ``scenario`` (``train.loss_weights.scenario``,
default 8.0). The loss terms are named ``ce`` and ``scenario``.

No temporal modelling: identical prompts in every frame and a mean over frames make ``v`` exactly
invariant to the order of the frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as Fn
from torch import nn

from vclip.backbone.hooks import DeepPrompts, TowerHook
from vclip.errors import ConfigError
from vclip.methods.base import MethodOutput, VideoMethod, Vocabulary
from vclip.text.templates import PRESETS


@dataclass
class ViLTOptions:
    #: b, prompt tokens per block (paper: 10 few-shot / fully supervised, 16 base-to-novel)
    prompt_length: int = 10
    #: Dp, blocks that receive fresh prompts; null = every block (12 on ViT-B: the few-shot
    #: setting); base-to-novel: 10. 0 = no prompts (plain CLIP-mean with the "{}." template)
    prompt_depth: Optional[int] = None
    #: K, blocks 0…K-1 learn text prompts, blocks K…Dp-1 vision prompts; null = N // 2 with N
    #: the depth of the shallower tower (6 on ViT-B)
    switch_layer: Optional[int] = None
    #: "bidirectional": the paper's coupling (Eqs. 10–11); "none": independent text and vision
    #: prompts in all Dp blocks, no mapping (IVLP, the paper's "Independent V-L prompting" row)
    coupling: Literal["bidirectional", "none"] = "bidirectional"
    #: "shared": one F and one F̃ for all blocks of their half ("a single linear network F");
    #: "per_layer": one Linear per block (MaPLe's; switch_layer = prompt_depth gives MaPLe's
    #: text → vision coupling)
    mapping: Literal["shared", "per_layer"] = "shared"
    #: τ of the logits (Eq. 13; the paper: 0.07); null: CLIP's learned scale exp(logit_scale)
    temperature: Optional[float] = 0.07
    #: the scenario reference (Eq. 12): frozen CLIP text features of this template per class
    reference_template: str = PRESETS["vilt"][0]
    #: standard deviation of the prompts' normal initialisation (MaPLe/IVLP, > 4 context tokens)
    prompt_init_std: float = 0.02
    #: freeze both towers and τ (the paper); false trains CLIP as well
    freeze_clip: bool = True
    #: gradient checkpointing in the text tower only (it re-encodes every class at every step)
    text_grad_checkpointing: bool = False


class ViLTCLIP(VideoMethod):
    Options = ViLTOptions
    #: the learnable branch's text: "[SOS][P × b] name . [EOT]" (CoOp layout; the paper's c_i)
    default_templates = ("{}.",)
    loss_weights = {"ce": 1.0, "scenario": 8.0}
    #: every prompt and mapping parameter, trained at train.lr (× train.lr_mults.prompts)
    parameter_groups = {"prompts": ("P", "P_tilde", "F.", "F_tilde.")}
    default_lr_mults = {"prompts": 1.0}
    #: the modules the class features run through: P, P̃ (through F̃) and F̃ — not F
    text_side_modules = ("P", "P_tilde", "F_tilde.")
    temperature_follows_text = True

    def __init__(self, clip, *, num_frames: int, options: ViLTOptions | None = None):
        super().__init__(clip, num_frames=num_frames, options=options)
        o = self.options
        d_text, d_vision = clip.config.text.width, clip.config.vision.width
        layers = min(clip.config.text.layers, clip.config.vision.layers)
        depth = layers if o.prompt_depth is None else o.prompt_depth
        if not 0 <= depth <= layers:
            raise ConfigError(f"model.options.prompt_depth: {depth} is not in [0, {layers}] (the towers have "
                              f"{clip.config.vision.layers} vision and {clip.config.text.layers} text blocks)")
        switch = (layers // 2 if o.switch_layer is None else o.switch_layer) if o.coupling == "bidirectional" else 0
        switch = min(switch, depth) if o.switch_layer is None else switch
        if not 0 <= switch <= depth:
            raise ConfigError(f"model.options.switch_layer: {switch} is not in [0, prompt_depth = {depth}]")
        self.prompt_length, self.prompt_depth, self.switch_layer = o.prompt_length, depth, switch
        b, std = o.prompt_length, o.prompt_init_std
        n_text = depth if o.coupling == "none" else switch          # learned text prompt blocks
        n_vision = depth if o.coupling == "none" else depth - switch  # learned vision prompt blocks
        #: P: learned text prompts [K, b, d_text] (IVLP: [Dp, b, d_text])
        self.P = nn.Parameter(std * torch.randn(n_text, b, d_text)) if n_text else None
        #: P̃: learned vision prompts [Dp − K, b, d_vision] (IVLP: [Dp, b, d_vision])
        self.P_tilde = nn.Parameter(std * torch.randn(n_vision, b, d_vision)) if n_vision else None
        coupled = o.coupling == "bidirectional"
        #: F: text → vision prompts of blocks < K;  F̃: vision → text prompts of blocks K…Dp-1
        self.F = self._mapping(d_text, d_vision, n_text) if coupled and n_text else None
        self.F_tilde = self._mapping(d_vision, d_text, n_vision) if coupled and n_vision else None
        self._reference_cache: tuple[tuple, torch.Tensor] | None = None
        if o.freeze_clip:
            self.freeze(text=True, vision=True, logit_scale=True)
        if o.text_grad_checkpointing:
            clip.set_grad_checkpointing(True, towers=("text",))

    def _mapping(self, d_in: int, d_out: int, blocks: int) -> nn.Module:
        if self.options.mapping == "shared":
            return nn.Linear(d_in, d_out)
        return nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(blocks))

    @staticmethod
    def _map(mapping: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
        """The mapping on prompts [n, b, d]: one shared Linear, or block j's own."""
        if isinstance(mapping, nn.ModuleList):
            return torch.stack([f(p) for f, p in zip(mapping, prompts)])
        return mapping(prompts)

    # ------------------------------------------------------------------ options
    @classmethod
    def parse_options(cls, options):
        o = super().parse_options(options)
        if o.prompt_length < 1:
            raise ConfigError(f"model.options.prompt_length: must be >= 1, got {o.prompt_length}")
        for key in ("prompt_depth", "switch_layer"):
            v = getattr(o, key)
            if v is not None and v < 0:
                raise ConfigError(f"model.options.{key}: must be >= 0 (or null), got {v}")
        if o.temperature is not None and not o.temperature > 0:
            raise ConfigError(f"model.options.temperature: must be > 0 (or null for CLIP's scale), got {o.temperature}")
        if o.reference_template.count("{}") != 1:
            raise ConfigError(f"model.options.reference_template: {o.reference_template!r} must contain one {{}} "
                              "(the class name)")
        if not o.prompt_init_std >= 0:
            raise ConfigError(f"model.options.prompt_init_std: must be >= 0, got {o.prompt_init_std}")
        return o

    # ------------------------------------------------------------------ prompts
    def prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The prompts entering every block, recomputed from P, P̃, F, F̃: ``(vision, text)``, each a
        list of Dp tensors ([b, d_vision] and [b, d_text]); index i = the block entered."""
        return self.vision_prompts(), self.text_prompts()

    def vision_prompts(self) -> list[torch.Tensor]:
        """V_i: F(P_i) for blocks i < K (Eq. 10), P̃_i for K ≤ i < Dp (IVLP: P̃_i in every block)."""
        out: list[torch.Tensor] = []
        if self.options.coupling == "bidirectional" and self.P is not None:
            out += list(self._map(self.F, self.P).unbind(0))
        if self.P_tilde is not None:
            out += list(self.P_tilde.unbind(0))
        return out

    def text_prompts(self) -> list[torch.Tensor]:
        """U_i: P_i for blocks i < K, F̃(P̃_i) for K ≤ i < Dp (Eq. 11; IVLP: P_i in every block)."""
        out: list[torch.Tensor] = []
        if self.P is not None:
            out += list(self.P.unbind(0))
        if self.options.coupling == "bidirectional" and self.P_tilde is not None:
            out += list(self._map(self.F_tilde, self.P_tilde).unbind(0))
        return out

    def vision_hooks(self) -> list[TowerHook]:
        """The hooks of the image tower: ``DeepPrompts`` with V (none when Dp = 0)."""
        vision = self.vision_prompts()
        return [DeepPrompts(vision)] if vision else []

    def text_hooks(self) -> list[TowerHook]:
        """The hooks of the text tower: ``DeepPrompts`` with U (none when Dp = 0)."""
        text = self.text_prompts()
        return [DeepPrompts(text)] if text else []

    # ------------------------------------------------------------------ the method interface
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """v = mean_t f_img(x_t; V) [B, E] (not normalised)."""
        b, t = video.shape[:2]
        frames = self.encode_frames(video, hooks=self.vision_hooks()).embeds
        return frames.view(b, t, -1).mean(dim=1)

    def encode_vocabulary(self, vocab: Vocabulary) -> dict[str, torch.Tensor]:
        """``classes``: the prompted class features c [C, E] (normalised; prompt-ensembled over the
        vocabulary's templates, default "{}."). In training mode also ``reference``: the frozen CLIP
        features c_clip of ``reference_template`` (cached), which only the scenario loss reads."""
        self._check_lengths(vocab)
        out = {"classes": self.encode_prompt_ensemble(vocab, hooks=self.text_hooks())}
        if self.training:
            out["reference"] = self.reference_features(vocab.class_names)
        return out

    def _check_lengths(self, vocab: Vocabulary) -> None:
        """One clear error when a class text leaves fewer than b free context positions (once per
        vocabulary and prompt length)."""
        if not self.prompt_depth or getattr(self, "_checked", None) == (vocab.key, self.prompt_length):
            return
        from vclip.backbone.tokenizer import get_tokenizer

        tok, ctx, b = get_tokenizer(), self.clip.config.text.context_length, self.prompt_length
        for per_class in vocab.prompts():
            for text in per_class:
                n = len(tok.encode(text)) + 2
                if n + b > ctx:
                    raise ConfigError(f"ViLT-CLIP: the class text {text!r} has {n} tokens; with "
                                      f"model.options.prompt_length = {b} prompt tokens it exceeds the text "
                                      f"context of {ctx}")
        self._checked = (vocab.key, self.prompt_length)

    def reference_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """c_clip: plain frozen CLIP text features of ``reference_template`` per class, normalised
        [C, E]; computed once under ``no_grad`` and reused while the names and ``clip.text`` stay
        the same (with the text tower frozen: once per vocabulary)."""
        tmpl = self.options.reference_template
        key = (tuple(class_names), tmpl, tuple((p.data_ptr(), p._version, p.dtype, str(p.device))
                                                for p in self.clip.text.parameters()))
        if self._reference_cache is not None and self._reference_cache[0] == key:
            return self._reference_cache[1]
        with torch.no_grad():
            ref = self.encode_prompt_ensemble(Vocabulary(tuple(class_names), (tmpl,)))
        self._reference_cache = (key, ref)
        return ref

    def clear_cache(self) -> None:
        super().clear_cache()
        self._reference_cache = None

    def logit_scale(self) -> torch.Tensor | float:
        """1/τ: 1/0.07 by default (fixed), or CLIP's exp(logit_scale) with ``temperature: null``."""
        t = self.options.temperature
        return self.clip.logit_scale.exp() if t is None else 1.0 / t

    def logits(self, video_features: torch.Tensor, class_features) -> torch.Tensor:
        c = class_features["classes"] if isinstance(class_features, dict) else class_features
        v = Fn.normalize(video_features, dim=-1)
        return self.logit_scale() * v @ c.to(v.dtype).t()

    def outputs(self, video_features, class_features) -> MethodOutput:
        """Logits; in ``aux`` the class features (``class_features``) and, in training mode, the
        frozen reference features (``reference_features``) the scenario loss compares them with."""
        aux = {"class_features": class_features["classes"]}
        if "reference" in class_features:
            aux["reference_features"] = class_features["reference"]
        return MethodOutput(self.logits(video_features, class_features), aux=aux)

    def losses(self, output: MethodOutput, targets: torch.Tensor, label_smoothing: float = 0.0
               ) -> dict[str, torch.Tensor]:
        """``ce`` (Eq. 13) and ``scenario`` = L_cos (Eq. 12), unweighted; the trainer multiplies
        ``scenario`` by α (``train.loss_weights.scenario``)."""
        terms = super().losses(output, targets, label_smoothing)
        ref = output.aux.get("reference_features")
        if ref is None:
            raise ValueError("ViLT-CLIP's scenario loss needs the reference class features, which the "
                             "method attaches in training mode (call .train() before a forward with targets)")
        terms["scenario"] = scenario_loss(output.aux["class_features"], ref)
        return terms


def scenario_loss(class_features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """L_cos = 1 − (1/C) Σ_i cos(c_i, c_clip,i) (Eq. 12 with the sign the text intends: minimising it
    pulls the learned class features towards the hand-written template's; KgCoOp's form), in fp32."""
    cos = Fn.cosine_similarity(class_features.float(), reference.float(), dim=-1)
    return 1.0 - cos.mean()


__all__ = ["ViLTCLIP", "ViLTOptions", "scenario_loss"]
