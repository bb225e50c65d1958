"""Aggregation of protocol results and their tables in the papers' layout.

* :func:`mean_std` — mean ± standard deviation over splits/draws/seeds (population std, ``ddof=0``,
  as ``numpy.std``; the papers do not say which; ``ddof`` is recorded in the results);
* :func:`harmonic_mean` — HM = 2·B·N / (B + N) of the seed-averaged base and novel accuracies;
* :func:`protocol_columns` / :func:`markdown_table` — one table row per run, columns per protocol:
  few-shot ``<dataset> K=<k>``; base-to-novel ``<dataset> base|novel|HM``; zero-shot ``<dataset>``
  as ``mean ± std``; fully-supervised ``<dataset> <views> top-1|top-5``.

Accuracies are fractions in [0, 1] in the JSON and percentages in the tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

#: display names of the datasets in tables (others print as given)
DISPLAY = {"hmdb51": "HMDB-51", "ucf101": "UCF-101", "k400": "K400", "k600": "K600", "ssv2": "SSv2"}


def mean_std(values: Sequence[float], ddof: int = 0) -> dict:
    """``{"mean", "std", "n", "values", "ddof"}``; std is 0 for one value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - ddof)) if n - ddof > 0 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": vals, "ddof": ddof}


def harmonic_mean(base: float, novel: float) -> float:
    """2·B·N / (B + N); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def pct_pm(stat: dict | None, digits: int = 1) -> str:
    if not stat:
        return "–"
    return f"{100 * stat['mean']:.{digits}f} ± {100 * stat['std']:.{digits}f}"


def _name(ds: str) -> str:
    return DISPLAY.get(ds, ds)


# ----------------------------------------------------------------------------- summaries
def summarise_few_shot(per_run: dict[str, dict[int, dict[int, float]]]) -> dict:
    """``{dataset: {shots: {seed: top1}}}`` → ``{dataset: {shots: mean_std}}``."""
    return {ds: {int(k): mean_std(list(seeds.values())) for k, seeds in sorted(by_k.items())}
            for ds, by_k in per_run.items()}


def summarise_base_novel(per_seed: dict[str, dict[int, dict[str, float]]]) -> dict:
    """``{dataset: {seed: {"base": top1, "novel": top1}}}`` → base/novel mean ± std and HM of the
    means (the papers' HM), plus the per-seed HMs."""
    out = {}
    for ds, seeds in per_seed.items():
        b = mean_std([v["base"] for v in seeds.values()])
        n = mean_std([v["novel"] for v in seeds.values()])
        out[ds] = {"base": b, "novel": n, "hm": harmonic_mean(b["mean"], n["mean"]),
                   "hm_per_seed": {str(s): harmonic_mean(v["base"], v["novel"]) for s, v in seeds.items()}}
    return out


def summarise_zero_shot(per_split: dict[str, dict[int, float]]) -> dict:
    """``{dataset: {split: top1}}`` → ``{dataset: mean_std}``."""
    return {ds: mean_std(list(v.values())) for ds, v in per_split.items()}


# ---------------------------------------------------------------------------------- tables
def protocol_columns(result: dict) -> list[tuple[str, str]]:
    """(column, cell) pairs of one protocol result (a ``RUN_DIR/results.json``)."""
    p, s = result["protocol"], result["summary"]
    cols: list[tuple[str, str]] = []
    if p == "few_shot":
        for ds, by_k in s.items():
            for k, stat in sorted(by_k.items(), key=lambda kv: int(kv[0])):
                cell = pct(stat["mean"]) if stat["n"] == 1 else pct_pm(stat)
                cols.append((f"{_name(ds)} K={k}", cell))
    elif p == "base_to_novel":
        for ds, v in s.items():
            cols += [(f"{_name(ds)} base", pct(v["base"]["mean"])), (f"{_name(ds)} novel", pct(v["novel"]["mean"])),
                     (f"{_name(ds)} HM", pct(v["hm"]))]
    elif p == "zero_shot":
        for ds, stat in s.items():
            cols.append((_name(ds), pct_pm(stat)))
    elif p == "fully_supervised":
        for ds, views in s.items():
            for view, m in views.items():
                cols += [(f"{_name(ds)} {view} top-1", pct(m["top1"])), (f"{_name(ds)} {view} top-5", pct(m["top5"]))]
    else:
        raise ValueError(f"unknown protocol {p!r}")
    return cols


def row_label(result: dict) -> str:
    label = result.get("label") or result.get("method", "?")
    return label


def markdown_table(results: Sequence[dict]) -> str:
    """One row per result, the union of their columns (first-seen order); ``–`` where a run lacks
    a column. Results of different protocols get separate tables."""
    out = []
    protocols: list[str] = []
    for r in results:
        if r["protocol"] not in protocols:
            protocols.append(r["protocol"])
    for p in protocols:
        rows = [(row_label(r), dict(protocol_columns(r))) for r in results if r["protocol"] == p]
        cols: list[str] = []
        for r in results:
            if r["protocol"] == p:
                cols += [c for c, _ in protocol_columns(r) if c not in cols]
        lines = [f"**{p.replace('_', '-')}**", "",
                 "| Method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for label, cells in rows:
            lines.append(f"| {label} | " + " | ".join(cells.get(c, "–") for c in cols) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def load_result(run_dir) -> dict:
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    data = json.loads(path.read_text())
    if "protocol" not in data or "summary" not in data:
        raise ValueError(f"{path}: not a protocol result (no 'protocol'/'summary'; made by `vclip run`?)")
    return data
