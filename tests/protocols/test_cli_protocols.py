"""``vclip run`` through the command line (in-process ``vclip.cli.main``) for the fully-supervised,
few-shot and zero-shot protocols and the options ``--eval-only``, ``--checkpoint``,
``--checkpoint-tag`` and ``--monitor``, on the synthetic protocol datasets (conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vclip.cli import main


def _run(data: Path, cfg: Path, out: Path, protocol: str, *args: str) -> dict:
    rc = main(["run", protocol, "--data", str(data / "spec.yaml"), "--out", str(out), "-c", str(cfg), *args])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _same_scores(a: dict, b: dict) -> None:
    for k in ("top1", "top5", "mean_class_accuracy", "num_videos"):
        assert a[k] == b[k], (k, a[k], b[k])


@pytest.fixture(scope="module")
def trained_k400(synth_protocol_data, tiny_config, tmp_path_factory) -> dict:
    """``vclip run fully-supervised --monitor --checkpoint-tag best`` on k400: its results."""
    out = tmp_path_factory.mktemp("sup") / "run"
    res = _run(synth_protocol_data, tiny_config, out, "fully-supervised", "--datasets", "k400", "--views", "1x1",
               "--monitor", "--checkpoint-tag", "best")
    return {"dir": out, "res": res}


def test_fully_supervised_cli_monitor_and_best_checkpoint(trained_k400):
    out, res = trained_k400["dir"], trained_k400["res"]
    assert res["protocol"] == "fully_supervised" and res["eval_only"] is False
    sub = res["sub_runs"]
    train_name = next(k for k, v in sub.items() if v.get("kind") == "train")
    evals = [v for v in sub.values() if v.get("kind") == "eval"]
    assert len(evals) == 1
    # --checkpoint-tag best: the evaluated checkpoint is the training sub-run's best one
    from vclip.engine.checkpoint import CheckpointManager

    best = CheckpointManager(out / train_name).find("best")
    assert best is not None and evals[0]["checkpoint"] == str(best)
    assert evals[0]["checkpoint"] != str(CheckpointManager(out / train_name).find("last"))
    # --monitor: validation metrics were written during the training sub-run
    val = [m for m in _metrics(out / train_name) if any(k.startswith("val/") for k in m)]
    assert val and val[0]["val/num_videos"] == 16
    assert res["summary"]["k400"]["1x1"]["top1"] == evals[0]["top1"]


def test_fully_supervised_cli_without_monitor_writes_no_validation(synth_protocol_data, tiny_config, tmp_path):
    res = _run(synth_protocol_data, tiny_config, tmp_path / "r", "fully-supervised", "--datasets", "k400",
               "--views", "1x1")
    train_name = next(k for k, v in res["sub_runs"].items() if v.get("kind") == "train")
    assert not [m for m in _metrics(tmp_path / "r" / train_name) if any(k.startswith("val/") for k in m)]
    ev = next(v for v in res["sub_runs"].values() if v.get("kind") == "eval")
    assert Path(ev["checkpoint"]).name == "last"  # the default tag


def test_checkpoint_is_evaluated_as_vclip_eval_evaluates_it(trained_k400, synth_protocol_data, tiny_config,
                                                             tmp_path):
    data = synth_protocol_data
    ckpt = next(v["checkpoint"] for v in trained_k400["res"]["sub_runs"].values() if v.get("kind") == "eval")
    res = _run(data, tiny_config, tmp_path / "r", "fully-supervised", "--datasets", "k400", "--views", "1x1",
               "--checkpoint", ckpt)
    assert res["checkpoint"] == ckpt
    assert [v["kind"] for v in res["sub_runs"].values()] == ["eval"]  # no training sub-run
    ev = next(iter(res["sub_runs"].values()))
    assert ev["checkpoint"] == ckpt
    assert not list((tmp_path / "r").rglob("model.safetensors"))
    # `vclip eval` of the same checkpoint on the same list
    out = tmp_path / "e"
    assert main(["eval", "--checkpoint", ckpt, "--annotation", str(data / "ann" / "k400_val.txt"),
                 f"output_dir={out}", "name=e"]) == 0
    _same_scores(ev, json.loads((out / "e" / "results_eval.json").read_text()))
    # and the training run's own evaluation of it
    _same_scores(ev, next(v for v in trained_k400["res"]["sub_runs"].values() if v.get("kind") == "eval"))


def test_few_shot_cli_with_checkpoint(trained_k400, synth_protocol_data, tiny_config, tmp_path):
    ckpt = next(v["checkpoint"] for v in trained_k400["res"]["sub_runs"].values() if v.get("kind") == "eval")
    res = _run(synth_protocol_data, tiny_config, tmp_path / "fs", "few-shot", "--datasets", "hmdb51",
               "--shots", "2", "--seeds", "1", "--checkpoint", ckpt)
    assert res["protocol"] == "few_shot"
    assert {v["kind"] for v in res["sub_runs"].values()} == {"eval"}
    assert all(v["checkpoint"] == ckpt for v in res["sub_runs"].values())
    assert not list((tmp_path / "fs").rglob("model.safetensors"))


def test_few_shot_cli_trains_one_sub_run_per_shot(synth_protocol_data, tiny_config, tmp_path):
    res = _run(synth_protocol_data, tiny_config, tmp_path / "fs", "few-shot", "--datasets", "hmdb51",
               "--shots", "1,2", "--seeds", "1")
    trains = {k: v for k, v in res["sub_runs"].items() if v.get("kind") == "train"}
    assert len(trains) == 2
    assert set(res["summary"]["hmdb51"]) == {"1", "2"}
    for k in trains:
        assert (tmp_path / "fs" / k / "checkpoints").is_dir()


def test_zero_shot_cli_eval_only_evaluates_the_configured_model(synth_protocol_data, tiny_config, tmp_path):
    data = synth_protocol_data
    res = _run(data, tiny_config, tmp_path / "zs", "zero-shot", "--datasets", "hmdb51", "--eval-only")
    assert res["protocol"] == "zero_shot" and res["eval_only"] is True and res["checkpoint"] is None
    sub = res["sub_runs"]
    assert set(sub) == {"zs_hmdb51_split1", "zs_hmdb51_split2", "zs_hmdb51_split3"}
    assert all(v["kind"] == "eval" and v["checkpoint"] is None for v in sub.values())
    assert not list((tmp_path / "zs").rglob("checkpoints"))  # nothing was trained
    # each split equals `vclip eval` of the configured (model.pretrained / arch) model on that list
    for s in (1, 2, 3):
        out = tmp_path / f"e{s}"
        assert main(["eval", "-c", str(tiny_config), f"data.root={data / 'synth'}",
                     f"data.labels={data / 'ann' / 'hmdb51_labels.csv'}",
                     f"data.val_list={data / 'ann' / f'hmdb51_test{s}.txt'}", f"output_dir={out}", "name=e"]) == 0
        _same_scores(sub[f"zs_hmdb51_split{s}"], json.loads((out / "e" / "results_eval.json").read_text()))
    assert res["summary"]["hmdb51"]["n"] == 3
