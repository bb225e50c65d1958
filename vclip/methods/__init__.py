"""Methods by name, checking a run config against them, and building one from it.

Adding a method is one file (``vclip/methods/<name>.py``, a ``VideoMethod`` subclass) plus its line
in ``METHODS``; everything a method can customise is declared on the base class
(``docs/architecture.md``, "Adding a method").
"""

from __future__ import annotations

import difflib
import logging
from typing import Sequence

from vclip.errors import ConfigError
from vclip.methods.alt import ALT
from vclip.methods.base import MethodOutput, VideoMethod, Vocabulary, token_merging_hook
from vclip.methods.clip import CLIPMean
from vclip.methods.moted import MoTED
from vclip.methods.ost import OST
from vclip.methods.vificlip import ViFiCLIP
from vclip.methods.vilt import ViLTCLIP
from vclip.methods.xclip import XCLIP

log = logging.getLogger(__name__)

METHODS: dict[str, type[VideoMethod]] = {
    "clip": CLIPMean,
    "vificlip": ViFiCLIP,
    "xclip": XCLIP,
    "ost": OST,
    "vilt": ViLTCLIP,
    "moted": MoTED,
    "alt": ALT,
}


def method_class(name: str) -> type[VideoMethod]:
    """The class registered as ``name``; an unknown name is a ConfigError naming ``model.method``."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.method: unknown method {name!r}{hint} (known: {', '.join(METHODS)})")
    return METHODS[name]


def check_config(cfg) -> type[VideoMethod]:
    """The checks of a run config that depend on its method (the schema itself is checked by
    ``vclip.config.load_config``): the method exists, its options parse, and the loss weights and
    LR multipliers name terms and groups the method has. Returns the method's class."""
    m, t = cfg.model, cfg.train
    cls = method_class(m.method)
    cls.parse_options(m.options)  # raises ConfigError naming model.options.<key>
    if m.token_merging:
        if cls.merges_tokens_itself:
            raise ConfigError(f"model.token_merging: method {m.method!r} merges tokens by its own options "
                              "(model.options.r); remove model.token_merging")
        token_merging_hook(m.token_merging, 12)  # raises ConfigError naming model.token_merging
    if m.freeze_text and m.freeze_vision and not cls.parameter_groups:
        raise ConfigError(f"model.freeze_text and model.freeze_vision are both true: method {m.method!r} adds no "
                          "modules of its own, so nothing would be trained")
    for key, known, what in (("loss_weights", cls.loss_weights, "loss terms"),
                             ("lr_mults", ["clip", *cls.parameter_groups], "parameter groups")):
        for name, value in getattr(t, key).items():
            if name not in known:
                close = difflib.get_close_matches(str(name), list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"train.{key}.{name}: method {m.method!r} has no such {what[:-1]}{hint} "
                                  f"(its {what}: {', '.join(known) or 'none'})")
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"train.{key}.{name}: expected a number >= 0, got {value!r}")
    return cls


def load_run_config(files: Sequence[str] = (), overrides: Sequence[str] = ()):
    """``vclip.config.load_config`` plus :func:`check_config`: what the commands use."""
    from vclip.config import load_config

    cfg = load_config(files, overrides)
    check_config(cfg)
    return cfg


def build_method(cfg) -> VideoMethod:
    """The method of ``cfg.model``: from ``model.pretrained`` (the class's ``from_pretrained``: CLIP
    weights, or the method's own checkpoint format) or a randomly initialised CLIP (with a
    warning), sized for ``cfg.data``; then the freezing flags, and ``model.init_checkpoint`` (every
    weight of a vclip training checkpoint that the method has)."""
    from vclip.backbone import CLIP, get_config

    cls = check_config(cfg)
    m = cfg.model
    if m.pretrained:
        method = cls.from_pretrained(m.pretrained, cfg)
    else:
        arch = get_config(m.arch)
        arch.vision.image_size = cfg.data.image_size
        arch.validate()
        if not m.init_checkpoint:
            from vclip.backbone.hub import PRETRAINED

            name = f"openai/{m.arch}" if f"openai/{m.arch}" in PRETRAINED else "openai/ViT-B-16"
            log.warning("model.pretrained is not set: CLIP %s is randomly initialised; for real results set "
                        "model.pretrained=%s (downloaded once, see docs/weights.md)", m.arch, name)
        method = cls(CLIP(arch), num_frames=cfg.data.num_frames, options=cls.parse_options(m.options))
    method.set_token_merging(m.token_merging)
    method.freeze(text=m.freeze_text or None, vision=m.freeze_vision or None, logit_scale=m.freeze_logit_scale)
    if m.grad_checkpointing:
        method.clip.set_grad_checkpointing(True)
    if m.init_checkpoint:
        load_init_checkpoint(method, m.init_checkpoint, cfg.model.method)
    return method


def load_init_checkpoint(method: VideoMethod, path: str, method_name: str | None = None) -> dict:
    """Initialise ``method`` from a vclip training checkpoint: every tensor the checkpoint holds
    for the method (CLIP *and* the method's own modules, e.g. a K400-trained decoder for few-shot).
    Weights the checkpoint lacks keep their initialisation (logged); tensors the method lacks are
    ignored (logged); a shape mismatch is an error naming the tensor. Returns the counts."""
    from vclip.engine.checkpoint import load_checkpoint

    state, _, meta = load_checkpoint(path)
    from vclip.backbone.weights import state_differences

    own = method.state_dict()
    missing, unused, mismatched = state_differences(own, state)
    if mismatched:
        k = mismatched[0]
        raise ConfigError(f"model.init_checkpoint {path}: {k} has shape {tuple(state[k].shape)} there, "
                          f"{tuple(own[k].shape)} in this {method_name or 'model'} ({len(mismatched)} such tensors; "
                          "another architecture, frame count or method?)")
    loaded = {k: v for k, v in state.items() if k in own}
    if not loaded:
        raise ConfigError(f"model.init_checkpoint {path}: none of its {len(state)} tensors belongs to this model")
    method.load_state_dict({**own, **loaded})
    method.clear_cache()
    src = meta.get("method")
    if method_name and src and src != method_name:
        log.warning("model.init_checkpoint %s was trained as %r, this run is %r", path, src, method_name)
    log.info("model.init_checkpoint %s: %d tensors loaded, %d kept their initialisation%s, %d unused%s", path,
             len(loaded), len(missing), f" (e.g. {missing[0]})" if missing else "", len(unused),
             f" (e.g. {unused[0]})" if unused else "")
    return {"loaded": len(loaded), "missing": missing, "unused": unused}


def make_vocabulary(cfg, class_names, descriptors=None) -> Vocabulary:
    from vclip.text.templates import resolve_templates

    cls = method_class(cfg.model.method)
    templates = cfg.model.templates or cls.default_templates
    if descriptors is None:  # methods that score descriptors (OST) read them from files named in options
        descriptors = cls.vocabulary_descriptors(cfg.model.options, class_names)
    return Vocabulary(tuple(class_names), resolve_templates(templates), descriptors)


__all__ = ["METHODS", "MethodOutput", "VideoMethod", "Vocabulary", "build_method", "check_config",
           "load_init_checkpoint", "load_run_config", "make_vocabulary", "method_class"]
