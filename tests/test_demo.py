"""`vclip demo`: the pair metric and a shrunken end-to-end run through the CLI."""

import json

import numpy as np
import pytest
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
        # the figures are counts of the 12 held-out videos (8 of them in order pairs), and the
        # printed table shows exactly these values
        assert (r["top1"] * 12) == pytest.approx(round(r["top1"] * 12), abs=1e-9)
        assert (r["within_pair"] * 8) == pytest.approx(round(r["within_pair"] * 8), abs=1e-9)
        row = next(line for line in record["table"].splitlines() if line.startswith(r["method"]))
        assert f"{100 * r['top1']:6.1f}%" in row and f"{100 * r['within_pair']:6.1f}%" in row
    assert record["machine"]["cores"] >= 1 and "torch" in record["machine"]
    assert (out / "demo.png").stat().st_size > 1000
    for name in ("clip", "xclip"):  # both started from the saved CLIP; only the vision side moved
        assert _changed(out / "runs" / f"demo-{name}", out / "init_clip") == {"text": False, "visual": True}
    # a second run reuses the generated set (same config) instead of writing it again
    stamp = (out / "data" / "meta.json").stat().st_mtime_ns
    # 2 steps: as many as the 36 training videos make in one epoch (a full-epoch warm-up was refused)
    assert main(["demo", "--out", str(out), "--steps", "2", "--methods", "xclip", "--train-text"]) == 0
    assert (out / "data" / "meta.json").stat().st_mtime_ns == stamp
    record = json.loads((out / "demo_results.json").read_text())
    assert [r["name"] for r in record["rows"]] == ["xclip"] and record["rows"][0]["steps"] == 2
    assert record["command"].endswith("--steps 2 --seed 0 --methods xclip --train-text")
    assert _changed(out / "runs" / "demo-xclip", out / "init_clip") == {"text": True, "visual": True}
    # every file written for the user has the permissions of a plain open(): none left 0600 (the
    # initial CLIP's and the checkpoints' safetensors files were)
    from vclip.io import default_file_mode

    odd = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*")
           if p.is_file() and p.stat().st_mode & 0o777 != default_file_mode()}
    assert odd == {}


def test_demo_rejects_unknown_method_before_any_work(tmp_path, capsys):
    from vclip.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--methods", "clip,nope"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("steps", [1, 2, 9, 10, 99, 100, 281, 282, 2809, 2810, 4000])
def test_any_step_count_gets_a_warmup_the_engine_accepts(tmp_path, steps):
    """The config the demo trains with, planned by the engine for the full demo set (4,500 training
    videos, 281 steps per epoch): warm-up one epoch, at most a tenth of the run, never refused."""
    from vclip.engine.trainer import _plan

    assert demo.train_videos() == 4500
    for method in ("clip", "xclip"):
        cfg = demo.method_config(method, {}, tmp_path / "data", tmp_path, steps, 0, tmp_path / "init")
        plan = _plan(cfg, 4500 // 16, 4500, 1)
        assert plan.total_steps == steps
        assert plan.warmup_steps == min(281, steps // 10)
    assert not tmp_path.joinpath("data").exists()  # building the config touched nothing


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "-5"], "--steps must be >= 1, got -5"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--methods", " , "], "--methods ' , ': no method named"),
    (["--methods", "clip,nope"], "unknown method(s) ['nope']"),
    (["--methods", "ost"], "--methods: 'ost' cannot run in the demo's settings: model.options.spatial_descriptors"),
])
def test_argument_errors_come_before_any_work(tmp_path, monkeypatch, capsys, argv, needle):
    from vclip.cli import main

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    for name in ("ensure_synthetic", "initial_clip", "run_method"):
        monkeypatch.setattr(demo, name, no_work)
    out = tmp_path / "d"
    assert main(["demo", "--out", str(out)] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vclip demo: error: ") and needle in err[0], err
    assert not out.exists()


def test_out_must_be_a_folder(tmp_path, capsys):
    from vclip.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f), "--steps", "1"]) == 2
    assert "--out" in capsys.readouterr().err and f.read_text() == "x"


def test_demo_frame_cache_gives_the_figures_of_decoding(tmp_path, monkeypatch):
    """The demo reads its frames from the frame cache by default; ``--no-cache`` decodes every clip
    with PyAV. Same frames, so the same trained weights and the same figures (the recorded ones stay
    reproducible); the cache is built once and reused."""
    from vclip.cli import main

    monkeypatch.setattr(demo, "DEMO_SYNTH", {**demo.DEMO_SYNTH, "videos_per_class": 4})
    monkeypatch.setitem(demo.DEMO_BASE["data"], "num_workers", 0)
    torch.set_num_threads(1)
    rows, weights = {}, {}
    for flag in ([], ["--no-cache"]):
        out = tmp_path / ("cache" if not flag else "pyav")
        assert main(["demo", "--out", str(out), "--steps", "4", "--methods", "xclip"] + flag) == 0
        record = json.loads((out / "demo_results.json").read_text())
        assert record["frames_from"] == ("frame cache" if not flag else "pyav")
        rows[bool(flag)] = [{k: v for k, v in r.items() if k != "train_seconds"} for r in record["rows"]]
        from vclip.engine.checkpoint import load_checkpoint

        weights[bool(flag)] = load_checkpoint(out / "runs" / "demo-xclip" / "checkpoints" / "last")[0]
    assert (tmp_path / "cache" / "cache" / "cache_manifest.json").is_file()
    assert not (tmp_path / "pyav" / "cache").exists()
    assert rows[False] == rows[True]
    assert weights[False].keys() == weights[True].keys()
    assert all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])
    # the second run reuses the cache: nothing rebuilt
    from vclip.data import prepare as prep

    res = prep.prepare(tmp_path / "cache" / "data", tmp_path / "cache" / "cache",
                       opts=prep.PrepareOptions(short_side=0, cache=True), progress=False)
    assert {r.status for r in res} == {"skipped"}
