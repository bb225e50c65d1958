"""The compositional video world (``vclip data world OUT``): small videos of one or two objects whose
*static* attributes any single frame shows and whose *actions* only time shows, with classes named by
composed phrases, laid out as four stand-in datasets in the annotation formats vclip reads, plus
still frames with static captions for pretraining a small CLIP (``vclip pretrain``).

Vocabulary
----------
Static attributes (one frame shows them): colour (red, green, blue, yellow), shape (circle, square,
triangle, star), size (small, large), texture (plain, striped), position (a 3 × 3 grid: top left …
bottom right). Every object carries a small contrasting dot off its centre, so rotation is visible
for every shape, and its stripes turn with it.

Actions (only time shows them), as (forward, backward) *order pairs* — a clip of the backward
member is a clip of the forward member played in reverse, frame for frame:

====================  ==============================
forward               backward
====================  ==============================
moving right          moving left
moving down           moving up
growing               shrinking
rotating clockwise    rotating counter-clockwise
appearing             disappearing
approaching           moving apart   (two objects)
====================  ==============================

and ``still`` (its own reverse; still clips are reversed with probability ½).

Classes
-------
A class is a composed action phrase: ``"<colour> <shape> <action>"`` for one object (``red circle
moving left``) and ``"two <shape>s <action>"`` for two objects of that shape and different colours
(``two squares moving apart``): 4 × 4 × 11 + 4 × 2 = 184 phrases. Size, texture, position and the
second colour vary within a class (nuisances) and appear only in the free-form captions.

Classes are dealt to datasets in *units*: an object (colour + shape, or two-of-a-shape) with an order
pair (both members) or with ``still``, so both members of every order pair always sit in the same
dataset, in the same base/novel half and in the same zero-shot draw. The source set gets a random
share of units that uses every word; the targets take some of its units (seen classes) and units it
lacks whose words it has (new classes: unseen combinations of seen words).

Time reversal
-------------
A clip is rendered from latent parameters at canonical times ``t_j = j / (F - 1)``; the backward
member renders frame ``i`` at ``j = F - 1 - i`` everywhere (objects and pixel noise; the background
is static), so ``render(backward, p) == render(forward, p)[::-1]`` exactly, and drawing a member
then ``p`` is drawing ``p``, then reversing with probability ½. A frame-order-blind model is at
chance within every pair by construction.

Layout of ``OUT``
-----------------
``<dataset>/videos/NNNNN.mp4`` (names hide the labels) and, per dataset, the protocol files:

* ``k400/``: ``labels.csv``, ``train.txt``, ``val.txt``, ``base_novel/`` (``base_labels.csv``,
  ``novel_labels.csv``, ``fs_base_s{1,2,3}_train.txt``, ``base_val.txt``, ``novel_val.txt``);
* ``ucf101/``, ``hmdb51/``: ``labels.csv``, ``train{1,2,3}.txt`` / ``test{1,2,3}.txt`` (three disjoint
  test folds), ``train1_few_shot_{K}.txt`` (K = 2, 4, 8, 16 up to the training videos per class),
  ``base_novel/`` (from split 1);
* ``k600/``: ``labels.csv`` (K400's classes, then the new ones), ``val.txt`` (videos of the new
  classes, labels in the full list), ``ZS_split{1,2,3}_K600_eval.txt`` + ``ZS_split{s}_K600.csv``
  (three seeded draws of ¾ of the new classes, re-indexed: the official zero-shot format);

``descriptors/ost_spatial.json`` and ``descriptors/ost_temporal.json`` (OST's per-class descriptors,
2 of each kind, written from each class's words: :func:`ost_descriptors`), ``spec.yaml`` (the
``vclip run --data`` spec of the four datasets, paths relative to it),
``videos.jsonl`` (every video: dataset, path, class, split folds, caption, attributes, seed,
reversed), ``frames.npy`` (uint8 ``[N, H, W, 3]`` still frames) with ``frames.jsonl`` (one line per
frame: ``index``, ``split`` train/test, static ``caption``, ``objects``' attributes), and
``manifest.json`` last (generator version, seed, size, counts, classes and order pairs per dataset,
SHA-256 of every other file). Every file is byte-reproducible from ``(seed, size)`` and does not
depend on ``--workers`` (x264 runs single-threaded with ``asm=0``, see :mod:`vclip.data.synthetic`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from vclip.data.synthetic import circle_coverage, map_jobs, polygon_coverage, regular_polygon, write_mp4
from vclip.data.synthetic import texture as background_texture
from vclip.errors import ConfigError
from vclip.io import atomic_write_bytes, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12), "green": (0.10, 0.72, 0.18), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.96, 0.86, 0.10),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
TEXTURES = ("plain", "striped")
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
#: the 3 × 3 position grid, row-major
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")

#: (forward, backward) actions: backward = forward played in reverse
ORDER_PAIRS: list[tuple[str, str]] = [
    ("moving right", "moving left"), ("moving down", "moving up"), ("growing", "shrinking"),
    ("rotating clockwise", "rotating counter-clockwise"), ("appearing", "disappearing"),
    ("approaching", "moving apart"),
]
TWO_OBJECT_ACTIONS = ("approaching", "moving apart")
SINGLE_ACTIONS = tuple(a for p in ORDER_PAIRS for a in p if a not in TWO_OBJECT_ACTIONS) + ("still",)
_BACKWARD = {b: f for f, b in ORDER_PAIRS}
_FORWARD = {f: b for f, b in ORDER_PAIRS}

#: generation sizes (``--size``)
WORLD_SIZES: dict[str, dict] = {
    # tests only: seconds to generate
    "tiny": {"image": 32, "frames": 4, "fps": 8, "k400_units": 8, "k600_new_units": 2, "ucf101_units": (2, 2),
             "hmdb51_units": (2, 1), "train_per_class": 2, "target_train_per_class": 2, "test_per_class": 1,
             "k600_per_class": 1,
             "frames_train": 600, "frames_test": 200},
    "quick": {"image": 32, "frames": 8, "fps": 8, "k400_units": 12, "k600_new_units": 4, "ucf101_units": (3, 3),
              "hmdb51_units": (2, 2), "train_per_class": 4, "target_train_per_class": 16, "test_per_class": 2,
              "k600_per_class": 2,
              "frames_train": 1200, "frames_test": 300},
    "default": {"image": 64, "frames": 16, "fps": 8, "k400_units": 50, "k600_new_units": 16,
                "ucf101_units": (12, 12), "hmdb51_units": (8, 8), "train_per_class": 16,
                "target_train_per_class": 16, "test_per_class": 4,
                "k600_per_class": 6, "frames_train": 8000, "frames_test": 1000},
}
DATASETS = ("k400", "ucf101", "hmdb51", "k600")
FEW_SHOTS = (2, 4, 8, 16)
B2N_SEEDS = (1, 2, 3)


def plural(shape: str) -> str:
    return shape + "s"


# ------------------------------------------------------------------------------ vocabulary
def class_name(obj: tuple[str, str] | str, action: str) -> str:
    """``("red", "circle"), "moving left"`` → ``red circle moving left``; a shape alone (two objects)
    → ``two circles approaching``."""
    if isinstance(obj, str):
        return f"two {plural(obj)} {action}"
    return f"{obj[0]} {obj[1]} {action}"


def units() -> list[dict]:
    """Every class unit (see the module docstring): ``{"obj", "actions", "classes", "words"}``."""
    out = []
    for shape in SHAPES:
        for colour in COLOURS:
            for f, b in ORDER_PAIRS:
                if f in TWO_OBJECT_ACTIONS:
                    continue
                out.append({"obj": [colour, shape], "actions": [f, b]})
            out.append({"obj": [colour, shape], "actions": ["still"]})
    for shape in SHAPES:
        out.append({"obj": shape, "actions": list(TWO_OBJECT_ACTIONS)})
    for u in out:
        obj = u["obj"] if isinstance(u["obj"], str) else tuple(u["obj"])
        u["classes"] = [class_name(obj, a) for a in u["actions"]]
        u["words"] = sorted({w for c in u["classes"] for w in c.split()})
    return out


def all_classes() -> list[str]:
    return [c for u in units() for c in u["classes"]]


def order_pairs_of(classes: list[str]) -> list[list[int]]:
    """``[forward_id, backward_id]`` pairs of ``classes`` (ids in that list)."""
    idx = {c: i for i, c in enumerate(classes)}
    out = []
    for c in classes:
        for f, b in ORDER_PAIRS:
            if c.endswith(" " + f):
                other = c[: -len(f)] + b
                if other in idx:
                    out.append([idx[c], idx[other]])
    return out


def parse_class(name: str) -> dict:
    """``{"two": bool, "colour": str | None, "shape": str, "action": str}`` of a class phrase."""
    for a in sorted(SINGLE_ACTIONS + TWO_OBJECT_ACTIONS, key=len, reverse=True):
        if name.endswith(" " + a):
            head = name[: -len(a) - 1].split()
            if head[0] == "two":
                return {"two": True, "colour": None, "shape": head[1][:-1], "action": a}
            return {"two": False, "colour": head[0], "shape": head[1], "action": a}
    raise ValueError(f"not a world class: {name!r}")


def assign_roles(size: str, seed: int) -> dict[str, list[int]]:
    """Unit ids per dataset role: ``k400``, ``k600_new`` (units K400 lacks), ``ucf101`` and
    ``hmdb51`` (seen units first, then new ones). Every word of every dataset's classes is a word of
    some K400 class."""
    cfg = WORLD_SIZES[size]
    us = units()
    rng = np.random.default_rng([seed, 14, 1])
    vocab = {w for u in us for w in u["words"]}
    for _ in range(10000):
        perm = rng.permutation(len(us)).tolist()
        k400 = sorted(perm[: cfg["k400_units"]])
        words = {w for i in k400 for w in us[i]["words"]}
        if size == "default" and words != vocab:
            continue
        rest = [i for i in perm[cfg["k400_units"]:] if set(us[i]["words"]) <= words]
        need = cfg["k600_new_units"] + cfg["ucf101_units"][1] + cfg["hmdb51_units"][1]
        if len(rest) < need:
            continue
        break
    else:  # pragma: no cover - the sizes above always find a draw
        raise ConfigError(f"world size {size!r}: no class assignment covers the vocabulary")
    k600_new = sorted(rest[: cfg["k600_new_units"]])
    pool = rest[cfg["k600_new_units"]:]
    roles = {"k400": k400, "k600_new": k600_new}
    seen_pool = rng.permutation(k400).tolist()
    for name in ("ucf101", "hmdb51"):
        n_seen, n_new = cfg[f"{name}_units"]
        # new units for the targets are drawn from units that are neither K400's nor K600's
        new = sorted(pool[:n_new])
        pool = pool[n_new:]
        seen = sorted(rng.choice(seen_pool, size=n_seen, replace=False).tolist())
        roles[name] = seen + new
    return roles


# ------------------------------------------------------------------------------ latent draw
def _object(rng, colour: str, shape: str, size: str | None = None, texture: str | None = None, m: int = 64) -> dict:
    size = size or SIZES[int(rng.integers(2))]
    texture = texture or TEXTURES[int(rng.integers(2))]
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    r = (0.10 if size == "small" else 0.15) * m * float(rng.uniform(0.92, 1.08))
    return {"colour": colour, "shape": shape, "size": size, "texture": texture, "rgb": rgb.tolist(),
            "radius": r, "angle0": float(rng.uniform(0, 2 * math.pi)), "stripe_phase": float(rng.uniform(0, 1)),
            "turn": 0.0, "scale": [1.0, 1.0], "fade": None}


def _cell_centre(rng, cell: int, h: int, w: int) -> list[float]:
    r, c = divmod(cell, 3)
    at = (0.22, 0.5, 0.78)  # inside the frame for the large size too
    return [(at[r] + rng.uniform(-0.04, 0.04)) * h, (at[c] + rng.uniform(-0.04, 0.04)) * w]


def sample_video(name: str, rng: np.random.Generator, h: int, w: int) -> dict:
    """Latent parameters of one clip of class ``name`` (forward member's motion; ``backward``
    tells the renderer to play it reversed)."""
    cls = parse_class(name)
    m = min(h, w)
    action = cls["action"]
    backward = action in _BACKWARD or (action == "still" and bool(rng.random() < 0.5))
    fwd = _BACKWARD.get(action, action)
    p = {"class": name, "action": action, "backward": backward, "bg_seed": int(rng.integers(2**31)),
         "noise_seed": int(rng.integers(2**31))}
    if cls["two"]:
        c1, c2 = rng.choice(list(COLOURS), size=2, replace=False).tolist()
        objs = [_object(rng, c1, cls["shape"], "small", m=m), _object(rng, c2, cls["shape"], "small", m=m)]
        centre = np.array([h / 2, w / 2]) + rng.uniform(-0.06, 0.06, 2) * m
        phi = float(rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])) + float(rng.uniform(-0.2, 0.2))
        u = np.array([math.sin(phi), math.cos(phi)])
        d0, d1 = 0.33 * m, 1.3 * max(o["radius"] for o in objs)  # half distances, far → near (approaching)
        for o, sgn in zip(objs, (1, -1)):
            o["p0"] = (centre + sgn * d0 * u).tolist()
            o["p1"] = (centre + sgn * d1 * u).tolist()
        p["objects"] = objs
        p["where"] = p["where_kind"] = None
        return p
    o = _object(rng, cls["colour"], cls["shape"], m=m)
    cell = int(rng.integers(9))
    c = _cell_centre(rng, cell, h, w)
    o["p0"] = o["p1"] = c
    where, kind = POSITIONS[cell], "cell"
    if fwd == "moving right":
        row = int(rng.integers(3))
        y = (0.22, 0.5, 0.78)[row] * h + rng.uniform(-0.04, 0.04) * h
        o["p0"], o["p1"] = [y, rng.uniform(0.18, 0.28) * w], [y, rng.uniform(0.72, 0.82) * w]
        where, kind = ROWS[row], "row"
    elif fwd == "moving down":
        col = int(rng.integers(3))
        x = (0.22, 0.5, 0.78)[col] * w + rng.uniform(-0.04, 0.04) * w
        o["p0"], o["p1"] = [rng.uniform(0.18, 0.28) * h, x], [rng.uniform(0.72, 0.82) * h, x]
        where, kind = COLS[col], "col"
    elif fwd == "growing":
        s0 = float(rng.uniform(0.6, 0.7))
        o["scale"] = [s0, s0 * float(rng.uniform(1.8, 2.0))]
    elif fwd == "rotating clockwise":
        o["turn"] = float(np.deg2rad(rng.uniform(50, 80)))  # clockwise on screen (y down), < 90°
    elif fwd == "appearing":
        o["fade"] = [float(rng.uniform(0.15, 0.45)), float(rng.uniform(0.15, 0.3))]
    p["objects"] = [o]
    p["where"], p["where_kind"] = where, kind
    return p


# ------------------------------------------------------------------------------- rendering
def _coverage(shape: str, c, r: float, ang: float, yy, xx) -> np.ndarray:
    if shape == "circle":
        return circle_coverage(c, r, yy, xx)
    if shape == "square":
        return polygon_coverage(regular_polygon(4, c, r * 1.1, ang + math.pi / 4), yy, xx)
    if shape == "triangle":
        return polygon_coverage(regular_polygon(3, c, r * 1.3, ang), yy, xx)
    if shape == "star":
        a = polygon_coverage(regular_polygon(3, c, r * 1.25, ang), yy, xx)
        b = polygon_coverage(regular_polygon(3, c, r * 1.25, ang + math.pi / 3), yy, xx)
        return np.maximum(a, b)
    raise ValueError(f"unknown shape {shape!r}")


def _paint(img: np.ndarray, o: dict, t: float, yy, xx) -> None:
    """Draw object ``o`` at canonical time ``t`` onto ``img`` in place."""
    c = (1 - t) * np.asarray(o["p0"]) + t * np.asarray(o["p1"])
    s = (1 - t) * o["scale"][0] + t * o["scale"][1]
    r = o["radius"] * s
    ang = o["angle0"] + t * o["turn"]
    alpha = 1.0
    if o["fade"] is not None:
        alpha = float(np.clip((t - o["fade"][0]) / o["fade"][1], 0, 1))
    if alpha <= 0:
        return
    cov = _coverage(o["shape"], c, r, ang, yy, xx) * alpha
    colour = np.asarray(o["rgb"], np.float32)
    fill = np.broadcast_to(colour, img.shape).copy()
    if o["texture"] == "striped":  # stripes fixed to the object: they move, scale and turn with it
        u = ((xx - c[1]) * math.cos(ang) + (yy - c[0]) * math.sin(ang)) / max(r, 1e-3)
        band = np.clip(2.5 * np.sin(2 * math.pi * (1.3 * u + o["stripe_phase"])), -1, 1) * 0.5 + 0.5
        fill *= (1 - 0.55 * band)[..., None]
    img *= 1 - cov[..., None]
    img += fill * cov[..., None]
    # the orientation dot: off-centre, contrasting, so every shape's rotation is visible
    dot = (c[0] + 0.5 * r * math.sin(ang), c[1] + 0.5 * r * math.cos(ang))
    dcov = circle_coverage(dot, max(0.7, 0.24 * r), yy, xx) * alpha
    mc = 0.05 if colour.mean() > 0.45 else 0.97
    img *= 1 - dcov[..., None]
    img += mc * dcov[..., None]


def _background(seed: int, h: int, w: int) -> np.ndarray:
    bg = background_texture(seed, h, w, contrast=0.6)
    return (0.55 * bg + 0.45 * bg.mean(-1, keepdims=True)).astype(np.float32)  # muted colours


def render_video(p: dict, h: int, w: int, frames: int) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``; frame ``i`` shows canonical time ``j = F-1-i`` when ``p["backward"]``."""
    bg = _background(p["bg_seed"], h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    out = np.empty((frames, h, w, 3), np.uint8)
    for i in range(frames):
        j = frames - 1 - i if p["backward"] else i
        t = j / (frames - 1)
        img = bg.copy()
        for o in p["objects"]:
            _paint(img, o, t, yy, xx)
        img += np.random.default_rng([p["noise_seed"], j]).normal(0, 0.012, img.shape).astype(np.float32)
        out[i] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------- captions
_MOTION = {
    "moving left": ["moves left", "slides to the left", "travels leftwards"],
    "moving right": ["moves right", "slides to the right", "travels rightwards"],
    "moving up": ["moves up", "rises", "travels upwards"],
    "moving down": ["moves down", "falls", "travels downwards"],
    "growing": ["grows", "gets bigger", "expands"],
    "shrinking": ["shrinks", "gets smaller", "contracts"],
    "rotating clockwise": ["rotates clockwise", "turns clockwise", "spins clockwise"],
    "rotating counter-clockwise": ["rotates counter-clockwise", "turns counter-clockwise",
                                   "spins counter-clockwise"],
    "appearing": ["appears", "fades in", "comes into view"],
    "disappearing": ["disappears", "fades out", "vanishes"],
    "still": ["stays still", "does not move", "sits still"],
    "approaching": ["move towards each other", "approach each other", "come together"],
    "moving apart": ["move apart", "move away from each other", "drift apart"],
}


def describe(o: dict, rng, drop: float = 0.3) -> str:
    """``large striped red circle`` with size / texture each dropped with probability ``drop``."""
    words = []
    if rng.random() >= drop:
        words.append(o["size"])
    if rng.random() >= drop:
        words.append(o["texture"])
    return " ".join(words + [o["colour"], o["shape"]])


def where_phrase(pos: str) -> str:
    return "in the centre" if pos == "centre" else f"at the {pos}"


def video_caption(p: dict, rng) -> str:
    verb = _MOTION[p["action"]][int(rng.integers(3))]
    objs = p["objects"]
    if len(objs) == 2:
        return f"a {describe(objs[0], rng)} and a {describe(objs[1], rng)} {verb}"
    text = f"a {describe(objs[0], rng)} {verb}"
    where, kind = p["where"], p.get("where_kind")
    if kind == "row":
        text += {"top": " along the top", "middle": " across the middle", "bottom": " along the bottom"}[where]
    elif kind == "col":
        text += {"left": " on the left side", "centre": " down the centre", "right": " on the right side"}[where]
    else:
        text += " " + where_phrase(where)
    return text


def static_caption(objs: list[dict], rng) -> str:
    """A caption with static words only (no motion): ``a large striped red circle at the top left``."""
    parts = []
    for o in objs:
        text = f"a {describe(o, rng)}"
        if rng.random() >= 0.2:
            text += " " + where_phrase(o["position"])
        parts.append(text)
    text = " and ".join(parts)
    return ("a photo of " + text) if rng.random() < 0.25 else text


def sample_frame(rng: np.random.Generator, h: int, w: int) -> dict:
    """One still scene: one object (80 %) or two in different cells, with its static caption."""
    m = min(h, w)
    n = 1 if rng.random() < 0.8 else 2
    cells = rng.choice(9, size=n, replace=False).tolist()
    objs = []
    for cell in cells:
        o = _object(rng, list(COLOURS)[int(rng.integers(4))], SHAPES[int(rng.integers(4))], m=m)
        o["p0"] = o["p1"] = _cell_centre(rng, cell, h, w)
        o["position"] = POSITIONS[cell]
        objs.append(o)
    return {"objects": objs, "bg_seed": int(rng.integers(2**31)), "noise_seed": int(rng.integers(2**31)),
            "caption": static_caption(objs, rng)}


def render_frame(f: dict, h: int, w: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of a still scene from :func:`sample_frame`."""
    p = {"objects": f["objects"], "bg_seed": f["bg_seed"], "noise_seed": f["noise_seed"], "backward": False}
    return render_video(p, h, w, 2)[0]


# ----------------------------------------------------------------------------- descriptors
_SHAPE_LOOK = {"circle": "round disc", "square": "shape with four equal sides and corners",
               "triangle": "shape with three corners", "star": "six-pointed star"}
_STAGES = {
    "moving left": ["it starts on the right", "it slides to the left", "it ends on the left",
                    "its position changes from right to left"],
    "moving right": ["it starts on the left", "it slides to the right", "it ends on the right",
                     "its position changes from left to right"],
    "moving up": ["it starts near the bottom", "it rises upwards", "it ends near the top",
                  "its position changes from bottom to top"],
    "moving down": ["it starts near the top", "it falls downwards", "it ends near the bottom",
                    "its position changes from top to bottom"],
    "growing": ["it starts small", "it gets bigger", "it ends large", "its size increases over time"],
    "shrinking": ["it starts large", "it gets smaller", "it ends small", "its size decreases over time"],
    "rotating clockwise": ["its dot starts on one side", "it turns clockwise", "its dot ends further clockwise",
                           "it turns the way a clock's hands do"],
    "rotating counter-clockwise": ["its dot starts on one side", "it turns counter-clockwise",
                                   "its dot ends further counter-clockwise", "it turns against a clock's hands"],
    "appearing": ["at first nothing is there", "it fades in", "at the end it is clearly visible",
                  "it becomes visible over time"],
    "disappearing": ["at first it is clearly visible", "it fades out", "at the end nothing is there",
                     "it becomes invisible over time"],
    "still": ["it stays in one place", "it does not move", "its size stays the same", "nothing changes over time"],
    "approaching": ["they start far apart", "they move towards each other", "they end close together",
                    "the gap between them shrinks"],
    "moving apart": ["they start close together", "they move away from each other", "they end far apart",
                     "the gap between them grows"],
}


def ost_descriptors(name: str) -> tuple[list[str], list[str]]:
    """(spatial, temporal) descriptors of a class, 2 each (``vclip suite`` runs OST with
    ``num_descriptors=2``; the paper's files have 4), written by hand from its words — the stand-in
    for OST's LLM-written ones: what it looks like; how the action unfolds, in order."""
    c = parse_class(name)
    s = c["shape"]
    if c["two"]:
        spatial = [f"two {plural(s)} of different colours", f"two {_SHAPE_LOOK[s]}s side by side"]
    else:
        spatial = [f"a {c['colour']} {s} with a small dot on it", f"a {c['colour']} {_SHAPE_LOOK[s]}"]
    st = _STAGES[c["action"]]
    return spatial, [f"{st[0]}, then {st[1]}", f"{st[2]}: {st[3]}"]


def ost_descriptor_files() -> dict[str, str]:
    """``descriptors/ost_spatial.json`` and ``descriptors/ost_temporal.json`` (vclip's descriptor
    format, every class of the vocabulary, matched by name) as ``{relpath: text}``."""
    names = all_classes()
    per = [ost_descriptors(n) for n in names]
    out = {}
    for i, (kind, tag) in enumerate((("spatial", "ost-spatio"), ("temporal", "ost-temporal"))):
        doc = {"format": "vclip-descriptors/1", "kind": tag, "num_per_class": 2,
               "generator": {"name": "vclip.data.world", "version": GENERATOR_VERSION},
               "class_names": names, "classes": {n: p[i] for n, p in zip(names, per)}}
        out[f"descriptors/ost_{kind}.json"] = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    return out


# ------------------------------------------------------------------------------ generation
def _video_job(args):
    p, h, w, frames, fps, path = args
    write_mp4(path, render_video(p, h, w, frames), fps, gop=8, crf=20)
    return None


def _frames_job(args):
    entries, h, w = args
    return np.stack([render_frame(e, h, w) for e in entries])


def _seed(*parts) -> int:
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0])


def _attrs(o: dict) -> dict:
    return {k: o[k] for k in ("colour", "shape", "size", "texture") if k in o} | (
        {"position": o["position"]} if "position" in o else {})


def _lines(records) -> str:
    return "".join(f"{path} {label}\n" for path, label in records)


def _labels_csv(names) -> str:
    import csv
    import io

    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(["id", "name"])
    for i, n in enumerate(names):
        wr.writerow([i, n])
    return buf.getvalue()


def _draw(rng, items: list, k: int) -> list:
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False).tolist())]


def _base_novel(ds_units: list[list[int]], classes: list[str], seed: int, name: str):
    """Base / novel class ids of a dataset: a seeded half of its units (pairs stay together)."""
    rng = np.random.default_rng([seed, 14, 2, DATASETS.index(name)])
    order = rng.permutation(len(ds_units)).tolist()
    nb = (len(ds_units) + 1) // 2
    base = sorted(c for i in order[:nb] for c in ds_units[i])
    novel = sorted(c for i in order[nb:] for c in ds_units[i])
    return base, novel


def world_config(size: str, pretrain_frames: int | None = None, train_per_class: int | None = None,
                 test_per_class: int | None = None) -> dict:
    """The generator's settings of a world of ``size`` with the given counts instead of the size's."""
    if size not in WORLD_SIZES:
        raise ConfigError(f"world size must be one of {', '.join(WORLD_SIZES)}, got {size!r}")
    cfg = dict(WORLD_SIZES[size])
    for key, name, value in (("frames_train", "--pretrain-frames", pretrain_frames),
                             ("train_per_class", "--train-per-class", train_per_class),
                             ("test_per_class", "--test-per-class", test_per_class)):
        if value is not None:
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
            cfg[key] = int(value)
    return cfg


def world_mismatch(out_dir, size: str = "quick", seed: int = 0, pretrain_frames: int | None = None,
                   train_per_class: int | None = None, test_per_class: int | None = None) -> str | None:
    """None when ``out_dir`` holds no world or the world these arguments make; else what it holds."""
    manifest = Path(out_dir) / "manifest.json"
    if not manifest.exists():
        return None
    cfg = world_config(size, pretrain_frames, train_per_class, test_per_class)
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{manifest}: unreadable ({e}); not a world made by `vclip data world`?") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{manifest}: expected a JSON object, got {type(old).__name__}")
    was = old.get("config") or {}
    if old.get("seed") == seed and old.get("size") == size and \
            all(was.get(k, cfg[k]) == cfg[k] for k in ("frames_train", "train_per_class", "test_per_class")):
        return None
    return (f"holds a world of size {old.get('size')!r} seed {old.get('seed')} with {was.get('frames_train')} "
            f"pretraining frames, {was.get('train_per_class')} source training videos and "
            f"{was.get('test_per_class')} test videos per class, not the one asked for (size {size!r} seed {seed} "
            f"with {cfg['frames_train']}, {cfg['train_per_class']} and {cfg['test_per_class']})")


def generate_world(out_dir, size: str = "quick", workers: int = 1, seed: int = 0, progress: bool = False,
                   pretrain_frames: int | None = None, train_per_class: int | None = None,
                   test_per_class: int | None = None) -> dict:
    """Write the world under ``out_dir`` (see the module docstring); returns a summary (counts,
    bytes, seconds, paths). The files depend on ``(size, seed, pretrain_frames, train_per_class,
    test_per_class)`` only, never on
    ``workers``. ``pretrain_frames``: the number of still training frames for pretraining instead
    of the size's (frame i is the same in every world of that seed; the test frames follow them).
    ``train_per_class``: training videos per class of the source set (``k400``) instead of the
    size's (16 for ``default``); the other sets keep the size's. ``test_per_class``: test videos per
    class of every set but ``k600`` (its own count) instead of the size's (4 for ``default``); a
    target set's three splits test three folds of that many of its videos per class (disjoint
    when its training count is at least twice the test count)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cfg = world_config(size, pretrain_frames, train_per_class, test_per_class)
    out = Path(out_dir)
    differs = world_mismatch(out, size, seed, pretrain_frames, train_per_class, test_per_class)
    if differs:
        raise ConfigError(f"{out}: {differs}; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    h = w = cfg["image"]
    F_ = cfg["frames"]
    us = units()
    global_ids = {c: i for i, c in enumerate(all_classes())}
    roles = assign_roles(size, seed)
    files: dict[str, str] = {}  # relpath -> text (protocol files)
    videos: list[dict] = []
    jobs = []
    info: dict = {}

    def unit_classes(ids):
        return [c for i in ids for c in us[i]["classes"]]

    k400_classes = unit_classes(roles["k400"])
    ds_classes = {"k400": k400_classes, "ucf101": unit_classes(roles["ucf101"]),
                  "hmdb51": unit_classes(roles["hmdb51"]),
                  "k600": k400_classes + unit_classes(roles["k600_new"])}
    nte = cfg["test_per_class"]
    for d_i, name in enumerate(DATASETS):
        classes = ds_classes[name]
        ntr = cfg["train_per_class"] if name == "k400" else cfg["target_train_per_class"]
        if name == "k600":
            made = unit_classes(roles["k600_new"])
            per = cfg["k600_per_class"]
        else:
            made = classes
            per = ntr + nte
        plan = []  # (label, k)
        for c in made:
            for k in range(per):
                plan.append((classes.index(c), k))
        order = np.random.default_rng([seed, 14, 3, d_i]).permutation(len(plan))
        by_class: dict[int, list] = {}
        for file_no, pi in enumerate(order):
            label, k = plan[pi]
            cname = classes[label]
            vseed = _seed(seed, d_i, global_ids[cname], k)
            rng = np.random.default_rng(vseed)
            p = sample_video(cname, rng, h, w)
            rel = f"videos/{file_no:05d}.mp4"
            jobs.append((p, h, w, F_, cfg["fps"], out / name / rel))
            v = {"dataset": name, "path": f"{name}/{rel}", "label": label, "class": cname, "index": k,
                 "caption": video_caption(p, rng), "seed": vseed, "reversed": bool(p["backward"]),
                 "objects": [_attrs(o) for o in p["objects"]], "where": p["where"], "where_kind": p["where_kind"]}
            videos.append(v)
            by_class.setdefault(label, []).append((k, rel))
        for lst in by_class.values():
            lst.sort()
        present = sorted(by_class)
        info[name] = {"classes": classes, "order_pairs": order_pairs_of(classes),
                      "videos": len(plan)}
        files[f"{name}/labels.csv"] = _labels_csv(classes)
        if name == "k600":
            new_ids = [classes.index(c) for c in made]
            files["k600/val.txt"] = _lines((rel, lab) for lab in present for _, rel in by_class[lab])
            new_units = roles["k600_new"]
            n_draw = max(1, round(0.75 * len(new_units)))
            for s in (1, 2, 3):
                pick = _draw(np.random.default_rng([seed, 14, 600, s]), new_units, n_draw)
                names = [c for c in classes if c in set(unit_classes(pick))]
                idx = {c: i for i, c in enumerate(names)}
                files[f"k600/ZS_split{s}_K600.csv"] = _labels_csv(names)
                files[f"k600/ZS_split{s}_K600_eval.txt"] = _lines(
                    (rel, idx[classes[lab]]) for lab in present if classes[lab] in idx for _, rel in by_class[lab])
            info[name]["new_classes"] = [classes[i] for i in new_ids]
            info[name]["zero_shot_draw_classes"] = sum(len(us[u]["classes"]) for u in new_units[:n_draw])
            continue
        seen = set(k400_classes)
        info[name]["new_classes"] = [c for c in classes if c not in seen] if name != "k400" else []
        # folds: split s tests videos k with (k - (s-1)*nte) mod per < nte (three disjoint folds)
        folds = {}
        nsplits = 1 if name == "k400" else 3
        for s in range(1, nsplits + 1):
            tr, te = [], []
            for lab in present:
                for k, rel in by_class[lab]:
                    ((te if (k - (s - 1) * nte) % per < nte else tr)).append((rel, lab))
            folds[s] = (tr, te)
        if name == "k400":
            files["k400/train.txt"], files["k400/val.txt"] = _lines(folds[1][0]), _lines(folds[1][1])
        else:
            for s, (tr, te) in folds.items():
                files[f"{name}/train{s}.txt"], files[f"{name}/test{s}.txt"] = _lines(tr), _lines(te)
            info[name]["few_shot"] = []
            for K in FEW_SHOTS:
                if K > ntr:
                    continue
                rng = np.random.default_rng([seed, 14, 4, d_i, K])
                picked = []
                for lab in present:
                    vids = [r for r in folds[1][0] if r[1] == lab]
                    picked += _draw(rng, vids, K)
                files[f"{name}/train1_few_shot_{K}.txt"] = _lines(picked)
                info[name]["few_shot"].append(K)
        # base-to-novel from split 1
        ds_units = [[classes.index(c) for c in us[u]["classes"]] for u in roles[name]]
        base, novel = _base_novel(ds_units, classes, seed, name)
        bi, ni = {c: i for i, c in enumerate(base)}, {c: i for i, c in enumerate(novel)}
        files[f"{name}/base_novel/base_labels.csv"] = _labels_csv([classes[c] for c in base])
        files[f"{name}/base_novel/novel_labels.csv"] = _labels_csv([classes[c] for c in novel])
        tr, te = folds[1]
        files[f"{name}/base_novel/base_val.txt"] = _lines((r, bi[lab]) for r, lab in te if lab in bi)
        files[f"{name}/base_novel/novel_val.txt"] = _lines((r, ni[lab]) for r, lab in te if lab in ni)
        shots = min(16, ntr)
        for s in B2N_SEEDS:
            rng = np.random.default_rng([seed, 14, 5, d_i, s])
            picked = []
            for lab in base:
                picked += [(r, bi[lab]) for r, _ in _draw(rng, [x for x in tr if x[1] == lab], shots)]
            files[f"{name}/base_novel/fs_base_s{s}_train.txt"] = _lines(picked)
        info[name]["base_novel"] = {"base": len(base), "novel": len(novel), "shots": shots}
        info[name]["train_per_class"], info[name]["test_per_class"] = ntr, nte

    # still frames for pretraining
    n_fr = cfg["frames_train"] + cfg["frames_test"]
    frame_entries = []
    for i in range(n_fr):
        f = sample_frame(np.random.default_rng(_seed(seed, 99, i)), h, w)
        f["split"] = "train" if i < cfg["frames_train"] else "test"
        frame_entries.append(f)
    chunk = 100
    fjobs = [(frame_entries[i:i + chunk], h, w) for i in range(0, n_fr, chunk)]

    for f in ("manifest.json",):
        (out / f).unlink(missing_ok=True)  # written last: its presence marks a complete world
    results = map_jobs(_video_job, jobs, workers, progress, "world videos")
    del results
    arrays = map_jobs(_frames_job, fjobs, workers, progress and len(fjobs) > 1, "world frames", chunksize=1,
                      unit="chunk")
    frames = np.concatenate(arrays)
    import io

    buf = io.BytesIO()
    np.save(buf, frames, allow_pickle=False)
    atomic_write_bytes(out / "frames.npy", buf.getvalue())
    files["frames.jsonl"] = "".join(json.dumps(
        {"index": i, "split": f["split"], "caption": f["caption"], "objects": [_attrs(o) for o in f["objects"]]})
        + "\n" for i, f in enumerate(frame_entries))
    files["videos.jsonl"] = "".join(json.dumps(v) + "\n" for v in videos)
    files.update(ost_descriptor_files())
    files["spec.yaml"] = _spec_yaml(info)
    for rel, text in files.items():
        atomic_write_text(out / rel, text)
    shas = {}
    for rel in sorted(list(files) + ["frames.npy"] + [v["path"] for v in videos]):
        shas[rel] = sha256_file(out / rel)
    manifest = {
        "generator": "vclip.data.world", "version": GENERATOR_VERSION, "seed": seed, "size": size,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES),
                       "textures": list(TEXTURES), "positions": list(POSITIONS),
                       "actions": list(SINGLE_ACTIONS) + list(TWO_OBJECT_ACTIONS),
                       "order_pairs": [list(p) for p in ORDER_PAIRS]},
        "counts": {"videos": len(videos), "frames": n_fr, "frames_train": cfg["frames_train"],
                   "frames_test": cfg["frames_test"],
                   **{f"{d}_classes": len(info[d]["classes"]) for d in DATASETS},
                   **{f"{d}_videos": info[d]["videos"] for d in DATASETS}},
        "datasets": info,
        "files": shas,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    nbytes = sum((out / rel).stat().st_size for rel in shas)
    return {"out": str(out), "videos": len(videos), "frames": n_fr, "bytes": nbytes,
            "seconds": time.perf_counter() - t0, "counts": manifest["counts"], "spec": str(out / "spec.yaml")}


def _spec_yaml(info: dict) -> str:
    lines = ["# vclip run --data spec of a generated world (vclip data world); paths relative to this file.",
             "datasets:",
             "  k400:", "    root: k400", "    labels: k400/labels.csv", "    train: k400/train.txt",
             "    val: k400/val.txt"]

    def bn(name):
        return ["    base_novel:", f"      base_labels: {name}/base_novel/base_labels.csv",
                f"      novel_labels: {name}/base_novel/novel_labels.csv",
                f"      train: {name}/base_novel/fs_base_s{{seed}}_train.txt",
                f"      base_val: {name}/base_novel/base_val.txt", f"      novel_val: {name}/base_novel/novel_val.txt"]

    lines += bn("k400")
    for name in ("ucf101", "hmdb51"):
        lines += [f"  {name}:", f"    root: {name}", f"    labels: {name}/labels.csv", "    splits:"]
        lines += [f"      {s}: {{train: {name}/train{s}.txt, test: {name}/test{s}.txt}}" for s in (1, 2, 3)]
        lines += [f"    few_shot: {name}/train1_few_shot_{{shots}}.txt"]
        lines += bn(name)
    lines += ["  k600:", "    root: k600", "    labels: k600/labels.csv", "    val: k600/val.txt", "    zero_shot:",
              "      split: k600/ZS_split{split}_K600_eval.txt", "      labels: k600/ZS_split{split}_K600.csv",
              "    pools: [{list: k600/val.txt, prefix: \"\"}]"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- CLI
def _cmd_world(args) -> int:
    s = generate_world(args.out, size=args.size, workers=args.workers, seed=args.seed, progress=not args.quiet,
                       pretrain_frames=args.pretrain_frames, train_per_class=args.train_per_class,
                       test_per_class=args.test_per_class)
    c = s["counts"]
    print(f"wrote the world ({args.size}, seed {args.seed}) to {s['out']}: {s['videos']} videos "
          f"(k400 {c['k400_classes']} classes, ucf101 {c['ucf101_classes']}, hmdb51 {c['hmdb51_classes']}, "
          f"k600 {c['k600_classes']}), {s['frames']} still frames, {s['bytes'] / 1e6:.1f} MB in "
          f"{s['seconds']:.1f} s; spec: {s['spec']}")
    return 0


def register_cli(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "world", help="write the compositional video world (4 stand-in datasets + still frames for pretraining)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--size", default="default", choices=list(WORLD_SIZES),
                   help="quick: 32 px, 8 frames, ~460 videos (CI); default: 64 px, 16 frames, ~3500 videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="parallel processes (default: min(4, CPUs)); the files do not depend on it")
    p.add_argument("--pretrain-frames", type=int, default=None, metavar="N",
                   help="still training frames for `vclip pretrain` (default: the size's, 8000 for default)")
    p.add_argument("--train-per-class", type=int, default=None, metavar="N",
                   help="training videos per class of the source set k400 (default: the size's, 16 for default)")
    p.add_argument("--test-per-class", type=int, default=None, metavar="N",
                   help="test videos per class of k400, ucf101 and hmdb51 (default: the size's, 4 for default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_world)
