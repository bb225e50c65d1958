"""``vclip pretrain``: a small image–text CLIP trained from random initialisation on the world's still
frames and their *static* captions (``vclip data world``; docs/suite.md "Pretraining").

Training is CLIP's (Radford et al., 2021): for a batch of N (frame, caption) pairs with L2-normalised
embeddings ``v_i`` and ``t_j`` and the learned temperature ``τ`` (``logit_scale = log 1/τ``, clamped
at log 100),

    s_ij = v_i · t_j / τ,
    L = ½ [ CE(s_i·, i) + CE(s_·j, j) ]          (symmetric InfoNCE over the batch)

where a caption that occurs twice in a batch makes both pairs positives (the target of row i is
uniform over the frames whose caption equals caption i, so a repeated caption is never pushed away
from its own frame). A fraction ``hard_batches`` (default 0: off) of the steps draws its batch from single-object
frames that share colour, size and texture: there only shape and position tell the captions apart,
so the loss cannot be lowered by the easy, pixel-wise attributes alone (in random batches almost
every pair differs in colour). Measured, it moves shape by 2-3 points at the cost of size and
texture (docs/suite.md, "Pretraining"), hence off by default. With AdamW (β = 0.9, 0.98, ε = 1e-6,
weight decay 0.1 on matrices only), a linear warm-up over the
first 10 % of the steps and a cosine decay to 0. No augmentation: a flip would change the position
words. Frames are normalised as vclip's video pipeline does by default (``data.normalize:
imagenet``) and resized to the architecture's input size when the world's differs.

Captions carry no motion word ("a large striped red circle at the top left"), so the model knows
colour, shape, size, texture and position and nothing of time: the video methods have to learn
motion from video.

Zero-shot static accuracy (on the world's held-out ``test`` frames with one object): for each
attribute, the prompts vary that attribute and give the true values of the others (``colour``:
``a {c} <shape>``, ``shape``: ``a <colour> {s}``, ``size``: ``a {z} <colour> <shape>``, ``texture``:
``a {x} <colour> <shape>``, ``position``: ``a <colour> <shape> at the {p}``), plus the joint
``colour_shape`` (16 prompts ``a {c} {s}``), reported with chance = 1 / number of prompts.

Output: ``FILE`` — the weights in the OpenAI layout (a ``torch.save`` state dict with the text
tower's names at the top level), loadable as ``model.pretrained=FILE`` like a released CLIP — and
``FILE.json`` with the metrics. ``FILE.state.pt`` holds the training state every ``save_every`` steps
(atomic writes); a rerun with the same arguments resumes from it and deletes it at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vclip.errors import ConfigError
from vclip.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

#: the architecture ``vclip pretrain`` trains by default (vclip.backbone.config.CONFIGS)
DEFAULT_ARCH = "world-s"
DEFAULT_STEPS = 400
DEFAULT_BATCH = 64
DEFAULT_LR = 5e-4
DEFAULT_HARD_BATCHES = 0.0
ATTRIBUTES = ("colour_shape", "colour", "shape", "size", "texture", "position")


# ---------------------------------------------------------------------------------- data
def load_frames(world_dir) -> tuple[np.ndarray, list[dict]]:
    """``frames.npy`` (uint8 ``[N, H, W, 3]``) and the ``frames.jsonl`` entries of a world."""
    world = Path(world_dir)
    if not (world / "manifest.json").exists():
        raise ConfigError(f"{world}: not a generated world (no manifest.json); run `vclip data world {world}`")
    for name in ("frames.npy", "frames.jsonl"):
        if not (world / name).exists():
            raise ConfigError(f"{world / name}: missing (regenerate the world)")
    frames = np.load(world / "frames.npy", mmap_mode="r")
    entries = [json.loads(line) for line in (world / "frames.jsonl").read_text().splitlines() if line.strip()]
    if len(entries) != len(frames):
        raise ConfigError(f"{world}: frames.jsonl has {len(entries)} entries, frames.npy {len(frames)} frames")
    return frames, entries


def to_pixels(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → normalised float ``[N, 3, S, S]`` (vclip's ``imagenet`` preset)."""
    from vclip.data.transforms import NORM_PRESETS

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = NORM_PRESETS["imagenet"]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- zero-shot
def _prompts(o: dict) -> dict[str, tuple[list[str], int]]:
    """Per attribute: (candidate prompts, index of the true one) for one object's attributes."""
    from vclip.data.world import COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, where_phrase

    c, s = o["colour"], o["shape"]
    out = {
        "colour_shape": ([f"a {cc} {ss}" for cc in COLOURS for ss in SHAPES], list(COLOURS).index(c) * 4
                         + SHAPES.index(s)),
        "colour": ([f"a {cc} {s}" for cc in COLOURS], list(COLOURS).index(c)),
        "shape": ([f"a {c} {ss}" for ss in SHAPES], SHAPES.index(s)),
        "size": ([f"a {z} {c} {s}" for z in SIZES], SIZES.index(o["size"])),
        "texture": ([f"a {x} {c} {s}" for x in TEXTURES], TEXTURES.index(o["texture"])),
        "position": ([f"a {c} {s} {where_phrase(p)}" for p in POSITIONS], POSITIONS.index(o["position"])),
    }
    return out


@torch.no_grad()
def zero_shot_static(model, pixels: torch.Tensor, entries: list[dict], batch: int = 256) -> dict:
    """Zero-shot accuracy per static attribute on single-object frames (see the module docstring):
    ``{"accuracy": {attr: acc}, "chance": {attr: 1/n}, "frames": n}``."""
    from vclip.backbone.tokenizer import tokenize

    model.eval()
    keep = [i for i, e in enumerate(entries) if len(e["objects"]) == 1]
    if not keep:
        raise ConfigError("no single-object test frames to evaluate")
    img = torch.cat([model.encode_image(pixels[keep[i:i + batch]], normalize=True)
                     for i in range(0, len(keep), batch)])
    per = [_prompts(entries[i]["objects"][0]) for i in keep]
    texts = sorted({t for p in per for cands, _ in p.values() for t in cands})
    tok = tokenize(texts, context_length=model.config.text.context_length)
    txt = torch.cat([model.encode_text(tok[i:i + batch], normalize=True) for i in range(0, len(texts), batch)])
    row = {t: i for i, t in enumerate(texts)}
    acc, chance = {}, {}
    for attr in ATTRIBUTES:
        hits = 0
        for k, p in enumerate(per):
            cands, true = p[attr]
            scores = img[k] @ txt[[row[t] for t in cands]].T
            hits += int(scores.argmax()) == true
        acc[attr] = hits / len(per)
        chance[attr] = 1 / len(per[0][attr][0])
    return {"accuracy": acc, "chance": chance, "frames": len(per)}


# ------------------------------------------------------------------------------ training
def _lr(step: int, steps: int, lr: float) -> float:
    warm = max(1, int(0.1 * steps))
    if step < warm:
        return lr * (step + 1) / warm
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _optimizer(model, lr: float, fused: bool = True):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in n else no_decay).append(p)
    # the fused kernel (CPU and CUDA): the same update in one pass over each tensor, faster than the
    # default multi-tensor loop (benchmarks/pretrain_step_cost.py times the two setups)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


class UsedRows(torch.nn.Module):
    """Training-time stand-in for the text tower's token embedding that holds, as its parameter, only
    the rows of ``ids`` (the token ids the training captions use) — the default world's captions use
    27 of CLIP's 49,408 tokens. Exact: any other row gets a zero gradient in every step and no
    weight decay, so AdamW never moves it; training only the used rows gives the same model while
    skipping the dense gradient and the optimizer update of the whole table (most of the model's
    parameters). :meth:`write_back` puts the trained rows back into the full table."""

    def __init__(self, full: torch.nn.Embedding, ids: torch.Tensor):
        super().__init__()
        self.ids = ids
        self.weight = torch.nn.Parameter(full.weight.detach()[ids].clone())
        remap = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self.register_buffer("remap", remap, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.remap[tokens]
        if bool((rows < 0).any()):
            raise ValueError("a token id outside the training captions' vocabulary")
        return F.embedding(rows, self.weight)

    @torch.no_grad()
    def write_back(self, full: torch.nn.Embedding) -> torch.nn.Embedding:
        full.weight[self.ids] = self.weight.detach()
        return full


def contrastive_loss(model, pixels: torch.Tensor, tokens: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss of one batch (the module docstring's L), with :func:`caption_targets`."""
    img = model.encode_image(pixels, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.T
    target = caption_targets(caption_ids)  # symmetric: the same targets for both directions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def caption_targets(caption_ids: torch.Tensor) -> torch.Tensor:
    """The contrastive targets of a batch: row i uniform over the pairs whose caption equals caption
    i (the identity when every caption differs)."""
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def hard_groups(entries: list[dict]) -> list[np.ndarray]:
    """Positions (in ``entries``) of the single-object frames, grouped by (colour, size, texture):
    the pools of the hard batches. Groups of fewer than 2 frames are dropped."""
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(entries):
        if len(e["objects"]) == 1:
            o = e["objects"][0]
            groups.setdefault((o["colour"], o["size"], o["texture"]), []).append(i)
    return [np.array(v) for _, v in sorted(groups.items()) if len(v) >= 2]


def batch_indices(g: np.random.Generator, n: int, batch: int, hard_batches: float,
                  groups: list[np.ndarray]) -> np.ndarray:
    """The training positions of one step: with probability ``hard_batches`` (and when there are
    groups) up to ``batch`` frames of one (colour, size, texture) group, else ``batch`` frames drawn
    uniformly without replacement."""
    if groups and g.random() < hard_batches:
        pool = groups[int(g.integers(len(groups)))]
        return g.choice(pool, size=min(batch, len(pool)), replace=False)
    return g.choice(n, size=batch, replace=False)


def save_openai(model, path) -> Path:
    """``model``'s weights in OpenAI's layout (text tower at the top level), atomically."""
    from vclip.backbone.convert import vclip_to_openai

    sd = vclip_to_openai({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(sd, tmp)
    return path


def pretrain(world_dir, out_file, *, arch: str = DEFAULT_ARCH, steps: int = DEFAULT_STEPS, batch: int = DEFAULT_BATCH,
             lr: float = DEFAULT_LR, seed: int = 0, progress: bool = False, save_every: int = 100,
             eval_init: bool = True, hard_batches: float = DEFAULT_HARD_BATCHES, used_rows: bool = True) -> dict:
    """Train a CLIP of ``arch`` on the world's train frames and static captions; write ``out_file``
    (OpenAI layout) and ``out_file.json`` (metrics); return the metrics: ``zero_shot`` (per
    attribute accuracy), ``chance``, ``init_zero_shot`` (the same at random initialisation, when
    ``eval_init``), ``loss`` (mean of the last 50 steps), ``seconds``, ... Resumes from
    ``out_file.state.pt`` when its arguments match. ``used_rows`` trains the token embedding
    through :class:`UsedRows` (the same model, faster; ``False`` trains the whole table)."""
    from vclip.backbone.config import get_config
    from vclip.backbone.model import CLIP
    from vclip.backbone.tokenizer import tokenize

    if steps < 1 or batch < 2:
        raise ConfigError(f"pretrain needs steps >= 1 and batch >= 2, got steps={steps}, batch={batch}")
    out_file = Path(out_file)
    cfg = get_config(arch)
    frames, entries = load_frames(world_dir)
    train_idx = np.array([i for i, e in enumerate(entries) if e["split"] == "train"])
    test_idx = [i for i, e in enumerate(entries) if e["split"] == "test"]
    if not 0.0 <= hard_batches <= 1.0:
        raise ConfigError(f"pretrain: hard_batches must be in [0, 1], got {hard_batches}")
    if len(train_idx) < batch:
        raise ConfigError(f"{world_dir}: {len(train_idx)} training frames, fewer than the batch ({batch})")
    size = cfg.vision.image_size
    train_frames = np.ascontiguousarray(frames[train_idx])  # uint8, normalised per batch: 4x smaller than float32
    test_pix = to_pixels(frames[test_idx], size)
    test_entries = [entries[i] for i in test_idx]
    captions = [entries[i]["caption"] for i in train_idx]
    tokens = tokenize(captions, context_length=cfg.text.context_length)
    caption_index = {c: k for k, c in enumerate(sorted(set(captions)))}  # built once: 48k captions
    caption_ids = torch.tensor([caption_index[c] for c in captions])
    groups = hard_groups([entries[i] for i in train_idx])

    torch.manual_seed(seed)
    model = CLIP(cfg)
    args = {"world": str(Path(world_dir).resolve()), "arch": arch, "steps": steps, "batch": batch, "lr": lr,
            "seed": seed, **({"hard_batches": hard_batches} if hard_batches else {})}
    state_file = out_file.with_name(out_file.name + ".state.pt")
    start, losses, init_zs, spent = 0, [], None, 0.0
    st = None
    if state_file.exists():
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        if st.get("args") == args and st.get("used_rows", False) == used_rows:
            model.load_state_dict(st["model"])
            start, losses, init_zs, spent = st["step"], st["losses"], st["init_zero_shot"], st["seconds"]
            log.info("resuming %s from step %d", out_file, start)
        else:
            log.warning("%s: from a run with other arguments; starting afresh", state_file)
            st = None
    if eval_init and init_zs is None and start == 0:
        init_zs = zero_shot_static(model, test_pix, test_entries)
    full_table = model.text.token_embedding
    if used_rows:
        model.text.token_embedding = UsedRows(full_table, torch.unique(tokens))
    opt = _optimizer(model, lr)
    if st is not None:
        opt.load_state_dict(st["optimizer"])

    def full_state() -> dict:
        sd = model.state_dict()
        if used_rows:
            sd["text.token_embedding.weight"] = model.text.token_embedding.write_back(full_table).weight.detach()
        return sd
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="pretrain", unit="step")
    model.train()
    n = len(train_idx)
    for step in range(start, steps):
        g = np.random.default_rng([seed, step])  # the batch of a step depends on (seed, step) only: resumable
        pick = torch.from_numpy(batch_indices(g, n, batch, hard_batches, groups))
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        loss = contrastive_loss(model, to_pixels(train_frames[pick.numpy()], size), tokens[pick], caption_ids[pick])
        if not torch.isfinite(loss):
            raise ConfigError(f"pretrain: non-finite loss at step {step} (lower --lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            with atomic_write(state_file) as tmp:
                torch.save({"args": args, "used_rows": used_rows, "model": full_state(), "optimizer": opt.state_dict(),
                            "step": step + 1, "losses": losses, "init_zero_shot": init_zs,
                            "seconds": spent + time.perf_counter() - t0}, tmp)
    if bar is not None:
        bar.close()
    seconds = spent + time.perf_counter() - t0
    if used_rows:
        model.text.token_embedding = model.text.token_embedding.write_back(full_table)
    zs = zero_shot_static(model, test_pix, test_entries)
    save_openai(model, out_file)
    metrics = {
        "file": str(out_file), "layout": "openai", "arch": arch, "world": args["world"], "steps": steps,
        "batch": batch, "lr": lr, "seed": seed, "hard_batches": hard_batches, "train_frames": int(n), "test_frames": zs["frames"],
        "loss_first": float(np.mean(losses[:10])) if losses else None,
        "loss": float(np.mean(losses[-50:])) if losses else None, "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(), "zero_shot": zs["accuracy"], "chance": zs["chance"],
        "init_zero_shot": init_zs["accuracy"] if init_zs else None,
    }
    atomic_write_text(out_file.with_name(out_file.name + ".json"), json.dumps(metrics, indent=1))
    state_file.unlink(missing_ok=True)
    return metrics


# ------------------------------------------------------------------------------------- CLI
def format_metrics(m: dict) -> str:
    lines = [f"{'attribute':<13} {'zero-shot':>9} {'init':>6} {'chance':>7}"]
    for a in ATTRIBUTES:
        init = f"{100 * m['init_zero_shot'][a]:6.1f}" if m.get("init_zero_shot") else "     -"
        lines.append(f"{a:<13} {100 * m['zero_shot'][a]:8.1f}% {init} {100 * m['chance'][a]:6.1f}%")
    return "\n".join(lines)


def _cmd(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    m = pretrain(args.world, args.out, arch=args.arch, steps=args.steps, batch=args.batch, lr=args.lr,
                 seed=args.seed, progress=not args.quiet, hard_batches=args.hard_batches)
    print(format_metrics(m))
    print(f"wrote {m['file']} (OpenAI layout; model.pretrained={m['file']}) and {m['file']}.json in "
          f"{m['seconds']:.0f} s; final loss {m['loss']:.3f}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a small image-text CLIP on a world's still frames (static captions)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--world", required=True, metavar="OUT", help="a folder written by `vclip data world`")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file to write (OpenAI layout, .pt)")
    p.add_argument("--arch", default=DEFAULT_ARCH, help="architecture (vclip.backbone.config)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-batches", type=float, default=DEFAULT_HARD_BATCHES, metavar="F",
                   help="fraction of steps whose batch shares colour, size and texture (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd)
