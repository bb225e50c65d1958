"""Aggregation against hand-computed values, and the tables' layout."""

from __future__ import annotations

import math

import pytest

from vclip.protocols.aggregate import (
    harmonic_mean, markdown_table, mean_std, summarise_base_novel, summarise_few_shot, summarise_zero_shot,
)


def test_mean_std_hand_computed():
    s = mean_std([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6)
    # population std: sqrt((0.01 + 0 + 0.01) / 3)
    assert s["std"] == pytest.approx(math.sqrt(0.02 / 3)) == pytest.approx(0.0816497, abs=1e-6)
    assert mean_std([0.5, 0.6, 0.7], ddof=1)["std"] == pytest.approx(0.1)
    assert mean_std([0.42])["std"] == 0.0
    with pytest.raises(ValueError):
        mean_std([])


def test_harmonic_mean_hand_computed():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(0.96 / 1.4) == pytest.approx(0.6857143, abs=1e-7)
    # ViFi-CLIP's HMDB row (paper, Table 3): base 77.1, novel 59.9 -> HM 67.4
    assert 100 * harmonic_mean(0.771, 0.599) == pytest.approx(67.4, abs=0.05)
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_base_novel_summary_uses_the_mean_over_seeds():
    s = summarise_base_novel({"hmdb51": {1: {"base": 0.8, "novel": 0.5}, 2: {"base": 0.6, "novel": 0.7}}})
    v = s["hmdb51"]
    assert v["base"]["mean"] == pytest.approx(0.7) and v["novel"]["mean"] == pytest.approx(0.6)
    assert v["hm"] == pytest.approx(2 * 0.7 * 0.6 / 1.3)           # HM of the means ...
    assert v["hm_per_seed"]["1"] == pytest.approx(2 * 0.8 * 0.5 / 1.3)  # ... per-seed HMs kept too


def _few_shot_result(label, vals):
    per = {"hmdb51": {k: {1: v} for k, v in zip((2, 4, 8, 16), vals[:4])},
           "ucf101": {k: {1: v} for k, v in zip((2, 4, 8, 16), vals[4:])}}
    return {"protocol": "few_shot", "label": label, "summary": summarise_few_shot(per)}


def test_few_shot_table_layout():
    a = _few_shot_result("ViFi-CLIP", [0.574, 0.627, 0.645, 0.663, 0.804, 0.857, 0.901, 0.925])
    b = _few_shot_result("X-CLIP", [0.535, 0.577, 0.623, 0.644, 0.763, 0.838, 0.883, 0.914])
    lines = markdown_table([a, b]).splitlines()
    assert lines[0] == "**few-shot**"
    assert lines[2] == ("| Method | HMDB-51 K=2 | HMDB-51 K=4 | HMDB-51 K=8 | HMDB-51 K=16 | "
                        "UCF-101 K=2 | UCF-101 K=4 | UCF-101 K=8 | UCF-101 K=16 |")
    assert lines[4] == "| ViFi-CLIP | 57.4 | 62.7 | 64.5 | 66.3 | 80.4 | 85.7 | 90.1 | 92.5 |"
    assert lines[5] == "| X-CLIP | 53.5 | 57.7 | 62.3 | 64.4 | 76.3 | 83.8 | 88.3 | 91.4 |"


def test_few_shot_several_seeds_show_mean_and_std():
    s = summarise_few_shot({"hmdb51": {2: {1: 0.5, 2: 0.7}}})
    r = {"protocol": "few_shot", "label": "m", "summary": s}
    assert markdown_table([r]).splitlines()[4] == "| m | 60.0 ± 10.0 |"


def test_zero_shot_and_base_novel_tables_and_missing_cells():
    zs = {"protocol": "zero_shot", "label": "A",
          "summary": summarise_zero_shot({"hmdb51": {1: 0.5, 2: 0.6, 3: 0.7}, "ucf101": {1: 0.8, 2: 0.8, 3: 0.8},
                                          "k600": {1: 0.70, 2: 0.72, 3: 0.74}})}
    zs_b = {"protocol": "zero_shot", "label": "B", "summary": summarise_zero_shot({"hmdb51": {1: 0.4}})}
    b2n = {"protocol": "base_to_novel", "label": "A",
           "summary": summarise_base_novel({"ucf101": {1: {"base": 0.8, "novel": 0.6}}})}
    text = markdown_table([zs, b2n, zs_b])
    tables = text.strip().split("\n\n")
    assert tables[0] == "**zero-shot**"
    zl = tables[1].splitlines()
    assert zl[0] == "| Method | HMDB-51 | UCF-101 | K600 |"
    assert zl[2] == "| A | 60.0 ± 8.2 | 80.0 ± 0.0 | 72.0 ± 1.6 |"
    assert zl[3] == "| B | 40.0 ± 0.0 | – | – |"
    bl = tables[3].splitlines()
    assert bl[0] == "| Method | UCF-101 base | UCF-101 novel | UCF-101 HM |"
    assert bl[2] == "| A | 80.0 | 60.0 | 68.6 |"
