"""X-CLIP checkpoints: the layouts users have, converted exactly, and export to transformers.

Layouts of a full X-CLIP state dict:

* ``vclip`` — ``XCLIP.state_dict()``: the CLIP under ``clip.`` (vclip names), per-layer message
  modules as ``message_{fc,ln,attn}.{i}.*``, and ``mit.*``, ``prompts_*`` with the official names.
* ``official`` — microsoft/VideoX ``X-CLIP`` ``.pth`` files, ``{"model": state_dict, ...}`` (OpenAI
  CLIP names; message modules inside the vision blocks, ``visual.transformer.resblocks.{i}.message_*``),
  optionally ``module.``-prefixed (ViFi-CLIP/OST-style saves).
* ``hf`` — transformers ``XCLIPModel`` (``microsoft/xclip-*`` directories: ``config.json`` +
  ``model.safetensors``/``pytorch_model.bin``).

``official ↔ vclip`` is a rename; ``hf ↔ vclip`` uses the backbone's CLIP map
(``vclip.backbone.convert``) plus the X-CLIP renames of transformers' conversion script (q/k/v split
of the message and MIT attention, ``mit.position_embedding``, ``prompts_visual_layernorm``,
``prompts_visual_projection`` (not transposed), ``prompts_generator.layernorm``). ``official ↔ hf``
is their composition, so every conversion is exact and invertible.

Entry points: ``load_xclip(source, num_frames=..., image_size=...)``, ``save_xclip_hf(method, dir)``,
and ``from_run_config(source, cfg)`` (what ``build_method`` calls for ``model.method=xclip``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import re
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from vclip.backbone import convert
from vclip.backbone.config import CLIPConfig, TextConfig, VisionConfig
from vclip.backbone.model import CLIP, interpolate_positional_embedding
from vclip.backbone.weights import (WEIGHT_FILES, load_state_dict_checked, read_state_dict, unwrap_state_dict,
                                    write_files_atomically)
from vclip.errors import CheckpointError
from vclip.io import atomic_write
from vclip.methods.xclip import XCLIP, XCLIPOptions, default_heads

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

XCLIP_MARKERS = ("mit.", "prompts_generator.", "prompts_visual_")

# ------------------------------------------------------------------------------ layouts


def detect_xclip_layout(sd: StateDict) -> str | None:
    """'vclip', 'official' or 'hf' for a full X-CLIP state dict; None when the dict has no X-CLIP
    module (e.g. a plain CLIP)."""
    keys = list(sd)
    if not any(k.startswith(XCLIP_MARKERS) or ".message_" in k or k.startswith("message_") for k in keys):
        return None
    if any(k.startswith("clip.") for k in keys):
        return "vclip"
    if any(k.startswith("vision_model.") for k in keys):
        return "hf"
    if any(k.startswith("visual.") for k in keys):
        return "official"
    raise CheckpointError(f"an X-CLIP state dict of no known layout (first keys: {', '.join(sorted(keys)[:6])})")


_OFFICIAL_MSG = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.message_(fc|ln|attn)\.(.+)$")
_VCLIP_MSG = re.compile(r"^message_(fc|ln|attn)\.(\d+)\.(.+)$")


def official_to_vclip(sd: StateDict) -> StateDict:
    """Official X-CLIP names → ``XCLIP.state_dict()`` names."""
    out: StateDict = {}
    clip_sd: StateDict = {}
    for k, v in sd.items():
        m = _OFFICIAL_MSG.match(k)
        if m:
            i, kind, rest = m.groups()
            out[f"message_{kind}.{i}.{rest}"] = v
        elif k.startswith(XCLIP_MARKERS):
            out[k] = v
        else:
            clip_sd[k] = v
    out.update({"clip." + k: v for k, v in convert.openai_to_vclip(clip_sd).items()})
    return out


def vclip_to_official(sd: StateDict) -> StateDict:
    """``XCLIP.state_dict()`` names → official X-CLIP names."""
    out: StateDict = {}
    clip_sd: StateDict = {}
    for k, v in sd.items():
        m = _VCLIP_MSG.match(k)
        if m:
            kind, i, rest = m.groups()
            out[f"visual.transformer.resblocks.{i}.message_{kind}.{rest}"] = v
        elif k.startswith("clip."):
            clip_sd[k[len("clip."):]] = v
        else:
            out[k] = v
    out.update(convert.vclip_to_openai(clip_sd))
    return out


_HF_MSG = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.message_(fc|ln|attn)\.(.+)$")
_HF_MIT = re.compile(r"^mit\.encoder\.layers\.(\d+)\.(.+)$")
_QKV = re.compile(r"^(?:self_attn\.|)([qkv])_proj\.(weight|bias)$")
# MIT block names, vclip/official ↔ transformers
_MIT_RENAMES = [("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
                ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
# top-level renames (vclip/official, transformers)
_TOP = [("mit.positional_embedding", "mit.position_embedding"),
        ("prompts_visual_ln.", "prompts_visual_layernorm."),
        ("prompts_visual_proj", "prompts_visual_projection"),
        ("prompts_generator.norm.", "prompts_generator.layernorm.")]


def _rename(k: str, pairs, reverse: bool = False) -> str | None:
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if k == src or (src.endswith(".") and k.startswith(src)):
            return dst + k[len(src):]
    return None


def hf_to_vclip(sd: StateDict) -> StateDict:
    """transformers ``XCLIPModel`` names → ``XCLIP.state_dict()`` names (q/k/v concatenated)."""
    out: StateDict = {}
    clip_sd: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        m = _HF_MSG.match(k)
        if m:
            i, kind, rest = m.groups()
            q = _QKV.match(rest) if kind == "attn" else None
            if q:
                qkv.setdefault((f"message_attn.{i}.in_proj_", q.group(2)), {})[q.group(1)] = v
            else:
                out[f"message_{kind}.{i}.{rest}"] = v
            continue
        m = _HF_MIT.match(k)
        if m:
            i, rest = m.groups()
            q = _QKV.match(rest)
            if q:
                qkv.setdefault((f"mit.resblocks.{i}.attn.in_proj_", q.group(2)), {})[q.group(1)] = v
                continue
            new = _rename(rest, _MIT_RENAMES, reverse=True)
            if new is None:
                raise CheckpointError(f"unexpected key {k!r} in a transformers X-CLIP state dict")
            out[f"mit.resblocks.{i}.{new}"] = v
            continue
        new = _rename(k, _TOP, reverse=True)
        if new is not None:
            out[new] = v
        elif k.startswith(XCLIP_MARKERS):
            out[k] = v
        else:
            clip_sd[k] = v
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{prefix}{kind}: the checkpoint has only {sorted(parts)} of q, k, v")
        out[prefix + kind] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    out.update({"clip." + k: v for k, v in convert.hf_to_vclip(clip_sd).items()})
    return out


def vclip_to_hf(sd: StateDict) -> StateDict:
    """``XCLIP.state_dict()`` names → transformers ``XCLIPModel`` names (q/k/v split)."""
    out: StateDict = {}
    clip_sd: StateDict = {}
    for k, v in sd.items():
        m = _VCLIP_MSG.match(k)
        if m:
            kind, i, rest = m.groups()
            base = f"vision_model.encoder.layers.{i}.message_{kind}."
            if kind == "attn" and rest.startswith("in_proj_"):
                kind_ = rest[len("in_proj_"):]
                for name, part in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{base}{name}_proj.{kind_}"] = part.contiguous()
            else:
                out[base + rest] = v
            continue
        m = re.match(r"^mit\.resblocks\.(\d+)\.(.+)$", k)
        if m:
            i, rest = m.groups()
            base = f"mit.encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind_ = rest[len("attn.in_proj_"):]
                for name, part in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}_proj.{kind_}"] = part.contiguous()
                continue
            new = _rename(rest, _MIT_RENAMES)
            if new is None:
                raise CheckpointError(f"unexpected key {k!r} in a vclip X-CLIP state dict")
            out[base + new] = v
            continue
        if k.startswith("clip."):
            clip_sd[k[len("clip."):]] = v
            continue
        new = _rename(k, _TOP)
        out[new if new is not None else k] = v
    hf_clip = convert.vclip_to_hf(clip_sd)
    # X-CLIP's port spells the vision pre-LayerNorm correctly (CLIP's: pre_layrnorm)
    out.update({k.replace("vision_model.pre_layrnorm.", "vision_model.pre_layernorm."): v for k, v in hf_clip.items()})
    return out


def official_to_hf(sd: StateDict) -> StateDict:
    """The map of transformers' conversion script (official ``.pth['model']`` → ``XCLIPModel``)."""
    return vclip_to_hf(official_to_vclip(sd))


def hf_to_official(sd: StateDict) -> StateDict:
    """The inverse of ``official_to_hf``."""
    return vclip_to_official(hf_to_vclip(sd))


def to_vclip(sd: StateDict, where: str | Path = "state dict") -> StateDict:
    layout = detect_xclip_layout(sd)
    if layout is None:
        raise CheckpointError(f"{where}: not an X-CLIP checkpoint (no mit./prompts_/message_ weights)")
    if layout == "official":
        return official_to_vclip(sd)
    if layout == "hf":
        return hf_to_vclip(sd)
    return dict(sd)


# ------------------------------------------------------------------------------ architecture


def _indices(sd: StateDict, prefix: str) -> set[int]:
    return {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}


def _count(sd: StateDict, prefix: str, what: str, where) -> int:
    idx = _indices(sd, prefix)
    if not idx:
        raise CheckpointError(f"{where}: no {what} weights ({prefix}*) — missing keys")
    if idx != set(range(len(idx))):
        raise CheckpointError(f"{where}: {what} layers {sorted(set(range(max(idx) + 1)) - idx)} are missing")
    return len(idx)


@dataclasses.dataclass
class XCLIPArch:
    """What a checkpoint says about the architecture."""

    clip: CLIPConfig
    num_frames: int
    mit_layers: int
    prompt_layers: int
    #: head counts a transformers config.json declares (None: the official rule, embed/64)
    mit_heads: int | None = None
    prompt_heads: int | None = None


def infer_arch(sd: StateDict, where: str | Path = "state dict", clip_config: CLIPConfig | None = None) -> XCLIPArch:
    """Architecture of a vclip-layout X-CLIP state dict (CLIP from the shapes, heads = width/64, as
    the official code builds them), T from the MIT position embedding."""
    clip_sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
    if clip_config is None:
        try:
            clip_config = convert.infer_config(clip_sd)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
    pos = sd.get("mit.positional_embedding")
    if pos is None or pos.dim() != 3:
        raise CheckpointError(f"{where}: missing key mit.positional_embedding (the MIT temporal position embedding)")
    vis_layers = clip_config.vision.layers
    msg_layers = _count(sd, "message_fc.", "cross-frame message", where)
    if msg_layers != vis_layers:
        raise CheckpointError(f"{where}: {msg_layers} cross-frame message layers for {vis_layers} vision blocks")
    return XCLIPArch(clip=clip_config, num_frames=pos.shape[1], mit_layers=_count(sd, "mit.resblocks.", "MIT", where),
                     prompt_layers=len(_indices(sd, "prompts_generator.decoder.")))


# ------------------------------------------------------------------------------ transformers config

# transformers' XCLIP{Text,Vision}Config defaults (config.json files may leave them out)
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           mit_hidden_size=512, mit_intermediate_size=2048, mit_num_hidden_layers=1,
                           mit_num_attention_heads=8, image_size=224, patch_size=32, num_frames=8,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _square(value, name: str, where) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{where}: non-square {name} {value} is not supported")
        value = value[0]
    return int(value)


def arch_from_hf(d: dict, where: str | Path = "config.json") -> XCLIPArch:
    """Architecture of a transformers ``XCLIPConfig`` dict (missing fields take transformers'
    defaults; ``*_config_dict`` entries override, as transformers does)."""
    t = {**_HF_TEXT_DEFAULTS, **(d.get("text_config") or {}), **(d.get("text_config_dict") or {})}
    v = {**_HF_VISION_DEFAULTS, **(d.get("vision_config") or {}), **(d.get("vision_config_dict") or {})}
    embed = d.get("projection_dim", 512)
    acts = {t["hidden_act"], v["hidden_act"]}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise CheckpointError(f"{where}: unsupported hidden_act {sorted(acts)} (need quick_gelu or gelu in both towers)")
    if v["mit_hidden_size"] != embed:
        raise CheckpointError(f"{where}: mit_hidden_size {v['mit_hidden_size']} differs from projection_dim {embed}")
    if v["mit_intermediate_size"] != 4 * embed:
        raise CheckpointError(f"{where}: mit_intermediate_size {v['mit_intermediate_size']} is not 4 × {embed}")
    if d.get("prompt_hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointError(f"{where}: prompt_hidden_act {d.get('prompt_hidden_act')!r} (X-CLIP uses quick_gelu)")
    width = v["hidden_size"]
    clip = CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=_square(v["image_size"], "image_size", where),
                            patch_size=_square(v["patch_size"], "patch_size", where), width=width,
                            layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                            mlp_ratio=v["intermediate_size"] / width),
        text=TextConfig(context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
                        width=t["hidden_size"], heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
                        mlp_ratio=t["intermediate_size"] / t["hidden_size"]),
        activation=acts.pop(),
        layer_norm_eps=v["layer_norm_eps"],
        logit_scale_init=d.get("logit_scale_init_value", math.log(1 / 0.07)),
    )
    return XCLIPArch(clip=clip, num_frames=v["num_frames"], mit_layers=v["mit_num_hidden_layers"],
                     prompt_layers=d.get("prompt_layers", 2), mit_heads=v["mit_num_attention_heads"],
                     prompt_heads=d.get("prompt_num_attention_heads", 8))


def config_to_hf(method: XCLIP) -> dict:
    """transformers ``XCLIPConfig`` dict (config.json) of a vclip X-CLIP."""
    base = convert.config_to_hf(method.clip.config)
    embed = method.clip.config.embed_dim
    text = {**base["text_config"], "model_type": "xclip_text_model"}
    vision = {**base["vision_config"], "model_type": "xclip_vision_model", "mit_hidden_size": embed,
              "mit_intermediate_size": 4 * embed, "mit_num_hidden_layers": len(method.mit.resblocks),
              "mit_num_attention_heads": method.mit_heads, "num_frames": method.mit.num_frames,
              "drop_path_rate": 0.0}
    return {
        "architectures": ["XCLIPModel"],
        "model_type": "xclip",
        "projection_dim": embed,
        "prompt_layers": len(method.prompts_generator.decoder),
        "prompt_alpha": float(method.options.prompt_alpha),
        "prompt_hidden_act": "quick_gelu",
        "prompt_num_attention_heads": method.prompt_heads,
        "logit_scale_init_value": float(method.clip.logit_scale.detach().float()),
        "torch_dtype": "float32",
        "text_config": text,
        "vision_config": vision,
    }


# ------------------------------------------------------------------------------ reading files


class _Placeholder(dict):
    """Stands in for a class that is not importable here (e.g. the yacs ``CfgNode`` official
    ``.pth`` files carry); keeps whatever state the pickle gives it."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError):
            log.debug("checkpoint references %s.%s, not importable here: kept as a placeholder", module, name)
            return type(name, (_Placeholder,), {"__module__": module})


_lenient_pickle = types.ModuleType("vclip_lenient_pickle")
_lenient_pickle.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
_lenient_pickle.Unpickler = _LenientUnpickler


def read_xclip_file(path: Path, trust_checkpoint: bool = False) -> StateDict:
    """Tensors of an X-CLIP weight file. Trusted pickles are unpickled even when they reference
    classes that are not installed (the yacs config of official files): those become placeholders."""
    if path.suffix == ".safetensors" or not trust_checkpoint:
        try:
            return read_state_dict(path, trust_checkpoint=False)
        except CheckpointError as e:
            if "trust_checkpoint" in str(e):
                raise CheckpointError(
                    f"{e} Official X-CLIP .pth files (microsoft/VideoX) store the training config as a yacs "
                    "CfgNode object beside the weights, so they always need trust_checkpoint=True "
                    "(config: model.trust_checkpoint=true)."
                ) from None
            raise
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
    except Exception as e:  # corrupt bytes raise many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None
    return unwrap_state_dict(obj, path)


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weight file (looked for {', '.join(WEIGHT_FILES)})")


def read_xclip(source: str | os.PathLike, trust_checkpoint: bool = False) -> tuple[StateDict, XCLIPArch, Path] | None:
    """(vclip-layout state dict, architecture, weight file) of a full X-CLIP checkpoint, or None
    when ``source`` is no X-CLIP checkpoint (a plain CLIP, or a name)."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    if path.is_dir():
        cfg_file = path / "config.json"
        meta = {}
        if cfg_file.is_file():
            try:
                meta = json.loads(cfg_file.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{cfg_file}: not valid JSON: {e}") from None
        if meta.get("model_type") != "xclip" and "XCLIPModel" not in meta.get("architectures", []):
            return None
        weights = _find_weights(path)
        sd = read_xclip_file(weights, trust_checkpoint)
        if detect_xclip_layout(sd) != "hf":
            raise CheckpointError(f"{weights}: config.json says transformers X-CLIP but the weights are not in its layout")
        arch = arch_from_hf(meta, cfg_file)
        sd = hf_to_vclip(sd)
        _check_frames_match(sd, arch, weights)
        return sd, arch, weights
    sd = read_xclip_file(path, trust_checkpoint)
    layout = detect_xclip_layout(sd)
    if layout is None:
        return None
    if layout == "hf":
        raise CheckpointError(f"{path}: transformers X-CLIP weights need their config.json beside them")
    sd = to_vclip(sd, path)
    return sd, infer_arch(sd, path), path


def _check_frames_match(sd: StateDict, arch: XCLIPArch, where: Path) -> None:
    pos = sd.get("mit.positional_embedding")
    if pos is None:
        raise CheckpointError(f"{where}: missing key mit.position_embedding")
    if pos.shape[1] != arch.num_frames:
        raise CheckpointError(f"{where}: config.json says num_frames={arch.num_frames} but the MIT position "
                              f"embedding has {pos.shape[1]}")


def interpolate_temporal_embedding(pos: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize the MIT position embedding [1, T, D] to [1, num_frames, D] (linear, align_corners=False)."""
    if pos.shape[1] == num_frames:
        return pos
    out = F.interpolate(pos.float().transpose(1, 2), size=num_frames, mode="linear", align_corners=False)
    return out.transpose(1, 2).to(pos.dtype).contiguous()


# ------------------------------------------------------------------------------ loading / saving


def _resolve_heads(arch: XCLIPArch, options: XCLIPOptions, where) -> XCLIPOptions:
    embed = arch.clip.embed_dim
    official = default_heads(embed) if embed % 64 == 0 else None
    chosen = {}
    for field, what in (("mit_heads", "mit_num_attention_heads"), ("prompt_heads", "prompt_num_attention_heads")):
        user, declared = getattr(options, field), getattr(arch, field)
        if user is not None:
            chosen[field] = user
        elif declared is None:
            chosen[field] = None
        elif official is None or declared == official:
            chosen[field] = declared
        else:
            log.warning(
                "%s: %s=%d, but the official X-CLIP code builds these layers with embed_dim/64 = %d heads (the "
                "known error of transformers' large X-CLIP configs); using %d. Set model.options.%s=%d to "
                "reproduce transformers' outputs instead.", where, what, declared, official, official, field, declared)
            chosen[field] = official
    return dataclasses.replace(options, mit_layers=arch.mit_layers, prompt_layers=arch.prompt_layers, **chosen)


def load_xclip(
    source: str | os.PathLike,
    *,
    num_frames: int | None = None,
    image_size: int | None = None,
    options: XCLIPOptions | dict | None = None,
    trust_checkpoint: bool = False,
) -> XCLIP:
    """A full X-CLIP from an official ``.pth``, a transformers X-CLIP directory or a vclip X-CLIP
    state dict. Architecture, T and layer counts come from the checkpoint; ``num_frames`` /
    ``image_size`` different from the checkpoint's interpolate the temporal / spatial position
    embeddings (``options.interpolate_frames=False`` refuses another T)."""
    opts = XCLIP.parse_options(options) if not isinstance(options, XCLIPOptions) else options
    found = read_xclip(source, trust_checkpoint)
    if found is None:
        raise CheckpointError(f"{source}: not an X-CLIP checkpoint (no MIT / prompt generator / message weights)")
    sd, arch, where = found
    return build_xclip(sd, arch, num_frames=num_frames, image_size=image_size, options=opts, where=where)


def build_xclip(sd: StateDict, arch: XCLIPArch, *, num_frames: int | None = None, image_size: int | None = None,
                options: XCLIPOptions | None = None, where: str | Path = "state dict") -> XCLIP:
    """An X-CLIP holding ``sd`` (vclip layout) with architecture ``arch`` (``infer_arch`` /
    ``arch_from_hf``), sized to ``num_frames`` / ``image_size`` (see ``load_xclip``)."""
    opts = options if options is not None else XCLIPOptions()
    sd = dict(sd)
    t_ckpt = arch.num_frames
    t = num_frames or t_ckpt
    if t != t_ckpt:
        if not opts.interpolate_frames:
            raise CheckpointError(
                f"{where}: the checkpoint was trained with {t_ckpt} frames (MIT temporal position embedding "
                f"[1, {t_ckpt}, D]) but {t} frames were asked for and interpolation is disabled; set "
                f"data.num_frames={t_ckpt} or model.options.interpolate_frames=true"
            )
        sd["mit.positional_embedding"] = interpolate_temporal_embedding(sd["mit.positional_embedding"], t)
        log.info("%s: interpolated the MIT temporal position embedding from %d to %d frames", where, t_ckpt, t)
    clip_cfg = arch.clip
    if image_size is not None and image_size != clip_cfg.vision.image_size:
        old = clip_cfg.vision.image_size
        clip_cfg.vision.image_size = image_size
        clip_cfg.validate()
        sd["clip.visual.positional_embedding"] = interpolate_positional_embedding(
            sd["clip.visual.positional_embedding"], clip_cfg.vision.num_tokens)
        log.info("%s: interpolated the positional embedding from %d to %d px", where, old, image_size)
    opts = _resolve_heads(arch, opts, where)
    with torch.device("meta"):  # every weight comes from the file: skip the random initialisation
        method = XCLIP(CLIP(clip_cfg), num_frames=t, options=opts)
    method.to_empty(device="cpu")
    load_state_dict_checked(method, sd, where)
    return method


def save_xclip_hf(method: XCLIP, directory: str | os.PathLike) -> Path:
    """Write ``method`` as a transformers ``XCLIPModel`` directory (config.json + model.safetensors),
    loadable by ``XCLIPModel.from_pretrained``. Each file is written atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    sd = vclip_to_hf({k: v.detach().cpu().float().contiguous() for k, v in method.state_dict().items()})
    meta = config_to_hf(method)
    write_files_atomically(directory, {
        "model.safetensors": lambda p: save_file(sd, p, metadata={"format": "pt"}),
        "config.json": lambda p: Path(p).write_text(json.dumps(meta, indent=2)),
    })
    return directory


def save_xclip_official(method: XCLIP, path: str | os.PathLike) -> Path:
    """Write ``{"model": official-layout state dict}`` (a weights-only ``torch.save`` file),
    atomically."""
    path = Path(path)
    sd = vclip_to_official({k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()})
    with atomic_write(path) as tmp:
        torch.save({"model": sd}, tmp)
    return path


def from_run_config(source: str, cfg) -> XCLIP:
    """``build_method``'s entry for ``model.method=xclip``: a full X-CLIP checkpoint loads every
    weight (sized to ``data.num_frames`` / ``data.image_size``); anything else is a CLIP for
    ``load_clip``, with the new modules initialised as the official code does."""
    from vclip.backbone.weights import load_clip

    m = cfg.model
    options = XCLIP.parse_options(m.options)
    found_xclip = read_xclip(source, m.trust_checkpoint)
    if found_xclip is not None:
        sd, arch, where = found_xclip
        return build_xclip(sd, arch, num_frames=cfg.data.num_frames, image_size=cfg.data.image_size,
                           options=options, where=where)
    clip = load_clip(source, trust_checkpoint=m.trust_checkpoint, image_size=cfg.data.image_size)
    return XCLIP(clip, num_frames=cfg.data.num_frames, options=options)


__all__ = [
    "XCLIPArch", "arch_from_hf", "build_xclip", "config_to_hf", "detect_xclip_layout", "from_run_config", "hf_to_official",
    "hf_to_vclip", "infer_arch", "interpolate_temporal_embedding", "load_xclip", "official_to_hf",
    "official_to_vclip", "read_xclip", "save_xclip_hf", "save_xclip_official", "to_vclip", "vclip_to_hf",
    "vclip_to_official",
]
