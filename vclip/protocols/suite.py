"""``vclip suite``: the methods × protocols table on the synthetic world (docs/suite.md).

One command fills the table every paper prints, from one pretrained small CLIP:

* rows: CLIP-mean **zero-shot** (the pretrained CLIP, no training: the baseline row), then every
  method registered in :data:`vclip.methods.METHODS` (a method that lands later gets its row
  without any change here), each fine-tuned from the same pretrained file;
* cells: the four protocols, run by the protocols' own runners (:mod:`vclip.protocols.runner`, what
  ``vclip run`` calls): fully-supervised on the source set (``k400``), zero-shot ``k400`` → targets,
  few-shot K = 2/4/8/16 on one target, base-to-novel on each set;
* budgets (steps/epochs), seeds, frames and sizes come from a suite config file
  (``configs/suite/{quick,default}.yaml``).

Every cell is saved atomically as ``OUT/cells/<row>__<protocol>.json`` once it finishes; a rerun
skips finished cells (and, inside an interrupted cell, the runner's finished sub-runs), so an
interrupted suite continues where it stopped. A cell a method cannot run because an asset it needs
is missing (OST's descriptor files) is recorded as *skipped* with the reason; a cell that fails is
recorded as *failed* with the error and retried by the next run. The zero-shot cell of a method
evaluates the checkpoint its fully-supervised cell trained on ``k400`` (the papers' zero-shot model
*is* the K400-trained one); without that cell it trains the same model itself.

A finished cell's training checkpoints are pruned (:meth:`Suite.prune_run`): every optimizer state
goes, and every model but the fully-supervised one the zero-shot cell evaluates (one per method),
so that a suite holds a few hundred MB rather than GBs (``--keep-checkpoints`` keeps them all).

Outputs: ``OUT/suite.md`` (tables, mean ± std over the protocol's splits/seeds/draws, chance row),
``OUT/suite.json`` (every figure with the ``vclip run`` command that reproduces it, the machine,
date and git commit) and ``OUT/suite.png``.

When ``--world``/``--pretrained`` are not given, the world (:func:`vclip.data.world.generate_world`)
and the pretrained CLIP (:func:`vclip.pretrain.pretrain`) are made under ``OUT/`` first, and reused
by a rerun while the config's ``world``/``pretrain`` sections still ask for them (else an error). The
cells' keys hold the world manifest's and the weight file's SHA-256, so new content at the same
path recomputes them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from vclip.errors import ConfigError, TrainingInterrupted, VclipError
from vclip.io import atomic_write_bytes, atomic_write_text, sha256_file
from vclip.protocols import aggregate

log = logging.getLogger(__name__)

FORMAT = "vclip-suite/1"
#: the suite configs shipped with vclip (``--quick`` selects the first)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "suite"
#: the row of the pretrained CLIP evaluated without training
BASELINE = "clip-zero-shot"
BASELINE_LABEL = "CLIP-mean zero-shot (no training)"
#: the order of the protocols in the tables
ORDER = ("fully_supervised", "zero_shot", "few_shot", "base_to_novel")
TITLES = {"fully_supervised": "Fully-supervised", "zero_shot": "Zero-shot", "few_shot": "Few-shot",
          "base_to_novel": "Base-to-novel"}
#: the keys a suite config may hold
CONFIG_KEYS = {"world", "pretrain", "arch", "cache", "token_merging", "run", "methods", "protocols"}
#: the options of the ``world`` section (:func:`vclip.data.world.generate_world`'s)
WORLD_KEYS = {"size", "seed", "train_per_class", "test_per_class", "pretrain_frames"}
PROTOCOL_KEYS = {
    "fully_supervised": {"dataset", "views", "overrides"},
    "zero_shot": {"train_dataset", "datasets", "k600_seeds", "k600_classes", "overrides"},
    "few_shot": {"dataset", "shots", "seeds", "overrides"},
    "base_to_novel": {"datasets", "seeds", "shots", "overrides"},
}


# ------------------------------------------------------------------------------- config
def config_path(quick: bool, path: str | None = None) -> Path:
    if path:
        return Path(path)
    p = CONFIG_DIR / ("quick.yaml" if quick else "default.yaml")
    if not p.is_file():
        raise ConfigError(f"the suite config {p.name} ships in the repository's configs/suite/, not found at {p} "
                          "(vclip installed without its repository?): pass --config FILE")
    return p


def load_suite_config(path) -> dict:
    """The suite config at ``path``, checked: unknown keys, protocols and protocol options are
    errors naming the file and the key."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"suite config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"suite config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"suite config {path}: expected a mapping of {sorted(CONFIG_KEYS)}")
    bad = sorted(set(cfg) - CONFIG_KEYS)
    if bad:
        raise ConfigError(f"suite config {path}: unknown key {bad[0]!r} (known: {', '.join(sorted(CONFIG_KEYS))})")
    protocols = cfg.get("protocols") or {}
    for name, opts in protocols.items():
        if name not in PROTOCOL_KEYS:
            raise ConfigError(f"suite config {path}: protocols.{name}: unknown protocol "
                              f"(known: {', '.join(PROTOCOL_KEYS)})")
        extra = sorted(set(opts or {}) - PROTOCOL_KEYS[name])
        if extra:
            raise ConfigError(f"suite config {path}: protocols.{name}.{extra[0]}: unknown option "
                              f"(known: {', '.join(sorted(PROTOCOL_KEYS[name]))})")
    world = cfg.get("world") or {}
    bad = sorted(set(world) - WORLD_KEYS) if isinstance(world, dict) else ["(not a mapping)"]
    if bad:
        raise ConfigError(f"suite config {path}: world.{bad[0]}: unknown option (known: {', '.join(sorted(WORLD_KEYS))})")
    tm = cfg.get("token_merging")
    if tm is not None and not (isinstance(tm, dict) and set(tm) == {"r"} and isinstance(tm["r"], int)
                               and not isinstance(tm["r"], bool) and tm["r"] >= 1):
        raise ConfigError(f"suite config {path}: token_merging: expected {{r: N}} with an integer N >= 1 "
                          f"(tokens merged per image-tower block), got {tm!r}")
    for name, over in (cfg.get("methods") or {}).items():
        if not isinstance(over, list) or not all(isinstance(o, str) and "=" in o for o in over):
            raise ConfigError(f"suite config {path}: methods.{name}: expected a list of KEY=VALUE overrides")
    return cfg


# ------------------------------------------------------------------------------- cells
@dataclass
class Row:
    name: str                 # file-name key: a method name or BASELINE
    method: str               # the registered method it runs
    label: str                # what the tables print
    eval_only: bool = False


@dataclass
class Cell:
    row: Row
    protocol: str

    @property
    def name(self) -> str:
        return f"{self.row.name}__{self.protocol}"


def chance_columns(protocol: str, result: dict) -> dict[str, dict]:
    """The figures of one protocol result as ``{column: {"mean", "std", "n", "values", "chance"}}``
    (fractions). ``chance`` is the accuracy of a uniform guess: 1/K for top-1 (K the classes of the
    test set; averaged over splits/draws/seeds where K varies), min(5, K)/K for top-5, and for HM
    the harmonic mean of the base and novel chances. HM's ``mean`` is the HM of the seed-averaged
    base and novel accuracies (the papers'), its ``std`` that of the per-seed HMs."""
    s = result["summary"]
    evals = [v for v in result.get("sub_runs", {}).values() if v.get("kind") == "eval"]

    def classes(**match) -> list[int]:
        ks = [int(v["num_classes"]) for v in evals
              if all(str(v.get(k)) == str(m) for k, m in match.items()) and v.get("num_classes")]
        return ks

    def chance(ks: list[int], top: int = 1) -> float | None:
        return sum(min(top, k) / k for k in ks) / len(ks) if ks else None

    def stat(values: Sequence[float], ch: float | None, mean: float | None = None) -> dict:
        ms = aggregate.mean_std(values)
        return {"mean": ms["mean"] if mean is None else mean, "std": ms["std"], "n": ms["n"],
                "values": ms["values"], "chance": ch}

    out: dict[str, dict] = {}
    name = aggregate.DISPLAY.get
    if protocol == "fully_supervised":
        for ds, views in s.items():
            for view, m in views.items():
                ks = classes(dataset=ds)
                out[f"{name(ds, ds)} {view} top-1"] = stat([m["top1"]], chance(ks))
                if m.get("top5") is not None:
                    out[f"{name(ds, ds)} {view} top-5"] = stat([m["top5"]], chance(ks, 5))
    elif protocol == "zero_shot":
        for ds, st in s.items():
            out[name(ds, ds)] = stat(st["values"], chance(classes(dataset=ds)))
    elif protocol == "few_shot":
        for ds, by_k in s.items():
            for k, st in sorted(by_k.items(), key=lambda kv: int(kv[0])):
                out[f"{name(ds, ds)} K={k}"] = stat(st["values"], chance(classes(dataset=ds, shots=k)))
    elif protocol == "base_to_novel":
        for ds, v in s.items():
            cb, cn = chance(classes(dataset=ds, classes="base")), chance(classes(dataset=ds, classes="novel"))
            out[f"{name(ds, ds)} base"] = stat(v["base"]["values"], cb)
            out[f"{name(ds, ds)} novel"] = stat(v["novel"]["values"], cn)
            hm_c = aggregate.harmonic_mean(cb, cn) if cb is not None and cn is not None else None
            out[f"{name(ds, ds)} HM"] = stat(list(v["hm_per_seed"].values()), hm_c, mean=v["hm"])
    else:
        raise ConfigError(f"unknown protocol {protocol!r}")
    return out


def token_merging_columns(tm: dict, columns: dict[str, dict]) -> dict[str, dict]:
    """The ``<set> <view> top-1 ToMe r=R`` columns of a fully-supervised cell's token-merging
    evaluation (:meth:`Suite.token_merging_eval`), with the chance of the plain top-1 column."""
    out: dict[str, dict] = {}
    if tm.get("skipped"):
        return out
    r, ds = tm["r"], tm["dataset"]
    for view, m in (tm.get(f"r{r}") or {}).get("summary", {}).items():
        plain = columns.get(f"{aggregate.DISPLAY.get(ds, ds)} {view} top-1") or {}
        out[f"{aggregate.DISPLAY.get(ds, ds)} {view} top-1 ToMe r={r}"] = {
            "mean": m["top1"], "std": 0.0, "n": 1, "values": [m["top1"]], "chance": plain.get("chance")}
    return out


def headline(protocol: str, columns: dict[str, dict]) -> tuple[str, float | None, float | None]:
    """One figure per protocol for the overview table: (what it is, value, chance)."""
    def avg(cols: list[str]) -> tuple[float | None, float | None]:
        if not cols:
            return None, None
        ch = [columns[c]["chance"] for c in cols]
        return (sum(columns[c]["mean"] for c in cols) / len(cols),
                sum(ch) / len(ch) if all(x is not None for x in ch) else None)

    if protocol == "fully_supervised":
        cols = [c for c in columns if c.endswith("top-1")][:1]
        return (cols[0] if cols else "top-1"), *avg(cols)
    if protocol == "zero_shot":
        return "mean over targets", *avg(list(columns))
    if protocol == "few_shot":
        ks = [c for c in columns if " K=" in c]
        last = max(ks, key=lambda c: int(c.rsplit("=", 1)[1])) if ks else None
        return (last or "K"), *avg([last] if last else [])
    if protocol == "base_to_novel":
        return "HM, mean over sets", *avg([c for c in columns if c.endswith(" HM")])
    raise ConfigError(f"unknown protocol {protocol!r}")


def within_pair(confusion: Sequence[Sequence[int]], pairs: Sequence[Sequence[int]]) -> tuple[float | None, int]:
    """Order-pair accuracy of a confusion matrix (rows = true class, columns = predicted): over the
    videos of a pair's classes predicted as one of the pair's two classes, the fraction predicted as
    their own class,

        sum_{(a,b)} (C[a,a] + C[b,b]) / sum_{(a,b)} (C[a,a] + C[a,b] + C[b,b] + C[b,a]),

    and that denominator (the videos it is computed on). A model blind to frame order cannot tell a
    clip from its reversal: 0.5 expected. ``(None, 0)`` where no video falls within its pair."""
    right = within = 0
    for a, b in {tuple(sorted((int(x), int(y)))) for x, y in pairs}:
        right += confusion[a][a] + confusion[b][b]
        within += confusion[a][a] + confusion[a][b] + confusion[b][b] + confusion[b][a]
    return (right / within if within else None), int(within)


def pair_columns(cell: dict, run_dir: Path, world: Path) -> dict[str, dict]:
    """The ``<set> <view> within pair`` columns of a finished fully-supervised cell, computed from
    its evaluations' confusion matrices (``run_dir/sup_<set>_<view>/results_eval.json``) and the
    world manifest's ``order_pairs`` of the set; ``{}`` where either is missing (a world without
    order pairs, a confusion matrix over other classes) or no video falls within its pair. Computed
    when the tables are written, so cells finished before this column existed get it too."""
    if cell.get("protocol") != "fully_supervised" or cell.get("status") != "done":
        return {}
    try:
        sets = json.loads((Path(world) / "manifest.json").read_text()).get("datasets") or {}
    except (OSError, ValueError):
        return {}
    out: dict[str, dict] = {}
    for ds, views in (cell.get("summary") or {}).items():
        info = sets.get(ds) or {}
        if not info.get("order_pairs"):
            continue
        for view in views:
            try:
                ev = json.loads((Path(run_dir) / f"sup_{ds}_{view}" / "results_eval.json").read_text())
            except (OSError, ValueError):
                continue
            conf = ev.get("confusion")
            if not conf or list(ev.get("per_class") or info["classes"]) != list(info["classes"]) \
                    or len(conf) != len(info["classes"]):
                log.warning("%s: no confusion matrix over the manifest's %s classes; no within-pair figure",
                            cell.get("cell"), ds)
                continue
            acc, n = within_pair(conf, info["order_pairs"])
            if acc is not None:
                out[f"{aggregate.DISPLAY.get(ds, ds)} {view} within pair"] = {
                    "mean": acc, "std": 0.0, "n": 1, "values": [acc], "chance": 0.5, "videos": n}
    return out


# ------------------------------------------------------------------------------ machine
def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def git_commit() -> str | None:
    """The commit of the vclip checkout (``+dirty`` when it has changes); None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -------------------------------------------------------------------------------- suite
@dataclass
class Suite:
    """One ``vclip suite`` output folder. ``world``/``pretrained`` None: made under ``out``."""

    out: Path
    config_file: Path
    world: Path | None = None
    pretrained: Path | None = None
    methods: Sequence[str] | None = None
    protocols: Sequence[str] | None = None
    workers: int = 1
    progress: bool = True
    argv: Sequence[str] | None = None
    overrides: Sequence[str] = ()
    keep_checkpoints: bool = False

    def __post_init__(self):
        from vclip.methods import METHODS
        from vclip.protocols.runner import protocol_name

        self.out = Path(self.out)
        self.config_file = Path(self.config_file)
        self.cfg = load_suite_config(self.config_file)
        known = list(METHODS)
        if self.methods:
            bad = [m for m in self.methods if m not in known]
            if bad:
                raise ConfigError(f"--methods: unknown method {bad[0]!r} (registered: {', '.join(known)})")
        self.method_names = [m for m in known if not self.methods or m in self.methods]
        self.protocol_names = [p for p in ORDER if p in {protocol_name(x) for x in (self.protocols or ORDER)}]
        for p in self.protocol_names:
            if p not in (self.cfg.get("protocols") or {}):
                raise ConfigError(f"suite config {self.config_file}: protocols.{p} is missing")
        self.rows = [Row(BASELINE, "clip", BASELINE_LABEL, eval_only=True)]
        self.rows += [Row(m, m, m) for m in self.method_names]
        self.machine = machine()
        self.commit = git_commit()

    # ------------------------------------------------------------------ world and weights
    def prepare(self) -> None:
        """The world and the pretrained CLIP: given, found under OUT from an earlier run, or made."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.world_info: dict = {}
        self.pretrain_info: dict = {}
        if self.world is None:
            self.world = self.out / "world"
            wc = self.cfg.get("world") or {}
            asked = {"size": wc.get("size", "default"), "seed": int(wc.get("seed", 0)),
                     **{k: int(wc[k]) for k in ("train_per_class", "test_per_class", "pretrain_frames")
                        if wc.get(k) is not None}}
            if not (self.world / "spec.yaml").is_file() or not (self.world / "manifest.json").is_file():
                gen = _contract("vclip.data.world", "generate_world", "--world")
                print(f"suite: generating the world in {self.world} (size {asked['size']})", flush=True)
                self.world_info = gen(self.world, workers=self.workers, **asked) or {}
            else:  # made by an earlier run: still the world this config asks for?
                differs = _contract("vclip.data.world", "world_mismatch", "--world")(self.world, **asked)
                if differs:
                    raise ConfigError(
                        f"{self.world}: {differs}, by the `world` section of {self.config_file}. The cells "
                        f"under {self.out} were computed in that world: pass another --out, or delete "
                        f"{self.world}, {self.out / 'cache'} and {self.out / 'pretrained'} to remake them")
        self.world = Path(self.world).resolve()
        self.spec = self.world / "spec.yaml"
        if not self.spec.is_file():
            raise ConfigError(f"--world {self.world}: no spec.yaml (a world made by `vclip data world`?)")
        self.world_spec = self.spec
        if self.cfg.get("cache", True):
            self.spec = self.frame_cache()
        if self.pretrained is None:
            self.pretrained = self.out / "pretrained" / "clip.pt"
            pc = dict(self.cfg.get("pretrain") or {})
            if not self.pretrained.is_file():
                pre = _contract("vclip.pretrain", "pretrain", "--pretrained")
                print(f"suite: pretraining the CLIP into {self.pretrained}", flush=True)
                self.pretrain_info = pre(self.world, self.pretrained, progress=self.progress, **pc) or {}
            else:  # made by an earlier run: with the settings this config asks for?
                self._check_pretrained_settings(pc)
        self.pretrained = Path(self.pretrained).resolve()
        if not self.pretrained.exists():
            raise ConfigError(f"--pretrained {self.pretrained}: no such file")
        self.base_config = self._base_config()
        # what the cells are computed from, by content: a world regenerated or weights retrained at
        # the same path change every key (the paths alone would keep the old cells)
        self.inputs_sha256 = {"world_manifest": _content_sha256(self.world / "manifest.json"),
                              "pretrained": _content_sha256(self.pretrained)}

    def _check_pretrained_settings(self, pc: dict) -> None:
        """The suite's own pretrained file (``OUT/pretrained/clip.pt``) was trained with the settings
        of the config's ``pretrain`` section (read from its ``clip.pt.json``); else an error."""
        from vclip import pretrain as P

        metrics_file = self.pretrained.with_name(self.pretrained.name + ".json")
        try:
            made = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{metrics_file}: missing or unreadable, so the settings {self.pretrained} was "
                              "trained with are unknown: delete it to pretrain again, or pass --pretrained") from None
        asked = {"arch": P.DEFAULT_ARCH, "steps": P.DEFAULT_STEPS, "batch": P.DEFAULT_BATCH, "lr": P.DEFAULT_LR,
                 "seed": 0, "hard_batches": P.DEFAULT_HARD_BATCHES}
        asked.update({k: v for k, v in pc.items() if k in asked})
        differs = [f"{k}: {made[k]!r} (asked {asked[k]!r})" for k in asked if k in made and made[k] != asked[k]]
        if differs:
            raise ConfigError(
                f"{self.pretrained} was pretrained with other settings than the `pretrain` section of "
                f"{self.config_file} asks: {'; '.join(differs)}. The cells under {self.out} used it: pass "
                f"another --out, or delete {self.pretrained.parent} to pretrain again")

    def frame_cache(self) -> Path:
        """``OUT/cache``: the frame cache of the world's videos (``vclip data prepare --cache`` at
        their own size: the frames PyAV decodes, read without decoding), one folder per distinct
        dataset ``root`` of the world's spec, built once and reused by later runs, and
        ``OUT/cache/spec.yaml``: the world's spec with every ``root`` moved to its cache (the
        annotation files stay the world's). Returns that spec."""
        from vclip.data.prepare import PrepareOptions, prepare

        cache = (self.out / "cache").resolve()
        try:
            raw = yaml.safe_load(self.world_spec.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{self.world_spec}: not valid YAML ({' '.join(str(e).split())})") from None
        base = self.world_spec.parent

        def absolute(v):
            return v if not isinstance(v, str) or os.path.isabs(os.path.expanduser(v)) else str(base / v)

        def paths_absolute(ds: dict) -> dict:
            """The spec's file entries (vclip.protocols.runner reads these) made absolute: the
            new spec lives in another folder."""
            ds = dict(ds)
            for k in ("root", "labels", "train", "val", "test", "few_shot"):
                if k in ds:
                    ds[k] = absolute(ds[k])
            if isinstance(ds.get("splits"), dict):
                ds["splits"] = {n: {k: absolute(v) for k, v in (sp or {}).items()} for n, sp in ds["splits"].items()}
            for group in ("base_novel", "zero_shot"):
                if isinstance(ds.get(group), dict):
                    ds[group] = {k: absolute(v) if k != "class_seed" else v for k, v in ds[group].items()}
            if isinstance(ds.get("pools"), list):
                ds["pools"] = [dict(p, list=absolute(p["list"])) if isinstance(p, dict) and "list" in p
                               else absolute(p) for p in ds["pools"]]
            return ds

        datasets, roots = {}, {}
        t0, made = time.time(), 0
        for name, ds in (raw.get("datasets") or {}).items():
            ds = paths_absolute(ds or {})
            if ds.get("root"):
                src = Path(ds["root"]).resolve()
                if src not in roots:
                    roots[src] = cache / name
                    if not src.is_dir():
                        raise ConfigError(f"{self.world_spec}: datasets.{name}.root {src}: no such directory")
                    results = prepare(src, roots[src], workers=max(1, self.workers),
                                      opts=PrepareOptions(short_side=0, cache=True), progress=False)
                    failed = [r for r in results if r.status == "failed"]
                    if failed:
                        raise VclipError(f"{roots[src]}: {len(failed)} videos of {src} could not be cached, "
                                         f"e.g. {failed[0].rel}: {failed[0].reason}")
                    made += sum(r.status == "done" for r in results)
                ds["root"] = str(roots[src])
            datasets[name] = ds
        if made:
            print(f"suite: frame cache of {made} videos in {time.time() - t0:.1f} s -> {cache}", flush=True)
        spec = cache / "spec.yaml"
        text = (f"# {self.world_spec} with each dataset's videos read from their frame cache "
                "(data.backend: cache); written by vclip suite\n"
                + yaml.safe_dump({"datasets": datasets}, sort_keys=False))
        if not spec.is_file() or spec.read_text() != text:
            atomic_write_text(spec, text)
        return spec

    def _base_config(self) -> dict:
        """The run config every cell starts from: the suite's ``run`` section with the command
        line's ``KEY=VALUE`` overrides, the pretrained file, its architecture name, and its native
        image size where the config sets none."""
        from vclip.config import deep_merge, parse_override

        base = deep_merge({}, self.cfg.get("run") or {})
        for o in self.overrides:  # `vclip suite ... KEY=VALUE`: every row's run config
            base = deep_merge(base, parse_override(o))
        arch = self.cfg.get("arch")
        if arch is None:
            try:
                from vclip.pretrain import DEFAULT_ARCH as arch
            except ImportError:
                arch = None
        model = {"pretrained": str(self.pretrained)}
        if arch:
            model["arch"] = arch
        base = deep_merge(base, {"model": model})
        if self.cfg.get("cache", True):
            base = deep_merge(base, {"data": {"backend": "cache"}})
        if not (base.get("data") or {}).get("image_size"):
            base = deep_merge(base, {"data": {"image_size": native_image_size(self.pretrained)}})
        return base

    # ------------------------------------------------------------------------ the cells
    def cells(self) -> list[Cell]:
        return [Cell(r, p) for r in self.rows for p in self.protocol_names]

    def cell_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.name}.json"

    def row_config(self, row: Row) -> Path:
        """``OUT/configs/<row>.yaml``: the base config with the row's method and its overrides."""
        from vclip.config import deep_merge, parse_override

        cfg = deep_merge(self.base_config, {"model": {"method": row.method}})
        for o in (self.cfg.get("methods") or {}).get(row.method, []):
            cfg = deep_merge(cfg, parse_override(o.replace("{world}", str(self.world))))
        path = self.out / "configs" / f"{row.name}.yaml"
        text = yaml.safe_dump(cfg, sort_keys=True)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
        return path

    def key(self, cell: Cell) -> str:
        """What a finished cell was computed from: a changed config, world or weights (by path or by
        content: the world's manifest, the weight file's bytes) recomputes it."""
        protocols = self.cfg.get("protocols") or {}
        opts = protocols[cell.protocol]
        if cell.protocol == "zero_shot" and not cell.row.eval_only and "fully_supervised" in self.protocol_names:
            opts = {"zero_shot": opts, "reused_fully_supervised": protocols.get("fully_supervised")}
        if cell.protocol == "fully_supervised" and self.cfg.get("token_merging"):
            opts = {"fully_supervised": opts, "token_merging": self.cfg["token_merging"]}
        blob = json.dumps({"config": self.row_config(cell.row).read_text(), "protocol": opts,
                           "world": str(self.world), "pretrained": str(self.pretrained),
                           "inputs_sha256": self.inputs_sha256, "eval_only": cell.row.eval_only},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def load_cell(self, cell: Cell) -> dict | None:
        p = self.cell_path(cell)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable, recomputing the cell", p)
            return None

    def run(self, on_cell: Callable[[Cell, dict], None] | None = None) -> dict:
        """Every cell not finished yet, then the report. Returns the suite.json content.

        With ``workers`` > 1 the unfinished cells run in that many processes at once, each with
        ``cpus // workers`` torch threads (:meth:`run_parallel`); the figures are the same cells'
        as a one-process run up to the floating-point order of the thread count (each cell
        records its ``machine.torch_threads``)."""
        self.prepare()
        cells = self.cells()
        results: dict[str, dict] = {}
        todo: list[tuple[int, Cell, str]] = []
        for i, cell in enumerate(cells, 1):
            old = self.load_cell(cell)
            key = self.key(cell)
            if old and old.get("status") == "done" and old.get("key") == key:
                results[cell.name] = old
                print(f"suite [{i}/{len(cells)}] {cell.row.label} × {cell.protocol}: done earlier, kept", flush=True)
                continue
            if old and old.get("status") == "done":
                log.info("%s: made with another config, world or pretrained file; recomputing", cell.name)
            todo.append((i, cell, key))

        def finished(i: int, cell: Cell, res: dict) -> None:
            results[cell.name] = res
            what = {"done": "done", "skipped": f"skipped ({res.get('reason')})",
                    "failed": f"FAILED ({res.get('reason')})"}[res["status"]]
            print(f"suite [{i}/{len(cells)}] {cell.row.label} × {cell.protocol}: {what} "
                  f"in {res.get('seconds', 0):.1f} s", flush=True)
            if on_cell:
                on_cell(cell, res)

        if self.workers > 1 and len(todo) > 1:
            self.run_parallel(todo, results, finished)
        else:
            for i, cell, key in todo:
                finished(i, cell, self.run_cell(cell, key, results))
        return self.report(results)

    def tasks(self, todo: Sequence[tuple[int, Cell, str]]) -> list[list[tuple[int, Cell, str]]]:
        """The unfinished cells as independent tasks for :meth:`run_parallel`: a row's zero-shot
        cell runs after its fully-supervised cell, in the same task (it evaluates that cell's
        checkpoint); every other cell is a task of its own. Longest first (trained rows' chains,
        then base-to-novel, few-shot, zero-shot; the untrained row last), so that the last task
        to start is a short one."""
        chains: dict[str, list[tuple[int, Cell, str]]] = {}
        tasks: list[list[tuple[int, Cell, str]]] = []
        for item in todo:
            cell = item[1]
            if cell.protocol in ("fully_supervised", "zero_shot") and not cell.row.eval_only:
                chains.setdefault(cell.row.name, []).append(item)
            else:
                tasks.append([item])
        tasks += list(chains.values())
        weight = {"fully_supervised": 4, "base_to_novel": 3, "few_shot": 2, "zero_shot": 1}

        def cost(task):
            return (not task[0][1].row.eval_only, sum(weight[c.protocol] for _, c, _ in task))
        return sorted(tasks, key=cost, reverse=True)

    def run_parallel(self, todo: Sequence[tuple[int, Cell, str]], results: dict[str, dict],
                     finished: Callable[[int, Cell, dict], None]) -> None:
        """:meth:`tasks` in ``workers`` processes (spawned: no torch state is forked), each with
        ``max(1, cpus // workers)`` torch threads. Every cell is saved by the process that ran it,
        as in a one-process run, so an interrupted parallel suite resumes the same way.

        Interrupts: the workers ignore SIGINT (a Ctrl-C reaches the whole process group); the main
        process, on Ctrl-C, on SIGTERM sent to it alone (``kill PID``, a scheduler's notice) or on
        any error, cancels the tasks not started, sends the running workers SIGTERM once and waits
        for them, so no worker outlives it. A training run answers by saving a checkpoint at its next
        optimizer step and stopping; a worker elsewhere stops where it is (every file is written
        atomically), see :func:`_worker_signals`. SIGTERM ends the command with status 143."""
        import multiprocessing as mp
        import signal
        import threading
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, _cpus() // self.workers)
        order = {item[1].name: item for item in todo}
        terminated = []

        def on_sigterm(signum, frame):
            if not terminated:  # the first one stops the suite; a second must not cut its cleanup short
                terminated.append(signum)
                raise KeyboardInterrupt("SIGTERM")

        previous = signal.signal(signal.SIGTERM, on_sigterm) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_signals) as pool:
                pending = {pool.submit(_run_task, self, [(c, k) for _, c, k in task], dict(results), threads)
                           for task in self.tasks(todo)}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            for name, res in fut.result():
                                i, cell, _ = order[name]
                                finished(i, cell, res)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    for proc in list((getattr(pool, "_processes", None) or {}).values()):
                        if proc.is_alive():
                            proc.terminate()  # SIGTERM: the trainer saves and stops
                    raise
        except BaseException:
            if terminated:  # the workers are gone (the pool waited for them): end as SIGTERM does
                raise TrainingInterrupted(
                    "SIGTERM: the suite stopped its workers (a training among them saved a checkpoint)",
                    signum=signal.SIGTERM, exit_code=128 + signal.SIGTERM, resume_command="vclip suite",
                    checkpoint="") from None
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def protocol_datasets(self, protocol: str) -> list[str]:
        o = (self.cfg.get("protocols") or {})[protocol] or {}
        if protocol in ("fully_supervised", "few_shot"):
            return [o.get("dataset") or ("k400" if protocol == "fully_supervised" else "hmdb51")]
        if protocol == "zero_shot":
            return [o.get("train_dataset", "k400"), *o.get("datasets", ["ucf101", "hmdb51", "k600"])]
        return list(o.get("datasets", ["k400", "ucf101", "hmdb51"]))

    def missing_assets(self, cell: Cell, config_file: Path) -> str | None:
        """Why the row's method cannot score the classes of the cell's datasets (a descriptor file
        it needs is absent or lacks a class, ...), or None."""
        from vclip.config import RunConfig, deep_merge, from_dict, read_yaml, validate
        from vclip.data.annotations import read_label_csv
        from vclip.methods import check_config, make_vocabulary
        from vclip.protocols.runner import load_data_spec

        spec = load_data_spec(self.spec)
        try:
            cfg = from_dict(RunConfig, deep_merge(read_yaml(config_file), {}))
            validate(cfg)
            check_config(cfg)
            for ds in self.protocol_datasets(cell.protocol):
                if ds not in spec:
                    return f"dataset {ds!r} is not in {self.spec}"
                make_vocabulary(cfg, read_label_csv(spec[ds].labels))
        except VclipError as e:
            return str(e)
        return None

    def run_cell(self, cell: Cell, key: str, done: dict) -> dict:
        start = time.perf_counter()
        config_file = self.row_config(cell.row)
        record = {"format": FORMAT, "cell": cell.name, "row": cell.row.name, "label": cell.row.label,
                  "method": cell.row.method, "protocol": cell.protocol, "key": key, "config": str(config_file),
                  "machine": self.machine, "commit": self.commit}
        reason = self.missing_assets(cell, config_file)
        if reason is not None:
            record.update(status="skipped", reason=reason, date=_now(), seconds=time.perf_counter() - start)
            atomic_write_text(self.cell_path(cell), json.dumps(record, indent=1, default=str))
            return record
        self.claim_run_dir(cell, key)
        try:
            result, command = self.run_protocol(cell, config_file, done)
            cols = chance_columns(cell.protocol, result)
            bad = [c for c, v in cols.items() if not math.isfinite(v["mean"])]
            if bad:
                raise VclipError(f"non-finite figure in column {bad[0]!r}")
            if result.get("token_merging"):
                cols.update(token_merging_columns(result["token_merging"], cols))
                record["token_merging"] = result["token_merging"]
            record.update(status="done", command=command, columns=cols, run_dir=result["run_dir"],
                          trained_checkpoint=result.get("trained_checkpoint"),
                          summary=result["summary"],
                          extra={k: result.get(k) for k in ("splits", "seeds", "shots", "plan") if result.get(k)})
        except (TrainingInterrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # recorded, the suite goes on; the next run retries the cell
            log.exception("suite cell %s failed", cell.name)
            record.update(status="failed", reason=f"{type(e).__name__}: {' '.join(str(e).split())}")
        record.update(date=_now(), seconds=time.perf_counter() - start)
        atomic_write_text(self.cell_path(cell), json.dumps(record, indent=1, default=str))
        if record["status"] == "done" and not self.keep_checkpoints:
            self.prune_run(cell, record)
        return record

    def prune_run(self, cell: Cell, record: dict) -> int:
        """Free the disk a finished cell's training checkpoints hold (``OUT/runs/<cell>/<sub-run>/
        checkpoints/<tag>/``): every ``train_state.pt`` (optimizer state, only for resuming a
        sub-run that has finished) and every checkpoint folder but the cell's
        ``trained_checkpoint`` (the fully-supervised model the zero-shot cell evaluates, which
        keeps its weights and ``meta.json``: it loads for ``vclip eval``/``predict``). Results,
        metrics and logs stay. Runs after the cell's record is saved; writes
        ``OUT/runs/<cell>/pruned.json`` (what went, bytes freed), which :meth:`claim_run_dir`
        reads: a pruned folder cannot resume, so a cell recomputed over it starts afresh. Returns
        the bytes freed."""
        run_dir = self.out / "runs" / cell.name
        keep = Path(record["trained_checkpoint"]).resolve() if record.get("trained_checkpoint") else None
        freed, removed = 0, []

        def size(path: Path) -> int:
            if path.is_file():
                return path.stat().st_size
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

        for ckpts in sorted(d for d in run_dir.rglob("checkpoints") if d.is_dir()):
            for d in sorted(ckpts.iterdir()):
                if keep is not None and d.resolve() == keep:
                    d = d / "train_state.pt"
                    if not d.is_file():
                        continue
                n = size(d)
                if d.is_dir():
                    shutil.rmtree(d)
                else:
                    d.unlink()
                freed += n
                removed.append(str(d.relative_to(run_dir)))
        if removed:
            atomic_write_text(run_dir / "pruned.json", json.dumps(
                {"removed": removed, "kept": str(keep) if keep else None, "bytes_freed": freed,
                 "date": _now()}, indent=1))
            log.info("%s: pruned %d checkpoint file(s)/folder(s), %.1f MB freed", cell.name, len(removed), freed / 1e6)
        return freed

    def claim_run_dir(self, cell: Cell, key: str) -> None:
        """``OUT/runs/<cell>/`` for inputs ``key``: its finished sub-runs are reused only when they
        were made from the same inputs; a folder made from others is moved aside to
        ``OUT/runs/<cell>@<its key>`` (kept, never deleted) so the cell starts afresh; so is a
        folder whose checkpoints :meth:`prune_run` removed (its cell record was lost)."""
        run_dir = self.out / "runs" / cell.name
        stamp = run_dir / "suite_key.txt"
        if run_dir.exists():
            old = stamp.read_text().strip() if stamp.is_file() else "unknown"
            if old != key or (run_dir / "pruned.json").is_file():
                aside = run_dir.with_name(f"{cell.name}@{old}")
                n = 1
                while aside.exists():
                    aside, n = run_dir.with_name(f"{cell.name}@{old}.{n}"), n + 1
                run_dir.rename(aside)
                log.warning("%s: made from other inputs (config, world or weights); moved to %s", run_dir, aside)
        atomic_write_text(stamp, key + "\n")

    def run_protocol(self, cell: Cell, config_file: Path, done: dict) -> tuple[dict, str]:
        """The cell through the protocol's runner; the result and the ``vclip run`` command that
        does the same."""
        from vclip.config import DataConfig
        from vclip.protocols import runner as R

        p, row = cell.protocol, cell.row
        o = dict((self.cfg.get("protocols") or {})[p] or {})
        overrides = [str(x).replace("{world}", str(self.world)) for x in o.get("overrides") or []]
        run_dir = self.out / "runs" / cell.name
        checkpoint = None
        if p == "zero_shot" and not row.eval_only:
            sup = done.get(f"{row.name}__fully_supervised")
            if sup and sup.get("status") == "done" and sup.get("trained_checkpoint") and \
                    Path(sup["trained_checkpoint"]).exists() and \
                    (self.cfg["protocols"].get("fully_supervised") or {}).get("dataset", "k400") == \
                    o.get("train_dataset", "k400"):
                checkpoint = sup["trained_checkpoint"]
        run = R.ProtocolRun(run_dir=run_dir, data=R.load_data_spec(self.spec), config_files=[str(config_file)],
                            overrides=overrides, eval_only=row.eval_only, checkpoint=checkpoint, label=row.label)
        cmd = ["vclip", "run", p.replace("_", "-"), "--data", str(self.spec), "--out", str(run_dir),
               "-c", str(config_file), *overrides]
        if row.eval_only:
            cmd.append("--eval-only")
        if checkpoint:
            cmd += ["--checkpoint", checkpoint]
        if p == "fully_supervised":
            ds = o.get("dataset", "k400")
            views = R.parse_views(o.get("views") or ["1x1"])
            result = R.run_fully_supervised(run, [ds], views)
            cmd += ["--datasets", ds, "--views", ",".join(f"{c}x{k}" for c, k in views)]
            if not row.eval_only:
                done_ckpt = run.checkpoint_of(f"sup_{ds}_train")
                result["trained_checkpoint"] = done_ckpt
            tm = self.cfg.get("token_merging")
            if tm:
                result["token_merging"] = self.token_merging_eval(cell, config_file, overrides, ds, views, tm,
                                                                  result.get("trained_checkpoint"))
        elif p == "zero_shot":
            tr, dss = o.get("train_dataset", "k400"), list(o.get("datasets", ["ucf101", "hmdb51", "k600"]))
            seeds = [int(s) for s in o.get("k600_seeds", [1, 2, 3])]
            classes = int(o.get("k600_classes", 160))
            result = R.run_zero_shot(run, tr, dss, seeds, classes, (1, 1), base_dataset=tr)
            cmd += ["--train-dataset", tr, "--datasets", ",".join(dss), "--seeds", ",".join(map(str, seeds)),
                    "--k600-classes", str(classes)]
        elif p == "few_shot":
            ds = o.get("dataset", "hmdb51")
            seeds = [int(s) for s in o.get("seeds", [1])]
            shots, notes = few_shot_plan(run.dataset(ds), [int(k) for k in o.get("shots", [2, 4, 8, 16])],
                                         int((run.base.get("data") or {}).get("batch_size") or DataConfig.batch_size))
            if notes.get("batch_size"):
                overrides.append(f"data.batch_size={notes['batch_size']}")
                run = R.ProtocolRun(run_dir=run_dir, data=run.data, config_files=[str(config_file)],
                                    overrides=overrides, eval_only=row.eval_only, label=row.label)
                cmd.insert(cmd.index("-c") + 2, overrides[-1])
            result = R.run_few_shot(run, [ds], shots, seeds, (1, 1))
            result["plan"] = notes
            cmd += ["--datasets", ds, "--shots", ",".join(map(str, shots)), "--seeds", ",".join(map(str, seeds))]
        else:
            dss = list(o.get("datasets", ["k400", "ucf101", "hmdb51"]))
            seeds = [int(s) for s in o.get("seeds", [1, 2, 3])]
            shots = int(o.get("shots", 16))
            result = R.run_base_to_novel(run, dss, seeds, shots, (1, 1))
            cmd += ["--datasets", ",".join(dss), "--seeds", ",".join(map(str, seeds)), "--shots", str(shots)]
        cmd += ["--label", row.label]
        return result, " ".join(shlex.quote(c) for c in cmd)

    def token_merging_eval(self, cell: Cell, config_file: Path, overrides: list[str], ds: str, views, tm: dict,
                           checkpoint: str | None) -> dict:
        """ToMe off the shelf (Bolya et al., 2023, merging without retraining): the fully-supervised
        cell's model — its trained checkpoint, or the pretrained CLIP for the baseline row —
        evaluated on the same test set without merging and with ``model.token_merging: {r: R}``,
        back to back in this process, each evaluation timed (wall clock: data, text and video
        paths), plus the image tower's GFLOPs per view with and without (``vclip flops``; load-
        independent). ``{"skipped": reason}`` for a method that merges tokens itself (ALT). Each
        evaluation's result and time is kept in ``<run>/token_merging/r<R>/``, so a resumed cell
        does not redo it."""
        from vclip.methods import METHODS
        from vclip.protocols import runner as R

        r = int(tm["r"])
        if METHODS[cell.row.method].merges_tokens_itself:
            return {"r": r, "skipped": f"{cell.row.method} merges tokens by its own options"}
        out: dict = {"r": r, "views": [f"{c}x{k}" for c, k in views], "dataset": ds, "checkpoint": checkpoint}
        run_dir = self.out / "runs" / cell.name / "token_merging"
        for tag, extra in (("r0", []), (f"r{r}", [f"model.token_merging.r={r}"])):
            record = run_dir / tag / "timed.json"
            if record.is_file():
                out[tag] = json.loads(record.read_text())
                continue
            run = R.ProtocolRun(run_dir=run_dir / tag, data=R.load_data_spec(self.spec),
                                config_files=[str(config_file)], overrides=[*overrides, *extra],
                                eval_only=cell.row.eval_only, checkpoint=checkpoint, label=cell.row.label)
            t0 = time.perf_counter()
            res = R.run_fully_supervised(run, [ds], views)
            out[tag] = {"seconds": time.perf_counter() - t0, "summary": res["summary"][ds]}
            atomic_write_text(record, json.dumps(out[tag], indent=1))
        out["speedup"] = out["r0"]["seconds"] / out[f"r{r}"]["seconds"]
        try:
            from vclip.methods.flops import method_flops

            cfg = yaml.safe_load(config_file.read_text())
            data, model = cfg.get("data") or {}, cfg.get("model") or {}
            kw = dict(arch=model.get("arch") or "ViT-B-16", num_frames=int(data.get("num_frames") or 8),
                      image_size=data.get("image_size"), options=model.get("options") or None, num_texts=0)
            out["image_tower_gflops"] = {
                "r0": method_flops(cell.row.method, **kw).parts["image tower"],
                f"r{r}": method_flops(cell.row.method, token_merging={"r": r}, **kw).parts["image tower"]}
        except Exception as e:  # the FLOPs are a side figure: say why they are missing, keep the rest
            out["image_tower_gflops"] = None
            out["flops_error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return out

    # ----------------------------------------------------------------------------- report
    def report(self, cells: dict[str, dict]) -> dict:
        # the within-pair columns, from the cells' run folders (never stored in the cell files, so
        # cells finished earlier get them on a rerun and their keys are unchanged)
        cells = dict(cells)
        for n, c in cells.items():
            extra = pair_columns(c, self.out / "runs" / n, self.world)
            if extra:
                cells[n] = {**c, "columns": {**(c.get("columns") or {}), **extra}}
        figures = []
        for name, c in cells.items():
            for col, v in (c.get("columns") or {}).items():
                figures.append({"row": c["row"], "label": c["label"], "method": c["method"], "protocol": c["protocol"],
                                "column": col, **v, "command": c.get("command"), "machine": c.get("machine"),
                                "date": c.get("date"), "commit": c.get("commit")})
        data = {
            "format": FORMAT, "date": _now(), "command": " ".join(shlex.quote(a) for a in (self.argv or [])) or None,
            "config_file": str(self.config_file), "config": self.cfg, "world": str(self.world),
            "world_info": self.world_info or _read_json(self.world / "manifest.json", keep=("seed", "version",
                                                                                              "generator", "size")),
            "world_manifest_sha256": _content_sha256(self.world / "manifest.json"),
            "pretrained": {"file": str(self.pretrained), "sha256": _content_sha256(self.pretrained),
                           "info": self.pretrain_info},
            "machine": self.machine, "commit": self.commit,
            "rows": [{"name": r.name, "method": r.method, "label": r.label, "eval_only": r.eval_only}
                     for r in self.rows],
            "protocols": self.protocol_names, "cells": cells, "figures": figures,
        }
        md = markdown(self, cells)
        data["markdown"] = md
        atomic_write_text(self.out / "suite.json", json.dumps(data, indent=1, default=str))
        atomic_write_text(self.out / "suite.md", md)
        plot(self, cells, self.out / "suite.png")
        return data


def _cpus() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_stop_requested = False  # in a suite worker: SIGTERM received (see _worker_signals)
_in_task = False


def _worker_signals() -> None:
    """Initializer of :meth:`Suite.run_parallel`'s workers: Ctrl-C is the main process's to handle
    (SIGINT ignored); SIGTERM, its request to stop, raises KeyboardInterrupt inside a task (sent
    back like any exception) and otherwise only marks the worker stopped, so that no task starts
    there any more. A worker must not die of it: the pool would count itself broken and SIGTERM
    the others a second time, and a second signal stops a training run without saving. While a
    run trains, the trainer's own SIGTERM handler replaces this one: it saves at the next step."""
    def stop(signum, frame):
        global _stop_requested
        _stop_requested = True
        if _in_task:
            raise KeyboardInterrupt("SIGTERM: the suite was interrupted")

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stop)


def _run_task(suite: Suite, items: Sequence[tuple[Cell, str]], done: dict, threads: int) -> list[tuple[str, dict]]:
    """One task of :meth:`Suite.run_parallel`, in a worker process: its cells in order, with
    ``threads`` torch threads; a cell sees the results finished before the task started and
    those of the task's earlier cells."""
    import torch

    global _in_task
    if _stop_requested:
        raise KeyboardInterrupt("SIGTERM: the suite was interrupted")
    _in_task = True
    try:
        torch.set_num_threads(threads)
        suite.machine = machine()
        done = dict(done)
        out = []
        for cell, key in items:
            res = suite.run_cell(cell, key, done)
            done[cell.name] = res
            out.append((cell.name, res))
        return out
    finally:
        _in_task = False


def few_shot_plan(ds, shots: Sequence[int], batch_size: int) -> tuple[list[int], dict]:
    """The K values a few-shot cell runs: those with a K-shot file in the spec, or at most the
    fewest training videos a class has in split 1 (a K-shot draw needs K per class); the others are
    dropped and noted. The batch size is capped at the smallest K-shot training set (the trainer
    needs one full batch per epoch), noted too."""
    from collections import Counter

    from vclip.data.annotations import read_split_file

    tmpl = ds.raw.get("few_shot")
    per_class = Counter(r.label for r in read_split_file(ds.train_list()))
    fewest, classes = (min(per_class.values()), len(per_class)) if per_class else (0, 0)
    kept, dropped = [], []
    for k in shots:
        official = tmpl and ds.path(str(tmpl).format(shots=k, k=k, seed=1)).is_file()
        (kept if official or k <= fewest else dropped).append(k)
    if not kept:
        raise ConfigError(f"few-shot on {ds.name}: none of K = {list(shots)} is possible (the fewest training "
                          f"videos of a class in {ds.train_list()} is {fewest}, and there are no K-shot files)")
    notes: dict = {}
    if dropped:
        notes["dropped_shots"] = dropped
        notes["why"] = (f"{ds.name}: a class has only {fewest} training videos in split 1 and the spec has no "
                        f"K-shot file for K = {', '.join(map(str, dropped))}")
    smallest = min(kept) * classes
    if classes and smallest < batch_size:
        notes["batch_size"] = smallest
    return kept, notes


def _read_json(path: Path, keep: Sequence[str]) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: d[k] for k in keep if k in d} if isinstance(d, dict) else {}


def _content_sha256(path: Path) -> str | None:
    """SHA-256 of a file; of a folder (e.g. a Hugging Face CLIP), of its files' names and hashes."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return hashlib.sha256("".join(f"{p.relative_to(path)}\0{sha256_file(p)}\n" for p in files).encode()).hexdigest()
    return None


def _contract(module: str, name: str, option: str):
    """``module.name`` (imported now: the world and pretraining modules may land after the suite)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{module}.{name} is not available in this vclip ({type(e).__name__}: {e}); "
                          f"pass {option} to use an existing one") from None


def native_image_size(path: Path) -> int:
    """The input resolution a CLIP weight file was trained at (from its positional embedding)."""
    from vclip.backbone import convert
    from vclip.backbone.weights import read_state_dict

    p = Path(path)
    if p.is_dir():
        cfg_file = p / "config.json"
        if cfg_file.is_file():
            meta = json.loads(cfg_file.read_text())
            clip = meta.get("clip", meta)
            size = (clip.get("vision") or {}).get("image_size") or (meta.get("vision_config") or {}).get("image_size")
            if size:
                return int(size)
        raise ConfigError(f"{p}: cannot tell its image size; set run.data.image_size in the suite config")
    try:
        sd = convert.to_vclip(read_state_dict(p))
        return int(convert.infer_config(sd).vision.image_size)
    except VclipError as e:
        raise ConfigError(f"--pretrained {p}: {e}; or set run.data.image_size in the suite config") from None


# ---------------------------------------------------------------------------- markdown
def _fmt(v: dict | None, pm: bool = True) -> str:
    if not v:
        return "–"
    if pm and v.get("n", 1) > 1:
        return f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"
    return f"{100 * v['mean']:.1f}"


def _chance(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(suite: Suite, cells: dict[str, dict]) -> str:
    """suite.md: an overview (one figure per protocol) and one table per protocol, rows = the
    baseline and the methods, plus a chance row; skipped/failed cells with their reasons below."""
    rows = suite.rows
    lines = ["# vclip suite", "",
             f"World `{suite.world}`, pretrained CLIP `{suite.pretrained}`, config `{suite.config_file}`; "
             f"commit {suite.commit or 'unknown'}; {suite.machine['platform']}, {suite.machine['cpus']} CPUs, "
             f"torch {suite.machine['torch']}; written {_now()}.", "",
             f"Command: `{' '.join(shlex.quote(a) for a in suite.argv or []) or 'vclip suite'}`; compute time of "
             f"the cells {sum(c.get('seconds', 0) for c in cells.values()) / 60:.1f} min (as each was computed).", "",
             "Top-1 accuracy in % (mean ± std over the protocol's splits, K600 draws or seeds; population std). "
             "`chance` is a uniform guess over the test set's classes. Every figure's `vclip run` command is "
             "in suite.json.", ""]
    if any(col.endswith("within pair") for c in cells.values() for col in c.get("columns") or {}):
        lines += ["`within pair`: of the test videos of the order-pair classes (one class's clip played "
                  "backwards is the other's) predicted as one of their pair, the % predicted as their own class "
                  "(on that many videos); 50 for a model blind to frame order.", ""]
    notes: list[str] = []

    def cell_text(row: Row, p: str, col: str | None) -> str:
        c = cells.get(f"{row.name}__{p}")
        if not c:
            return "–"
        if c["status"] != "done":
            return c["status"]
        v = (c.get("columns") or {}).get(col) if col else None
        return _fmt(v) + (f" ({v['videos']} videos)" if v and "videos" in v else "")

    # overview
    heads = []
    for p in suite.protocol_names:
        what = None
        for r in rows:
            c = cells.get(f"{r.name}__{p}")
            if c and c.get("status") == "done":
                what = headline(p, c["columns"])[0]
                break
        heads.append((p, what))
    lines += ["## Overview", "",
              "| Method | " + " | ".join(f"{TITLES[p]} ({w or '–'})" for p, w in heads) + " |",
              "|---|" + "---|" * len(heads)]
    chance_row: list[str] = []
    for r in rows:
        vals = []
        for p, _ in heads:
            c = cells.get(f"{r.name}__{p}")
            if not c or c["status"] != "done":
                vals.append(c["status"] if c else "–")
                continue
            _, v, ch = headline(p, c["columns"])
            vals.append("–" if v is None else f"{100 * v:.1f}")
        lines.append(f"| {r.label} | " + " | ".join(vals) + " |")
    for p, _ in heads:
        ch = None
        for r in rows:
            c = cells.get(f"{r.name}__{p}")
            if c and c.get("status") == "done":
                ch = headline(p, c["columns"])[2]
                break
        chance_row.append(_chance(ch))
    lines += ["| *chance* | " + " | ".join(chance_row) + " |", ""]

    # one table per protocol
    for p in suite.protocol_names:
        cols: list[str] = []
        chance: dict[str, float | None] = {}
        for r in rows:
            c = cells.get(f"{r.name}__{p}")
            for col, v in ((c or {}).get("columns") or {}).items():
                if col not in cols:
                    cols.append(col)
                    chance[col] = v.get("chance")
        if not cols:
            cols = ["–"]
        lines += [f"## {TITLES[p]}", "", "| Method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for r in rows:
            lines.append(f"| {r.label} | " + " | ".join(cell_text(r, p, col) for col in cols) + " |")
        lines += ["| *chance* | " + " | ".join(_chance(chance.get(col)) for col in cols) + " |", ""]
    tms = {r.name: (cells.get(f"{r.name}__fully_supervised") or {}).get("token_merging") for r in rows}
    if any(tms.values()):
        rr = next(t["r"] for t in tms.values() if t)
        lines += [f"## Token merging (ToMe r = {rr}, off the shelf)", "",
                  f"Each fully-supervised model evaluated again with `model.token_merging: {{r: {rr}}}` (r tokens "
                  "merged in every image-tower block, no retraining), back to back with the same evaluation "
                  "without merging. Top-1 in %; eval time is the wall clock of each evaluation (data, text and "
                  "video paths; noisy on a shared machine), GFLOPs those of the image tower per view "
                  "(`vclip flops`).", "",
                  "| Method | top-1 | top-1 ToMe | Δ top-1 | eval s | eval s ToMe | speed-up | image-tower GFLOPs "
                  "| GFLOPs ToMe |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            t = tms.get(r.name)
            if not t:
                continue
            if t.get("skipped"):
                lines.append(f"| {r.label} | " + " | ".join(["–"] * 8) + " |")
                continue
            tag = f"r{t['r']}"
            a, b = t["r0"], t[tag]
            view = next(iter(a["summary"]))
            t0, t1 = a["summary"][view]["top1"], b["summary"][view]["top1"]
            g = t.get("image_tower_gflops") or {}
            gf = f"{g['r0']:.3f} | {g[tag]:.3f}" if g else "– | –"
            lines.append(f"| {r.label} | {100 * t0:.1f} | {100 * t1:.1f} | {100 * (t1 - t0):+.1f} | "
                         f"{a['seconds']:.1f} | {b['seconds']:.1f} | {t['speedup']:.2f}× | {gf} |")
        skipped = sorted({t["skipped"] for t in tms.values() if t and t.get("skipped")})
        if skipped:
            lines += ["", "Not evaluated with ToMe: " + "; ".join(skipped) + "."]
        lines.append("")
    for name, c in cells.items():
        if c["status"] != "done":
            notes.append(f"- {c['label']} × {c['protocol']}: **{c['status']}** — {c.get('reason')}")
    if notes:
        lines += ["## Cells not measured", "", *notes, ""]
    plans = sorted({(c["protocol"], json.dumps((c.get("extra") or {}).get("plan"), sort_keys=True))
                    for c in cells.values() if (c.get("extra") or {}).get("plan")})
    if plans:
        lines += ["## Notes", ""]
        for p, plan in plans:
            plan = json.loads(plan)
            if plan.get("dropped_shots"):
                lines.append(f"- {TITLES[p]}: K = {', '.join(map(str, plan['dropped_shots']))} not run ({plan['why']}).")
            if plan.get("batch_size"):
                lines.append(f"- {TITLES[p]}: batch size {plan['batch_size']} (the smallest K-shot training set).")
        lines.append("")
    return "\n".join(lines)


def plot(suite: Suite, cells: dict[str, dict], path: Path) -> None:
    """suite.png: one panel per protocol, a bar per row and column (± std), chance as a black tick."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocols = suite.protocol_names
    fig = Figure(figsize=(4.5 * max(1, len(protocols)), 4.2))
    FigureCanvasAgg(fig)
    rows = suite.rows
    for i, p in enumerate(protocols):
        ax = fig.add_subplot(1, max(1, len(protocols)), i + 1)
        cols: list[str] = []
        chance: dict[str, float | None] = {}
        for r in rows:
            for col, v in ((cells.get(f"{r.name}__{p}") or {}).get("columns") or {}).items():
                if col not in cols and not col.endswith(("top-5", "within pair")):
                    cols.append(col)
                    chance[col] = v.get("chance")
        width = 0.8 / max(1, len(rows))
        for j, r in enumerate(rows):
            c = cells.get(f"{r.name}__{p}") or {}
            xs, ys, es = [], [], []
            for k, col in enumerate(cols):
                v = (c.get("columns") or {}).get(col)
                if v:
                    xs.append(k - 0.4 + width * (j + 0.5))
                    ys.append(100 * v["mean"])
                    es.append(100 * v["std"])
            if xs:
                ax.bar(xs, ys, width, yerr=es, label=r.label if i == 0 else None, capsize=2)
        for k, col in enumerate(cols):
            if chance.get(col) is not None:
                ax.hlines(100 * chance[col], k - 0.45, k + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(TITLES[p], fontsize=10)
        if i == 0:
            ax.set_ylabel("top-1 accuracy (%)")
    if rows:
        fig.legend(loc="upper center", ncol=min(len(rows), 5), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "suite", help="the methods x protocols table on the synthetic world (docs/suite.md)",
        description="Run every registered method through the four protocols on the synthetic world, from one "
                    "pretrained small CLIP, and write OUT/suite.md, suite.json and suite.png. Rerun to resume.")
    p.add_argument("--out", required=True, metavar="DIR", help="suite folder (rerun with the same DIR to resume)")
    p.add_argument("--quick", action="store_true", help="the CI smoke size (configs/suite/quick.yaml)")
    p.add_argument("--config", metavar="FILE", help="suite config (default configs/suite/default.yaml, "
                                                    "or quick.yaml with --quick)")
    p.add_argument("--world", metavar="DIR", help="an existing world (default: generate one in OUT/world)")
    p.add_argument("--pretrained", metavar="FILE", help="an existing pretrained CLIP (default: pretrain one into "
                                                        "OUT/pretrained/clip.pt)")
    p.add_argument("--methods", help="comma-separated registered methods (default: all)")
    p.add_argument("--protocols", help="comma-separated protocols (default: all four)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes generating the world and the frame cache, and cells run at once "
                        "(each with cores / N torch threads)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every training checkpoint of finished cells (default: only each method's "
                        "fully-supervised model, without its optimizer state)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the run config every cell starts from (e.g. train.seed=1); a cell "
                        "they change is recomputed")
    p.set_defaults(handler=_cli)


def _cli(args) -> int:
    def names(text):
        return [x.strip() for x in text.split(",") if x.strip()] if text else None

    if args.workers < 1:
        raise ConfigError(f"--workers: expected >= 1, got {args.workers}")
    argv = ["vclip", "suite", "--out", args.out] + (["--quick"] if args.quick else [])
    for opt in ("config", "world", "pretrained", "methods", "protocols"):
        if getattr(args, opt):
            argv += [f"--{opt}", getattr(args, opt)]
    if args.workers != 1:
        argv += ["--workers", str(args.workers)]
    if args.keep_checkpoints:
        argv.append("--keep-checkpoints")
    from vclip.config import parse_override

    for o in args.overrides:  # a bad one is refused before the world is made
        parse_override(o)
    argv += list(args.overrides)
    suite = Suite(out=Path(args.out), config_file=config_path(args.quick, args.config),
                  world=Path(args.world) if args.world else None,
                  pretrained=Path(args.pretrained) if args.pretrained else None,
                  methods=names(args.methods), protocols=names(args.protocols), workers=args.workers, argv=argv,
                  overrides=list(args.overrides), keep_checkpoints=args.keep_checkpoints)
    try:
        data = suite.run()
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{e.args[0].split('; resume with:')[0]}; finished cells are kept in "
                                  f"{suite.out}/cells: run the same vclip suite command again to continue",
                                  signum=e.signum, exit_code=e.exit_code, resume_command="vclip suite",
                                  checkpoint=e.checkpoint) from None
    print(data["markdown"], end="")
    bad = [n for n, c in data["cells"].items() if c["status"] == "failed"]
    print(f"suite: {suite.out}/suite.md, suite.json, suite.png"
          + (f"; {len(bad)} cell(s) failed (rerun to retry): {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0
