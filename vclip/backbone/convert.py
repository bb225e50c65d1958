"""State-dict layouts of CLIP weights and conversion to and from vclip's layout.

Layouts:

* ``vclip`` — this package: OpenAI's names with the text tower under ``text.``.
* ``openai`` — OpenAI's release (``.pt`` TorchScript archives and their state dicts) and open_clip's
  CLIP-architecture checkpoints (same names; open_clip may add an ``attn_mask`` buffer).
* ``hf`` — transformers' ``CLIPModel`` (``vision_model.*``, ``text_model.*``, separate q/k/v, projections
  stored transposed as ``nn.Linear`` weights).

All conversions are exact (renames, transposes, q/k/v split and concatenation).
"""

from __future__ import annotations

import math
import re

import torch

from vclip.backbone.config import CLIPConfig, TextConfig, VisionConfig
from vclip.errors import CheckpointError

StateDict = dict[str, torch.Tensor]

# top-level text tower names in OpenAI's layout
_OPENAI_TEXT_ROOTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# scalar metadata OpenAI's TorchScript archives carry, and buffers that are not weights
_NON_WEIGHTS = {"input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask"}


def detect_layout(sd: StateDict) -> str:
    """'vclip', 'openai' or 'hf'; raises ``CheckpointError`` for anything else."""
    keys = sd.keys()
    if "text.token_embedding.weight" in keys and "visual.conv1.weight" in keys:
        return "vclip"
    if "token_embedding.weight" in keys and "visual.conv1.weight" in keys:
        return "openai"
    if any(k.startswith("vision_model.") for k in keys) and any(k.startswith("text_model.") for k in keys):
        return "hf"
    if any(k.startswith("visual.layer1.") for k in keys):
        raise CheckpointError("this is a ResNet CLIP (modified-ResNet image tower); vclip supports ViT CLIPs only")
    sample = ", ".join(sorted(keys)[:6])
    raise CheckpointError(f"not a CLIP state dict (no known layout; first keys: {sample})")


def openai_to_vclip(sd: StateDict) -> StateDict:
    out = {}
    for k, v in sd.items():
        if k in _NON_WEIGHTS:
            continue
        out["text." + k if k.startswith(_OPENAI_TEXT_ROOTS) else k] = v
    return out


def vclip_to_openai(sd: StateDict) -> StateDict:
    return {(k[len("text.") :] if k.startswith("text.") else k): v for k, v in sd.items()}


# per-block renames vclip ↔ hf (attention q/k/v handled separately)
_BLOCK_RENAMES = [
    ("attn.out_proj.", "self_attn.out_proj."),
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
]
_TOP_RENAMES = [  # (vclip, hf)
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
    ("text.token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("text.positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("text.ln_final.", "text_model.final_layer_norm."),
    ("logit_scale", "logit_scale"),
]
_TOWERS = [("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("text.transformer.resblocks.", "text_model.encoder.layers.")]
_TRANSPOSED = [("visual.proj", "visual_projection.weight"), ("text.text_projection", "text_projection.weight")]


def vclip_to_hf(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        new = _rename_vclip_key_to_hf(k, v, out)
        if new is not None:
            out[new] = v
    return out


def _rename_vclip_key_to_hf(k: str, v: torch.Tensor, out: StateDict) -> str | None:
    for ours, theirs in _TRANSPOSED:
        if k == ours:
            out[theirs] = v.t().contiguous()
            return None
    for ours, theirs in _TOWERS:
        if k.startswith(ours):
            rest = k[len(ours) :]
            idx, tail = rest.split(".", 1)
            base = f"{theirs}{idx}."
            if tail in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if tail.endswith("weight") else "bias"
                for name, part in zip("qkv", v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part.contiguous()
                return None
            for a, b in _BLOCK_RENAMES:
                if tail.startswith(a):
                    return base + b + tail[len(a) :]
            raise CheckpointError(f"unexpected key {k!r} in a vclip CLIP state dict")
    for ours, theirs in _TOP_RENAMES:
        if k == ours or (ours.endswith(".") and k.startswith(ours)):
            return theirs + k[len(ours) :]
    raise CheckpointError(f"unexpected key {k!r} in a vclip CLIP state dict")


_HF_QKV = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def hf_to_vclip(sd: StateDict) -> StateDict:
    out: StateDict = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    towers = {theirs: ours for ours, theirs in _TOWERS}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue  # buffer, not a weight
        m = _HF_QKV.match(k)
        if m:
            tower, idx, which, kind = m.groups()
            qkv.setdefault((tower, idx, kind), {})[which] = v
            continue
        out_key = _rename_hf_key(k, v, out, towers)
        if out_key is not None:
            out[out_key] = v
    for (tower, idx, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{tower} layer {idx}: attention {kind} has only {sorted(parts)} of q, k, v")
        prefix = towers[f"{tower}.encoder.layers."]
        out[f"{prefix}{idx}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _rename_hf_key(k: str, v: torch.Tensor, out: StateDict, towers: dict[str, str]) -> str | None:
    for ours, theirs in _TRANSPOSED:
        if k == theirs:
            out[ours] = v.t().contiguous()
            return None
    for theirs, ours in towers.items():
        if k.startswith(theirs):
            idx, tail = k[len(theirs) :].split(".", 1)
            for a, b in _BLOCK_RENAMES:
                if tail.startswith(b):
                    return f"{ours}{idx}.{a}{tail[len(b):]}"
            raise CheckpointError(f"unexpected key {k!r} in a transformers CLIP state dict")
    k = k.replace("vision_model.pre_layernorm.", "vision_model.pre_layrnorm.")  # both spellings exist
    for ours, theirs in _TOP_RENAMES:
        if k == theirs or (theirs.endswith(".") and k.startswith(theirs)):
            return ours + k[len(theirs) :]
    raise CheckpointError(f"unexpected key {k!r} in a transformers CLIP state dict")


def to_vclip(sd: StateDict) -> StateDict:
    layout = detect_layout(sd)
    if layout == "openai":
        return openai_to_vclip(sd)
    if layout == "hf":
        return hf_to_vclip(sd)
    return {k: v for k, v in sd.items() if k not in _NON_WEIGHTS}


def _count_layers(sd: StateDict, prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    if not idx:
        raise CheckpointError(f"no transformer blocks found under {prefix!r}")
    if idx != set(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - idx)
        raise CheckpointError(f"blocks {missing} are missing under {prefix!r}")
    return len(idx)


def infer_config(sd: StateDict, activation: str = "quick_gelu", head_width: int = 64) -> CLIPConfig:
    """Architecture of a vclip-layout state dict, read from its shapes (heads = width / 64, as in
    every OpenAI and open_clip ViT CLIP)."""
    need = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text.token_embedding.weight",
            "text.positional_embedding", "text.ln_final.weight", "text.text_projection"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"cannot infer the architecture: missing {missing}")
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise CheckpointError("visual.positional_embedding is not 1 + a square number of positions")
    v_layers = _count_layers(sd, "visual.transformer.resblocks.")
    t_layers = _count_layers(sd, "text.transformer.resblocks.")
    t_width = sd["text.ln_final.weight"].shape[0]
    v_hidden = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    t_hidden = sd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return CLIPConfig(
        embed_dim=sd["text.text_projection"].shape[1],
        vision=VisionConfig(image_size=patch * grid, patch_size=patch, width=width, layers=v_layers,
                            heads=max(1, width // head_width), mlp_ratio=v_hidden / width),
        text=TextConfig(context_length=sd["text.positional_embedding"].shape[0],
                        vocab_size=sd["text.token_embedding.weight"].shape[0], width=t_width,
                        heads=max(1, t_width // head_width), layers=t_layers, mlp_ratio=t_hidden / t_width),
        activation=activation,
    )


def config_to_hf(cfg: CLIPConfig) -> dict:
    """transformers ``CLIPConfig`` dict (config.json) for a vclip config."""
    common = {"hidden_act": cfg.activation, "layer_norm_eps": cfg.layer_norm_eps, "projection_dim": cfg.embed_dim}
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "torch_dtype": "float32",
        "text_config": {
            **common,
            "model_type": "clip_text_model",
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_attention_heads": t.heads,
            "num_hidden_layers": t.layers,
            "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
        "vision_config": {
            **common,
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "num_attention_heads": v.heads,
            "num_hidden_layers": v.layers,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
        },
    }


def config_from_hf(d: dict, where: str = "config.json") -> CLIPConfig:
    """vclip config from a transformers CLIP config.json dict."""
    try:
        t, v = d["text_config"], d["vision_config"]
        acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
        if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
            raise CheckpointError(f"{where}: unsupported hidden_act {sorted(acts)} (need quick_gelu or gelu in both towers)")
        return CLIPConfig(
            embed_dim=d.get("projection_dim", 512),
            vision=VisionConfig(image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
                                layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                                mlp_ratio=v["intermediate_size"] / v["hidden_size"]),
            text=TextConfig(context_length=t.get("max_position_embeddings", 77), vocab_size=t["vocab_size"],
                            width=t["hidden_size"], heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
                            mlp_ratio=t["intermediate_size"] / t["hidden_size"]),
            activation=acts.pop(),
            layer_norm_eps=v.get("layer_norm_eps", 1e-5),
            logit_scale_init=d.get("logit_scale_init_value", math.log(1 / 0.07)),
        )
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e} of a transformers CLIP config") from None
