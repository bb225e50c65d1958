"""`vclip demo`: the pair metric and a shrunken end-to-end run through the CLI."""

import json

import numpy as np
import torch

from vclip import demo


def test_pair_accuracy_compares_only_the_pair_partner():
    scores = np.zeros((3, 12))
    targets = np.array([0, 1, 8])  # two order-pair videos and a single-frame one (ignored)
    scores[0, 0], scores[0, 1] = 2.0, 1.0  # right over its partner, though class 5 wins overall
    scores[0, 5] = 9.0
    scores[1, 0], scores[1, 1] = 3.0, 1.0  # wrong: its partner (0) outscores it
    assert demo.pair_accuracy(scores, targets) == 0.5
    assert demo.pair_accuracy(scores[2:], targets[2:]) is None


def _changed(run_dir, init_dir) -> dict[str, bool]:
    """Per tower: did training move the weights away from the demo's initial CLIP?"""
    from safetensors.torch import load_file

    from vclip.engine.checkpoint import load_checkpoint

    trained = load_checkpoint(run_dir / "checkpoints" / "last")[0]
    init = load_file(str(init_dir / "model.safetensors"))
    out = {}
    for tower in ("text", "visual"):
        keys = [k for k in init if k.startswith(tower + ".")]
        assert keys
        out[tower] = any(not torch.equal(trained["clip." + k], init[k]) for k in keys)
    return out


def test_demo_runs_end_to_end_small(tmp_path, monkeypatch, capsys):
    """The whole command on a shrunken set and a few steps: data, shared initial CLIP, both methods
    (text tower frozen unless --train-text), table, JSON and plot. (The real figures come from the
    full run; see README.)"""
    from vclip.cli import main

    monkeypatch.setattr(demo, "DEMO_SYNTH", {**demo.DEMO_SYNTH, "videos_per_class": 4})
    monkeypatch.setitem(demo.DEMO_BASE["data"], "num_workers", 0)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "CLIP-mean" in text and "X-CLIP" in text and "within pair" in text
    record = json.loads((out / "demo_results.json").read_text())
    assert [r["name"] for r in record["rows"]] == ["clip", "xclip"]
    for r in record["rows"]:
        assert r["steps"] == 3 and r["val_videos"] == 12  # 1 held-out video per class
        assert 0 <= r["top1"] <= 1 and 0 <= r["within_pair"] <= 1
    assert record["machine"]["cores"] >= 1 and "torch" in record["machine"]
    assert (out / "demo.png").stat().st_size > 1000
    for name in ("clip", "xclip"):  # both started from the saved CLIP; only the vision side moved
        assert _changed(out / "runs" / f"demo-{name}", out / "init_clip") == {"text": False, "visual": True}
    # a second run reuses the generated set (same config) instead of writing it again
    stamp = (out / "data" / "meta.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--steps", "4", "--methods", "xclip", "--train-text"]) == 0
    assert (out / "data" / "meta.json").stat().st_mtime_ns == stamp
    record = json.loads((out / "demo_results.json").read_text())
    assert [r["name"] for r in record["rows"]] == ["xclip"]
    assert record["command"].endswith("--steps 4 --seed 0 --methods xclip --train-text")
    assert _changed(out / "runs" / "demo-xclip", out / "init_clip") == {"text": True, "visual": True}


def test_demo_rejects_unknown_method_before_any_work(tmp_path, capsys):
    from vclip.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--methods", "clip,nope"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
