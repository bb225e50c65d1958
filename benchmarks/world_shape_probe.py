"""Can the image tower learn the world's shapes at all? A supervised probe (docs/suite.md,
"Pretraining"): the vision tower of ``--arch`` (random init, optionally another patch size) plus a
linear head, trained with cross-entropy on one attribute (``--attribute``, default the shape:
circle, square, triangle, star) of the world's single-object training frames, then scored on its
single-object test frames. No text, no
contrastive loss: if this does not learn shape in a budget, pretraining cannot either.

    python benchmarks/world_shape_probe.py --world runs/suite/world --steps 400 --json probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F

from vclip import pretrain as P
from vclip.backbone.config import get_config
from vclip.backbone.model import CLIP

def values(attribute: str) -> tuple[str, ...]:
    from vclip.data import world as W

    table = {"shape": W.SHAPES, "colour": tuple(W.COLOURS), "size": W.SIZES, "texture": W.TEXTURES,
             "position": W.POSITIONS}
    if attribute not in table:
        raise SystemExit(f"--attribute must be one of {', '.join(table)}, got {attribute!r}")
    return tuple(table[attribute])


def probe(world, *, attribute: str = "shape", arch: str = P.DEFAULT_ARCH, patch_size: int | None = None,
          steps: int = 400, batch: int = 64, lr: float = 5e-4, seed: int = 0) -> dict:
    """Train the probe; ``{"accuracy", "chance", "loss_first", "loss_last", ...}`` (test accuracy
    of ``attribute``, chance 1/number of values; losses as means of the first and last 10 % of the
    steps)."""
    classes = values(attribute)
    frames, entries = P.load_frames(world)
    cfg = get_config(arch)
    if patch_size:
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, patch_size=patch_size))
    one = [i for i, e in enumerate(entries) if len(e["objects"]) == 1]
    tr = [i for i in one if entries[i]["split"] == "train"]
    te = [i for i in one if entries[i]["split"] == "test"]
    size = cfg.vision.image_size
    xtr, xte = P.to_pixels(frames[tr], size), P.to_pixels(frames[te], size)
    ytr = torch.tensor([classes.index(entries[i]["objects"][0][attribute]) for i in tr])
    yte = torch.tensor([classes.index(entries[i]["objects"][0][attribute]) for i in te])
    torch.manual_seed(seed)
    tower = CLIP(cfg).visual
    head = torch.nn.Linear(cfg.embed_dim, len(classes))
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(tr), (batch,), generator=g)
        loss = F.cross_entropy(head(tower(xtr[idx]).embeds), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([head(tower(xte[i:i + 256]).embeds).argmax(1) for i in range(0, len(te), 256)])
    k = max(1, steps // 10)
    return {"attribute": attribute, "arch": arch, "patch_size": cfg.vision.patch_size, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
            "train_frames": len(tr), "test_frames": len(te), "accuracy": float((pred == yte).float().mean()),
            "chance": 1 / len(classes), "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "seconds": round(seconds, 1), "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="a folder written by `vclip data world`")
    ap.add_argument("--attribute", default="shape", help="shape (default), colour, size, texture or position")
    ap.add_argument("--arch", default=P.DEFAULT_ARCH)
    ap.add_argument("--patch-size", type=int, default=None, help="another patch size for the tower")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = probe(args.world, attribute=args.attribute, arch=args.arch, patch_size=args.patch_size, steps=args.steps, batch=args.batch,
              lr=args.lr, seed=args.seed)
    print(f"{r['attribute']} accuracy {100 * r['accuracy']:.1f}% (chance {100 * r['chance']:.0f}%) after {r['steps']} steps "
          f"of {r['batch']}; loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; {r['seconds']:.0f} s")
    if args.json:
        from vclip.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
