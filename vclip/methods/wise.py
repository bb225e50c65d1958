"""WiSE-FT: weight-space ensembling of two models of the same architecture.

    θ = ratio · θ_A + (1 − ratio) · θ_B

OST's zero-shot evaluation uses A = the zero-shot CLIP initialisation, B = the fine-tuned model and
ratio 0.2 ("0.2 for the origin", i.e. 80 % fine-tuned), over the model's parameters only (buffers
are B's). ``vclip wise`` writes the result as a vclip checkpoint that ``vclip eval --checkpoint``
reads; OST's ``model.options.wise_checkpoint`` / ``wise_ratio`` apply it inside an evaluation
config instead (A = the CLIP built from ``model.pretrained``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from vclip.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["wise_state_dict", "load_state", "write_checkpoint"]


def wise_state_dict(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], ratio: float,
                    parameter_names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``ratio · A + (1 − ratio) · B`` for every floating tensor both hold with the same shape (and,
    when ``parameter_names`` is given, only for those names); every other entry of B is kept.
    A tensor both hold with different shapes is an error (not the same architecture)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"WiSE-FT ratio must be in [0, 1], got {ratio}")
    names = set(parameter_names) if parameter_names is not None else None
    out: dict[str, torch.Tensor] = {}
    mixed = 0
    for k, b in state_b.items():
        a = state_a.get(k)
        if a is None or not torch.is_floating_point(b) or (names is not None and k not in names):
            out[k] = b
            continue
        if a.shape != b.shape:
            raise CheckpointError(f"WiSE-FT: {k} has shape {tuple(a.shape)} in A and {tuple(b.shape)} in B: "
                                  "not the same architecture")
        out[k] = (ratio * a.to(torch.float32) + (1.0 - ratio) * b.to(torch.float32)).to(b.dtype)
        mixed += 1
    if mixed == 0:
        raise CheckpointError("WiSE-FT: the two state dicts share no floating-point tensor (different models?)")
    only_b = sum(1 for k in state_b if k not in state_a)
    if only_b:
        log.info("WiSE-FT: %d tensors exist only in B (e.g. modules added to CLIP): kept as they are", only_b)
    return out


def load_state(source: str | os.PathLike, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """A method-level state dict from a vclip training checkpoint directory (or a file in it), or
    from CLIP weights (name, file, directory: keys prefixed ``clip.`` as in every method)."""
    from vclip.engine.checkpoint import META_FILE, load_checkpoint

    p = Path(source)
    if (p.is_dir() and (p / META_FILE).is_file()) or (p.is_file() and (p.parent / META_FILE).is_file()):
        state, _, _ = load_checkpoint(p)
        return state
    from vclip.backbone.weights import load_clip

    clip = load_clip(str(source), trust_checkpoint=trust_checkpoint)
    return {f"clip.{k}": v for k, v in clip.state_dict().items()}


def write_checkpoint(out: str | os.PathLike, state: Mapping[str, torch.Tensor], meta: dict) -> Path:
    """Write ``state`` as a vclip checkpoint directory ``out`` (atomically: a temporary sibling
    directory renamed into place; an existing non-empty ``out`` is refused)."""
    from vclip.engine.checkpoint import save_checkpoint

    return save_checkpoint(out, state, tag="wise",
                           meta={"step": 0, "epoch": 0, "micro_in_epoch": 0, "metric": None, **meta})


def check_args(ratio: float, out: str | os.PathLike) -> None:
    """``vclip wise``'s argument checks, made before any weight is read: ``--ratio`` in [0, 1]
    (NaN refused) and ``OUT`` free (absent or an empty folder)."""
    if not 0.0 <= ratio <= 1.0:  # also False for NaN
        raise ConfigError(f"--ratio must be in [0, 1] (the weight of CKPT_A), got {ratio}")
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise ConfigError(f"OUT {o}: exists and is not an empty folder; choose a new output path")


def _cmd_wise(args) -> int:
    check_args(args.ratio, args.out)
    a = load_state(args.a, trust_checkpoint=args.trust_checkpoint)
    b = load_state(args.b, trust_checkpoint=args.trust_checkpoint)
    state = wise_state_dict(a, b, args.ratio)
    out = write_checkpoint(args.out, state, {"wise": {"ratio": args.ratio, "a": str(args.a), "b": str(args.b)},
                                             "method": None})
    print(json.dumps({"out": str(out), "ratio": args.ratio, "tensors": len(state)}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "wise", help="WiSE-FT: interpolate two checkpoints of the same architecture (θ = R·A + (1−R)·B)",
        description="Weight-space ensembling. A and B: vclip checkpoint directories or CLIP weights (name, "
                    "file, directory). OST's zero-shot setting (20 % CLIP, 80 % fine-tuned): "
                    "vclip wise --ratio 0.2 openai/ViT-B-16 runs/ost-k400/checkpoints/best out/ost-wise")
    p.add_argument("--ratio", type=float, required=True,
                   help="weight of A, in [0, 1] (OST: 0.2 with A = the zero-shot CLIP)")
    p.add_argument("a", metavar="CKPT_A")
    p.add_argument("b", metavar="CKPT_B")
    p.add_argument("out", metavar="OUT", help="output checkpoint directory (vclip eval --checkpoint OUT)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of CLIP weight files")
    p.set_defaults(handler=_cmd_wise)
