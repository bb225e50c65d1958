"""The cost of one ``vclip pretrain`` step, whole-table vs used-rows (docs/suite.md, "Pretraining").

Two copies of the same initial model train on the same batches, in one process, in blocks of
``--steps`` steps that alternate (the order swapped every block, so the load of a shared machine
hits both alike):

* ``table``: the whole 49,408-row token embedding trained, AdamW's default multi-tensor loop, the
  frames normalised once up front (vclip's pretraining before the used-rows change);
* ``rows``: what ``vclip pretrain`` does — :class:`vclip.pretrain.UsedRows`, fused AdamW, uint8
  frames normalised per batch.

Reports per variant the median and minimum CPU time and wall time per step, and the largest loss
difference between the two over all steps (they train the same model: it stays near float
rounding).

    python benchmarks/pretrain_step_cost.py --world runs/suite/world --json step_cost.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from vclip import pretrain as P
from vclip.backbone.config import get_config
from vclip.backbone.model import CLIP
from vclip.backbone.tokenizer import tokenize


def measure(world, *, arch: str = P.DEFAULT_ARCH, frames: int = 8000, blocks: int = 6, steps: int = 10,
            batch: int = 64, lr: float = 5e-4, seed: int = 0) -> dict:
    cfg = get_config(arch)
    all_frames, entries = P.load_frames(world)
    train = np.array([i for i, e in enumerate(entries) if e["split"] == "train"][:frames])
    u8 = np.ascontiguousarray(all_frames[train])
    size = cfg.vision.image_size
    captions = [entries[i]["caption"] for i in train]
    tokens = tokenize(captions, context_length=cfg.text.context_length)
    index = {c: k for k, c in enumerate(sorted(set(captions)))}
    caption_ids = torch.tensor([index[c] for c in captions])
    pixels = P.to_pixels(u8, size)  # the "table" variant's frames, normalised up front

    def build(rows: bool):
        torch.manual_seed(seed)
        model = CLIP(cfg).train()
        if rows:
            model.text.token_embedding = P.UsedRows(model.text.token_embedding, torch.unique(tokens))
        return model, P._optimizer(model, lr, fused=rows)

    runs = {"table": build(False), "rows": build(True)}
    losses: dict[str, dict[int, float]] = {"table": {}, "rows": {}}
    cpu: dict[str, list[float]] = {"table": [], "rows": []}
    wall: dict[str, list[float]] = {"table": [], "rows": []}
    for b in range(blocks):
        for name in (("table", "rows") if b % 2 == 0 else ("rows", "table")):
            model, opt = runs[name]
            c0, w0 = time.process_time(), time.perf_counter()
            for s in range(b * steps, (b + 1) * steps):
                pick = np.random.default_rng([seed, s]).choice(len(train), batch, replace=False)
                x = P.to_pixels(u8[pick], size) if name == "rows" else pixels[torch.from_numpy(pick)]
                loss = P.contrastive_loss(model, x, tokens[pick], caption_ids[pick])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[name][s] = float(loss.detach())
            cpu[name].append((time.process_time() - c0) / steps)
            wall[name].append((time.perf_counter() - w0) / steps)
    out = {"arch": arch, "frames": int(len(train)), "blocks": blocks, "steps_per_block": steps, "batch": batch,
           "threads": torch.get_num_threads(),
           "max_loss_difference": max(abs(losses["table"][s] - losses["rows"][s]) for s in losses["table"])}
    for name in runs:
        out[name] = {"cpu_ms_median": 1000 * float(np.median(cpu[name])), "cpu_ms_min": 1000 * min(cpu[name]),
                     "wall_ms_median": 1000 * float(np.median(wall[name])), "wall_ms_min": 1000 * min(wall[name])}
    out["cpu_ratio_median"] = out["rows"]["cpu_ms_median"] / out["table"]["cpu_ms_median"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True)
    ap.add_argument("--arch", default=P.DEFAULT_ARCH)
    ap.add_argument("--frames", type=int, default=8000, help="training frames held in memory (default 8000)")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.world, arch=args.arch, frames=args.frames, blocks=args.blocks, steps=args.steps,
                batch=args.batch)
    for name in ("table", "rows"):
        m = r[name]
        print(f"{name:5}  CPU {m['cpu_ms_median']:.1f} ms/step (min {m['cpu_ms_min']:.1f}), "
              f"wall {m['wall_ms_median']:.1f} ms/step (min {m['wall_ms_min']:.1f})")
    print(f"rows / table CPU time: {r['cpu_ratio_median']:.2f}; largest loss difference {r['max_loss_difference']:.2e}")
    if args.json:
        from vclip.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
