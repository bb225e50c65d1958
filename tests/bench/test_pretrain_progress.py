"""benchmarks/pretrain_progress.py: zero-shot accuracy of a pretraining state file (docs/suite.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def progress_module(load_benchmark):
    return load_benchmark("pretrain_progress")


def test_scores_the_model_of_a_stopped_pretraining(progress_module, tmp_path, monkeypatch):
    """The state saved at step 80 of a stopped run is scored as that model: colour learned (chance
    0.25; the same run's initial model is near it), the step and loss of the file reported."""
    from vclip import pretrain as P
    from vclip.data.world import generate_world

    world = tmp_path / "w"
    generate_world(world, size="tiny", workers=1, seed=0)
    calls = {"n": 0}
    real = torch.optim.AdamW.step

    def stop_after_80(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 80:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", stop_after_80)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(world, tmp_path / "clip.pt", arch="tiny", steps=100, batch=32, lr=3e-3, seed=0, save_every=40)
    monkeypatch.setattr(torch.optim.AdamW, "step", real)
    state = tmp_path / "clip.pt.state.pt"
    out = tmp_path / "progress.json"
    assert progress_module.main([str(state), "--world", str(world), "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    saved = torch.load(state, weights_only=True)
    assert r["step"] == 80 and r["loss"] == pytest.approx(sum(saved["losses"][-50:]) / 50)
    assert r["chance"]["colour"] == 0.25 and r["zero_shot"]["colour"] >= 0.5  # measured 0.65 (init 0.29)
    assert saved["init_zero_shot"]["accuracy"]["colour"] < 0.45
    with pytest.raises(Exception, match="not a `vclip pretrain` state file"):
        progress_module.score_state(_other(tmp_path), world)


def _other(tmp_path: Path) -> Path:
    p = tmp_path / "other.pt"
    torch.save({"model": {}}, p)
    return p
