"""The four protocol runners (``vclip run PROTOCOL``).

A runner composes one :class:`~vclip.config.RunConfig` per sub-run from the user's base config
(``-c`` files and ``key=value`` overrides: method, backbone, frames, optimiser ...) and the dataset
spec (``--data``: roots, label files, split files), trains and evaluates through the engine's public
functions (:func:`vclip.engine.trainer.train`, :func:`vclip.engine.evaluate.evaluate`) into
``RUN_DIR/<sub-run>/``, and aggregates the sub-runs into ``RUN_DIR/results.json`` and
``RUN_DIR/table.md``.

Resumable: a sub-run whose ``results.json`` exists is skipped; an interrupted training sub-run
continues from its ``checkpoints/last`` (``train(cfg, resume="auto")``).

Dataset spec (YAML; relative paths are relative to the spec file)::

    datasets:
      hmdb51:
        root: data/hmdb51                      # folder the split-file paths are relative to
        labels: vifi/labels/hmdb_51_labels.csv
        splits: {1: {train: .../train1.txt, test: .../val1.txt}, 2: {...}, 3: {...}}
        few_shot: vifi/datasets_splits/hmdb_splits/train1_few_shot_{shots}.txt   # optional
        base_novel:                                                             # optional
          base_labels: vifi/labels/hmdb_51_base_labels.csv
          novel_labels: vifi/labels/hmdb_51_novel_labels.csv
          train: vifi/datasets_splits/base2novel_splits/hmdb_splits/fs_base_s{seed}_train.txt
          base_val: .../base_val.txt
          novel_val: .../novel_val.txt
        label_norm: []                         # e.g. [camelcase] for UCF
      k400: {root: ..., labels: ..., train: ..., val: ...}
      k600:
        root: ..., labels: ...
        zero_shot: {split: .../ZS_split{split}_K600_eval.txt, labels: .../ZS_split{split}_K600.csv}  # optional
        pools: [{list: data/k600/val.txt, prefix: ""}]   # videos for generated zero-shot draws

Missing protocol files are generated (``vclip.protocols.splits``) under ``RUN_DIR/splits/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from vclip.config import RunConfig, deep_merge, from_dict, parse_override, read_yaml, validate
from vclip.data.annotations import read_label_csv
from vclip.errors import ConfigError
from vclip.io import atomic_write_text
from vclip.protocols import aggregate, splits
from vclip.protocols.labels import match_kinetics, normalise_names

log = logging.getLogger(__name__)

PROTOCOLS = ("fully_supervised", "few_shot", "zero_shot", "base_to_novel")
ALIASES = {"fully-supervised": "fully_supervised", "supervised": "fully_supervised", "few-shot": "few_shot",
           "fewshot": "few_shot", "zero-shot": "zero_shot", "zeroshot": "zero_shot",
           "base-to-novel": "base_to_novel", "base2novel": "base_to_novel", "b2n": "base_to_novel"}


#: how the command line spells each protocol (``vclip run PROTOCOL``: help and errors)
CLI_NAMES = tuple(p.replace("_", "-") for p in PROTOCOLS)


def protocol_name(name: str) -> str:
    """The protocol ``name`` means (its spelling in :data:`CLI_NAMES`, in :data:`PROTOCOLS` or an
    alias of :data:`ALIASES`), as spelt in :data:`PROTOCOLS`."""
    p = ALIASES.get(name, name)
    if p not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r} (known: {', '.join(CLI_NAMES)})")
    return p


# ------------------------------------------------------------------------------ dataset spec
@dataclass
class DatasetSpec:
    name: str
    root: str | None
    labels: Path
    raw: dict
    base: Path

    def path(self, value) -> Path | None:
        if value is None:
            return None
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base / p

    def split(self, k: int) -> dict | None:
        s = self.raw.get("splits") or {}
        return s.get(k, s.get(str(k)))

    def train_list(self) -> Path:
        """Split 1's training list, else ``train``."""
        s = self.split(1)
        p = self.path(s.get("train") if s else self.raw.get("train"))
        if p is None:
            raise ConfigError(f"dataset {self.name}: no training list (splits.1.train or train)")
        return p

    def test_list(self, k: int = 1) -> Path:
        """Split ``k``'s test list, else ``val`` (k = 1 only)."""
        s = self.split(k)
        if s:
            return self.path(s.get("test") or s.get("val"))
        if k != 1:
            raise ConfigError(f"dataset {self.name}: no split {k} (splits.{k}.test)")
        p = self.path(self.raw.get("val") or self.raw.get("test"))
        if p is None:
            raise ConfigError(f"dataset {self.name}: no test list (splits.1.test or val)")
        return p

    def num_splits(self) -> int:
        return len(self.raw.get("splits") or {}) or 1


def load_data_spec(path) -> dict[str, DatasetSpec]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--data {path}: no such file") from None
    datasets = data.get("datasets", data)
    out = {}
    for name, raw in datasets.items():
        if not isinstance(raw, dict) or "labels" not in raw:
            raise ConfigError(f"{path}: dataset {name!r} needs at least 'labels' (and 'root')")
        base = path.parent.resolve()
        spec = DatasetSpec(name, None, Path(), raw, base)
        spec.root = str(spec.path(raw["root"])) if raw.get("root") else None
        spec.labels = spec.path(raw["labels"])
        out[name] = spec
    return out


# ------------------------------------------------------------------------------------ runner
@dataclass
class ProtocolRun:
    """One ``vclip run``: the run directory, the base config, the datasets and the options."""

    run_dir: Path
    data: dict[str, DatasetSpec]
    config_files: Sequence[str] = ()
    overrides: Sequence[str] = ()
    label_norm: Sequence[str] = ()
    checkpoint: str | None = None          # evaluate this (no training)
    init_checkpoint: str | None = None     # start training from this
    eval_only: bool = False
    checkpoint_tag: str = "last"
    monitor: bool = False                   # evaluate the protocol's test set during training too
    label: str | None = None
    sub_runs: dict = field(default_factory=dict)
    label_files: dict = field(default_factory=dict)
    split_files: dict = field(default_factory=dict)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        base: dict = {}
        for f in self.config_files:
            base = deep_merge(base, read_yaml(f))
        for o in self.overrides:
            base = deep_merge(base, parse_override(o))
        self.base = base
        probe = self._build({})
        self.method = probe.model.method
        self.arch = probe.model.pretrained or probe.model.arch

    # ------------------------------------------------------------------ configs and labels
    def _build(self, over: dict) -> RunConfig:
        from vclip.methods import check_config

        cfg = from_dict(RunConfig, deep_merge(self.base, over))
        validate(cfg)
        check_config(cfg)
        return cfg

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.data:
            raise ConfigError(f"dataset {name!r} is not in the --data spec (has: {', '.join(self.data)})")
        return self.data[name]

    def norm_options(self, ds: DatasetSpec) -> list[str]:
        opts = list(self.label_norm)
        opts += [o for o in ds.raw.get("label_norm") or [] if o not in opts]
        return opts

    def labels(self, ds: DatasetSpec, path: Path | None = None) -> str:
        """The label file a sub-run uses: ``path`` (default the dataset's), normalised into
        ``RUN_DIR/labels/`` when normalisation options apply."""
        path = Path(path or ds.labels)
        opts = self.norm_options(ds)
        key = f"{ds.name}:{path}"
        if not opts:
            self.label_files[key] = {"file": str(path), "normalisation": []}
            return str(path)
        names = read_label_csv(path)
        new = normalise_names(names, opts)
        h = hashlib.sha256(("|".join(opts) + str(path)).encode()).hexdigest()[:8]
        out = self.run_dir / "labels" / f"{ds.name}_{path.stem}_{h}.csv"
        if not out.exists() or read_label_csv(out) != new:
            splits.write_labels(out, new)
        self.label_files[key] = {"file": str(out), "source": str(path), "normalisation": opts,
                                 "changed": sum(a != b for a, b in zip(names, new)),
                                 "examples": [[a, b] for a, b in zip(names, new) if a != b][:5]}
        return str(out)

    def data_over(self, ds: DatasetSpec, labels: str, train: Path | None = None, val: Path | None = None) -> dict:
        return {"root": ds.root, "labels": labels, "train_list": str(train) if train else None,
                "val_list": str(val) if val else None}

    # ------------------------------------------------------------------------- sub-runs
    def _done(self, name: str) -> dict | None:
        p = self.run_dir / name / "results.json"
        if p.exists():
            data = json.loads(p.read_text())
            if data.get("sub_run") == name:
                log.info("sub-run %s: done, skipped", name)
                self.sub_runs[name] = data
                return data
        return None

    def _write_sub(self, name: str, data: dict) -> dict:
        data = {"sub_run": name, **data}
        atomic_write_text(self.run_dir / name / "results.json", json.dumps(data, indent=1, default=str))
        self.sub_runs[name] = data
        return data

    def init_weights(self) -> str | None:
        """``--init-checkpoint``: a vclip training checkpoint that initialises the whole method
        (``model.init_checkpoint``: CLIP and the method's own modules, e.g. ALT's few-shot runs
        start from the K400-trained ALT with its decoder)."""
        if not self.init_checkpoint:
            return None
        from vclip.engine.checkpoint import load_checkpoint

        load_checkpoint(self.init_checkpoint)  # a bad path or a corrupted file fails before training
        return str(Path(self.init_checkpoint).resolve())

    def train_sub(self, name: str, data: dict, val: Path | None = None, seed: int | None = None) -> str:
        """Train sub-run ``name`` (or reuse it); the checkpoint to evaluate. ``seed``: the split
        seed of a few-shot or base-to-novel sub-run, added to ``train.seed`` so that each seed's
        run differs in its initialisation and data order too, not only in its split (as
        ViFi-CLIP's scripts pass one seed to both)."""
        done = self._done(name)
        if done is None:
            from vclip.engine.trainer import train

            over = {"name": name, "output_dir": str(self.run_dir),
                    "data": dict(data, val_list=str(val) if (val and self.monitor) else None)}
            if seed is not None:
                from vclip.config import TrainConfig

                base_seed = (self.base.get("train") or {}).get("seed")
                over["train"] = {"seed": int(TrainConfig.seed if base_seed is None else base_seed) + int(seed)}
            init = self.init_weights()
            if init:
                over["model"] = {"init_checkpoint": init}
            cfg = self._build(over)
            # continues an interrupted sub-run (its config unchanged); a fresh start without a checkpoint
            res = train(cfg, resume="auto")
            done = self._write_sub(name, {"kind": "train", "training": res.get("training"), "init": init,
                                          **_compact(res), "data": cfg.to_dict()["data"]})
        return self.checkpoint_of(name)

    def checkpoint_of(self, name: str) -> str:
        from vclip.engine.checkpoint import CheckpointManager

        mgr = CheckpointManager(self.run_dir / name)
        p = mgr.find(self.checkpoint_tag) or mgr.find("last")
        if p is None:
            raise ConfigError(f"sub-run {name}: no checkpoint under {self.run_dir / name}/checkpoints")
        return str(p)

    def eval_sub(self, name: str, data: dict, checkpoint: str | None, views: tuple[int, int] = (1, 1),
                 info: dict | None = None) -> dict:
        done = self._done(name)
        if done is not None:
            return done
        from vclip.engine.evaluate import evaluate

        over = {"name": name, "output_dir": str(self.run_dir), "data": data,
                "eval": {"num_clips": views[0], "num_crops": views[1]}}
        cfg = self._build(over)
        res = evaluate(cfg, checkpoint=checkpoint)
        return self._write_sub(name, {"kind": "eval", "checkpoint": checkpoint, **(info or {}), **_compact(res),
                                      "labels": data["labels"], "annotation": data["val_list"]})

    def model_checkpoint(self, train_name: str, train_data: dict, val: Path | None = None,
                         seed: int | None = None) -> str | None:
        """The weights to evaluate: ``--checkpoint``, none (``--eval-only``: ``model.pretrained``),
        or the training sub-run's (``val``: the test list evaluated during training with ``--monitor``,
        which is also what ``--checkpoint-tag best`` selects on)."""
        if self.checkpoint:
            return self.checkpoint
        if self.eval_only:
            return None
        return self.train_sub(train_name, train_data, val, seed=seed)

    # ---------------------------------------------------------------------------- results
    def finish(self, protocol: str, summary: dict, **extra) -> dict:
        result = {
            "protocol": protocol, "label": self.label or self.method, "method": self.method, "model": self.arch,
            "run_dir": str(self.run_dir), "summary": summary, "std_ddof": 0,
            "label_normalisation": {k: v for k, v in self.label_files.items()},
            "splits": self.split_files, "checkpoint": self.checkpoint, "init_checkpoint": self.init_checkpoint,
            "eval_only": self.eval_only, "base_config": self.base, **extra,
            "sub_runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("data",)} for k, v in self.sub_runs.items()},
        }
        atomic_write_text(self.run_dir / "results.json", json.dumps(result, indent=1, default=str))
        table = aggregate.markdown_table([result])
        atomic_write_text(self.run_dir / "table.md", table)
        result["table"] = table
        return result


def _compact(res: dict) -> dict:
    keys = ("top1", "top5", "mean_class_accuracy", "num_videos", "num_classes", "num_failed", "views")
    return {k: res[k] for k in keys if k in res}


def parse_views(text: str | Sequence) -> list[tuple[int, int]]:
    """``"1x1,4x3"`` → ``[(1, 1), (4, 3)]`` (clips × crops; crops 1 or 3)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for it in items:
        try:
            c, k = (int(x) for x in str(it).lower().split("x"))
        except ValueError:
            raise ConfigError(f"--views: expected CLIPSxCROPS such as 4x3, got {it!r}") from None
        if c < 1 or k not in (1, 3):
            raise ConfigError(f"--views {it}: clips >= 1 and crops 1 or 3")
        out.append((c, k))
    return out


# ------------------------------------------------------------------------------ protocols
def run_fully_supervised(run: ProtocolRun, datasets: Sequence[str] = ("k400",),
                         views: Sequence[tuple[int, int]] = ((1, 1), (4, 3))) -> dict:
    summary = {}
    for name in datasets:
        ds = run.dataset(name)
        labels = run.labels(ds)
        train_data = run.data_over(ds, labels, ds.train_list())
        test = ds.test_list()
        ckpt = run.model_checkpoint(f"sup_{name}_train", train_data, test)
        summary[name] = {}
        for c, k in views:
            r = run.eval_sub(f"sup_{name}_{c}x{k}", run.data_over(ds, labels, val=test), ckpt, (c, k),
                             {"dataset": name})
            summary[name][f"{c}x{k}"] = {"top1": r["top1"], "top5": r.get("top5")}
        run.split_files[name] = {"train": str(ds.train_list()), "test": str(test)}
    return run.finish("fully_supervised", summary, views=[f"{c}x{k}" for c, k in views])


def run_few_shot(run: ProtocolRun, datasets: Sequence[str] = ("hmdb51", "ucf101"),
                 shots: Sequence[int] = (2, 4, 8, 16), seeds: Sequence[int] = (1,),
                 views: tuple[int, int] = (1, 1)) -> dict:
    per: dict = {}
    for name in datasets:
        ds = run.dataset(name)
        labels = run.labels(ds)
        test = ds.test_list()
        per[name] = {}
        for k in shots:
            per[name][k] = {}
            for seed in seeds:
                split, origin = _few_shot_file(run, ds, k, seed)
                run.split_files[f"{name}_k{k}_s{seed}"] = {"train": str(split), "origin": origin, "test": str(test)}
                sub = f"fs_{name}_k{k}_s{seed}"
                ckpt = run.model_checkpoint(sub, run.data_over(ds, labels, split), test, seed=seed)
                r = run.eval_sub(f"{sub}_eval", run.data_over(ds, labels, val=test), ckpt, views,
                                 {"dataset": name, "shots": k, "seed": seed, "split_origin": origin})
                per[name][k][seed] = r["top1"]
    summary = aggregate.summarise_few_shot(per)
    return run.finish("few_shot", summary, shots=list(shots), seeds=list(seeds), views=f"{views[0]}x{views[1]}")


def _few_shot_file(run: ProtocolRun, ds: DatasetSpec, k: int, seed: int) -> tuple[Path, str]:
    tmpl = ds.raw.get("few_shot")
    if tmpl:
        p = ds.path(str(tmpl).format(shots=k, k=k, seed=seed))
        if p.exists():
            return p, "official"
        log.warning("%s: few-shot file %s is absent; generating one", ds.name, p)
    out = run.run_dir / "splits" / ds.name / f"train1_few_shot_{k}_s{seed}.txt"
    splits.few_shot_split(out, ds.train_list(), ds.labels, k, seed)
    return out, "generated"


def run_zero_shot(run: ProtocolRun, train_dataset: str = "k400",
                  datasets: Sequence[str] = ("hmdb51", "ucf101", "k600"), k600_seeds: Sequence[int] = (1, 2, 3),
                  k600_classes: int = 160, views: tuple[int, int] = (1, 1), base_dataset: str = "k400") -> dict:
    ckpt = None
    if not run.eval_only and not run.checkpoint:
        ds = run.dataset(train_dataset)
        ckpt = run.train_sub("zs_train", run.data_over(ds, run.labels(ds), ds.train_list()),
                             ds.test_list() if run.monitor else None)
    elif run.checkpoint:
        ckpt = run.checkpoint
    per: dict = {}
    extra: dict = {}
    for name in datasets:
        ds = run.dataset(name)
        per[name] = {}
        if name == "k600" or ds.raw.get("zero_shot") or ds.raw.get("pools"):
            files, report = _k600_files(run, ds, base_dataset, k600_seeds, k600_classes)
            if report:
                extra["k600_matching"] = report
            for s, (split, labels_path, origin) in files.items():
                data = run.data_over(ds, run.labels(ds, labels_path), val=split)
                r = run.eval_sub(f"zs_{name}_split{s}", data, ckpt, views,
                                 {"dataset": name, "split": s, "split_origin": origin})
                per[name][s] = r["top1"]
                run.split_files[f"{name}_split{s}"] = {"test": str(split), "labels": str(labels_path),
                                                       "origin": origin}
        else:
            labels = run.labels(ds)
            for s in range(1, ds.num_splits() + 1):
                test = ds.test_list(s)
                r = run.eval_sub(f"zs_{name}_split{s}", run.data_over(ds, labels, val=test), ckpt, views,
                                 {"dataset": name, "split": s})
                per[name][s] = r["top1"]
                run.split_files[f"{name}_split{s}"] = {"test": str(test)}
    summary = aggregate.summarise_zero_shot(per)
    return run.finish("zero_shot", summary, train_dataset=train_dataset, views=f"{views[0]}x{views[1]}", **extra)


def _k600_files(run: ProtocolRun, ds: DatasetSpec, base_dataset: str, seeds: Sequence[int], num_classes: int):
    zs = ds.raw.get("zero_shot") or {}
    if zs.get("split") and zs.get("labels"):
        files = {}
        for s in (1, 2, 3):
            split, labels = ds.path(zs["split"].format(split=s)), ds.path(zs["labels"].format(split=s))
            if split.exists() and labels.exists():
                files[s] = (split, labels, "official")
        if files:
            return files, None
        log.warning("%s: official zero-shot files %s are absent; generating draws", ds.name, zs["split"])
    base = run.dataset(base_dataset)
    m = match_kinetics(read_label_csv(base.labels), read_label_csv(ds.labels))
    report = m.to_dict()
    log.info("K600 classes outside %s by name: %d (%s)", base_dataset, len(m.new), m.counts()["by_tier"])
    pools_raw = ds.raw.get("pools") or [{"list": ds.raw.get("val") or ds.raw.get("test")}]
    pools = []
    for p in pools_raw:
        p = p if isinstance(p, dict) else {"list": p}
        if not p.get("list"):
            raise ConfigError(f"dataset {ds.name}: 'pools' (or 'val') must name the videos to draw from")
        pools.append((ds.path(p["list"]), p.get("prefix", "")))
    out_dir = run.run_dir / "splits" / ds.name
    files = {}
    for i, seed in enumerate(seeds, 1):
        split = out_dir / f"ZS_split{i}_K600_eval.txt"
        labels = out_dir / f"ZS_split{i}_K600.csv"
        splits.k600_zero_shot_split(split, labels, pools, ds.labels, m.new, min(num_classes, len(m.new)), seed,
                                    report["counts"])
        files[i] = (split, labels, f"generated (seed {seed})")
    return files, report


def run_base_to_novel(run: ProtocolRun, datasets: Sequence[str] = ("k400", "hmdb51", "ucf101", "ssv2"),
                      seeds: Sequence[int] = (1, 2, 3), shots: int = 16, views: tuple[int, int] = (1, 1)) -> dict:
    per: dict = {}
    for name in datasets:
        ds = run.dataset(name)
        files, origin = _base_novel_files(run, ds, seeds, shots)
        base_labels = run.labels(ds, files["base_labels"])
        novel_labels = run.labels(ds, files["novel_labels"])
        per[name] = {}
        for seed in seeds:
            sub = f"b2n_{name}_s{seed}"
            ckpt = run.model_checkpoint(sub, run.data_over(ds, base_labels, files["train"][seed]),
                                        files["base_val"], seed=seed)
            info = {"dataset": name, "seed": seed, "split_origin": origin}
            b = run.eval_sub(f"{sub}_base", run.data_over(ds, base_labels, val=files["base_val"]), ckpt, views,
                             dict(info, classes="base"))
            n = run.eval_sub(f"{sub}_novel", run.data_over(ds, novel_labels, val=files["novel_val"]), ckpt, views,
                             dict(info, classes="novel"))
            per[name][seed] = {"base": b["top1"], "novel": n["top1"]}
        run.split_files[name] = {k: (str(v) if not isinstance(v, dict) else {s: str(p) for s, p in v.items()})
                                 for k, v in files.items()} | {"origin": origin}
    summary = aggregate.summarise_base_novel(per)
    return run.finish("base_to_novel", summary, seeds=list(seeds), shots=shots, views=f"{views[0]}x{views[1]}")


def _base_novel_files(run: ProtocolRun, ds: DatasetSpec, seeds: Sequence[int], shots: int):
    bn = ds.raw.get("base_novel") or {}
    need = ("base_labels", "novel_labels", "train", "base_val", "novel_val")
    if all(bn.get(k) for k in need):
        files = {k: ds.path(bn[k]) for k in need if k != "train"}
        files["train"] = {s: ds.path(str(bn["train"]).format(seed=s)) for s in seeds}
        missing = [str(p) for p in list(files.values())[:4] + list(files["train"].values()) if not p.exists()]
        if not missing:
            return files, "official"
        log.warning("%s: base-to-novel files absent (%s); generating them", ds.name, ", ".join(missing))
    out = run.run_dir / "splits" / ds.name / "base_novel"
    files = splits.base_novel_split(out, ds.train_list(), ds.test_list(), ds.labels, seeds, shots,
                                    class_seed=int(bn.get("class_seed", 0)))
    return files, "generated"
