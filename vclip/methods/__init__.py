"""Methods by name, and building one from a run config."""

from __future__ import annotations

import logging

from vclip.methods.base import VideoMethod, Vocabulary
from vclip.methods.clip import CLIPMean
from vclip.methods.ost import OST
from vclip.methods.vificlip import ViFiCLIP
from vclip.methods.xclip import XCLIP

log = logging.getLogger(__name__)

METHODS: dict[str, type[VideoMethod]] = {
    "clip": CLIPMean,
    "vificlip": ViFiCLIP,
    "xclip": XCLIP,
    "ost": OST,
}


def build_method(cfg) -> VideoMethod:
    """The method of ``cfg.model`` on a CLIP loaded from ``cfg.model.pretrained`` (or randomly
    initialised with a warning), sized for ``cfg.data`` (frames, image size)."""
    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import load_clip

    m = cfg.model
    cls = METHODS[m.method]
    options = cls.parse_options(m.options)
    size = cfg.data.image_size
    if m.pretrained and hasattr(cls, "from_pretrained"):
        # the method reads its own checkpoints (e.g. a full X-CLIP), else a CLIP through load_clip
        method = cls.from_pretrained(m.pretrained, cfg)
        return _apply_model_flags(method, m)
    if m.pretrained:
        clip = load_clip(m.pretrained, trust_checkpoint=m.trust_checkpoint, image_size=size)
    else:
        arch = get_config(m.arch)
        arch.vision.image_size = size
        arch.validate()
        clip = CLIP(arch)
        from vclip.backbone.hub import PRETRAINED

        name = f"openai/{m.arch}" if f"openai/{m.arch}" in PRETRAINED else "openai/ViT-B-16"
        log.warning("model.pretrained is not set: CLIP %s is randomly initialised; for real results set "
                    "model.pretrained=%s (downloaded once, see docs/weights.md)", m.arch, name)
    method = cls(clip, num_frames=cfg.data.num_frames, options=options)
    return _apply_model_flags(method, m)


def _apply_model_flags(method: VideoMethod, m) -> VideoMethod:
    if m.freeze_text:
        method.clip.text.requires_grad_(False)
    if m.freeze_vision:
        method.clip.visual.requires_grad_(False)
    if m.grad_checkpointing:
        method.clip.set_grad_checkpointing(True)
    return method


def make_vocabulary(cfg, class_names, descriptors=None) -> Vocabulary:
    from vclip.text.templates import resolve_templates

    cls = METHODS[cfg.model.method]
    templates = cfg.model.templates or cls.default_templates
    if descriptors is None and hasattr(cls, "vocabulary_descriptors"):
        # methods that score descriptors (OST) read them from files named in model.options
        descriptors = cls.vocabulary_descriptors(cfg.model.options, class_names)
    return Vocabulary(tuple(class_names), resolve_templates(templates), descriptors)


__all__ = ["METHODS", "VideoMethod", "Vocabulary", "build_method", "make_vocabulary"]
