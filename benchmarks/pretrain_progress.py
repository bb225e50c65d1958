"""Zero-shot static accuracy of a pretraining *in progress* (docs/suite.md, "Pretraining"):
``vclip pretrain`` saves its training state to ``FILE.state.pt`` every 100 steps; this scores the
model in each given state file (a copy of it, as it is overwritten while training runs) on the
world's held-out single-object frames, as the finished run scores its final model.

    cp world/clip.pt.state.pt /tmp/at.pt && python benchmarks/pretrain_progress.py --world world /tmp/at.pt

Read it as a curve of one run: the learning rate at step s of a 6000-step cosine schedule is not
the end of a shorter run's schedule.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from vclip import pretrain as P
from vclip.backbone.config import get_config
from vclip.backbone.model import CLIP
from vclip.errors import ConfigError


def score_state(state_file, world, arch: str | None = None) -> dict:
    """``{"step", "loss", "zero_shot": {attribute: accuracy}, "chance"}`` of a pretraining state
    file (``loss``: the mean of its last 50 steps' losses)."""
    st = torch.load(state_file, map_location="cpu", weights_only=True)
    if not {"model", "step", "args"} <= set(st):
        raise ConfigError(f"{state_file}: not a `vclip pretrain` state file (no model/step/args)")
    cfg = get_config(arch or st["args"]["arch"])
    model = CLIP(cfg)
    model.load_state_dict(st["model"])
    frames, entries = P.load_frames(world)
    test = [i for i, e in enumerate(entries) if e["split"] == "test"]
    zs = P.zero_shot_static(model, P.to_pixels(frames[test], cfg.vision.image_size), [entries[i] for i in test])
    return {"file": str(state_file), "step": int(st["step"]), "loss": float(np.mean(st["losses"][-50:])),
            "zero_shot": zs["accuracy"], "chance": zs["chance"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("states", nargs="+", metavar="STATE", help="copies of FILE.state.pt")
    ap.add_argument("--world", required=True, help="the world the pretraining reads")
    ap.add_argument("--arch", default=None, help="architecture (default: the one in the state's arguments)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = [score_state(s, args.world, args.arch) for s in args.states]
    for r in out:
        acc = " ".join(f"{a} {100 * v:.1f}%" for a, v in r["zero_shot"].items())
        print(f"{r['file']}: step {r['step']}, loss {r['loss']:.3f}: {acc}")
    if args.json:
        from vclip.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
