"""benchmarks/pretrain_step_cost.py: whole-table vs used-rows pretraining steps (docs/suite.md)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

def test_both_variants_train_the_same_model_and_are_timed(tmp_path, load_benchmark):
    from vclip.data.world import generate_world

    mod = load_benchmark("pretrain_step_cost")
    world = tmp_path / "w"
    generate_world(world, size="tiny", workers=1, seed=0)
    out = tmp_path / "cost.json"
    assert mod.main(["--world", str(world), "--arch", "tiny", "--blocks", "2", "--steps", "3", "--batch", "16",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    # the same batches from the same initial model: equal losses (a variant that dropped a row's
    # update or read other frames would differ from the first steps on)
    assert r["max_loss_difference"] < 1e-4
    assert r["frames"] == 600 and r["blocks"] == 2 and r["steps_per_block"] == 3 and r["threads"] == 1
    for name in ("table", "rows"):
        assert 0 < r[name]["cpu_ms_min"] <= r[name]["cpu_ms_median"]
    assert r["cpu_ratio_median"] == pytest.approx(r["rows"]["cpu_ms_median"] / r["table"]["cpu_ms_median"])
