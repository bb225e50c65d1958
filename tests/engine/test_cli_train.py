"""The ``vclip train`` / ``vclip eval`` / ``vclip predict`` commands end to end on the synthetic set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from engine_utils import base_config, deep_update, read_metrics, run, vclip_cmd
from vclip.data.synthetic import CLASSES

PREDICT_LABELS = "red star,blue star,hexagon,cross,circle moving right"


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory) -> Path:
    """``vclip train -c cfg.yaml key=value...``: 2 epochs of 9 steps, evaluated after each epoch."""
    out = tmp_path_factory.mktemp("cli")
    cfg = deep_update(base_config(synth, out / "runs", "cli"), {
        "data": {"batch_size": 16}, "train": {"epochs": 2, "warmup_epochs": 0.5, "log_every": 3}})
    path = out / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = run(vclip_cmd("train", "-c", path, "train.lr=2e-3", "name=cli"))
    assert "top-1" in p.stdout and "over 48 videos" in p.stdout, p.stdout
    assert "Traceback" not in p.stderr
    return out / "runs" / "cli"


def test_train_writes_the_run_directory(trained):
    for name in ("config.yaml", "metrics.jsonl", "results.json", "results_epoch1.json", "results_epoch2.json",
                 "confusion.png", "log_rank0.txt"):
        assert (trained / name).is_file(), name
    assert (trained / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for tag in ("last", "best"):
        d = trained / "checkpoints" / tag
        assert {"model.safetensors", "train_state.pt", "meta.json"} <= {f.name for f in d.iterdir()}, tag
    meta = json.loads((trained / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["step"] == 18 and meta["epoch"] == 2 and meta["method"] == "clip"
    best = json.loads((trained / "checkpoints" / "best" / "meta.json").read_text())
    epochs = [json.loads((trained / f"results_epoch{e}.json").read_text())["top1"] for e in (1, 2)]
    assert best["metric"] == max(epochs)

    cfg = yaml.safe_load((trained / "config.yaml").read_text())  # the resolved config, overrides included
    assert cfg["train"]["lr"] == 2e-3 and cfg["name"] == "cli" and cfg["model"]["arch"] == "tiny"

    results = json.loads((trained / "results.json").read_text())
    assert results["num_videos"] == 48 and results["num_failed"] == 0 and results["failed_videos"] == []
    assert 0 <= results["top1"] <= results["top5"] <= 1
    assert set(results["per_class"]) == set(CLASSES)
    assert sum(v["videos"] for v in results["per_class"].values()) == 48
    assert results["training"]["steps"] == 18
    assert len(results["confusion"]) == len(CLASSES)

    metrics = read_metrics(trained)
    train_lines = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_lines] == [3, 6, 9, 12, 15, 18]
    assert all(math.isfinite(m["loss"]) and m["lr"] >= 0 for m in train_lines)
    val_lines = [m for m in metrics if "val/top1" in m]
    assert [m["step"] for m in val_lines] == [9, 18]


def test_eval_command_with_checkpoint(trained):
    p = run(vclip_cmd("eval", "-c", trained / "config.yaml", "--checkpoint", trained / "checkpoints" / "best",
                      "name=cli-eval"))
    assert "top-1" in p.stdout
    assert "randomly initialised" not in p.stderr  # the checkpoint holds every weight
    out = trained.parent / "cli-eval"
    got = json.loads((out / "results_eval.json").read_text())
    assert (out / "confusion_eval.png").is_file()
    best_epoch = json.loads((trained / "checkpoints" / "best" / "meta.json").read_text())["epoch"]
    expected = json.loads((trained / f"results_epoch{best_epoch}.json").read_text())
    assert got["num_videos"] == 48 and got["top1"] == expected["top1"]
    assert got["confusion"] == expected["confusion"]


def test_cli_config_errors_are_one_line(trained, capsys):
    """Errors before any work print one line and exit with 2 (run in this process: no subprocess)."""
    from vclip.cli import main

    assert main(["train", "-c", str(trained / "config.yaml"), "train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "vclip train: error: unknown config key 'train.lrr'; did you mean 'train.lr'?" in err
    assert "Traceback" not in err
    assert main(["eval", "-c", str(trained / "config.yaml"), "--checkpoint", str(trained / "nope")]) == 2
    err = capsys.readouterr().err
    assert "vclip eval: error:" in err and "nope" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ predict

def _val_videos(synth: Path, classes: list[int], n: int = 1) -> list[Path]:
    out = []
    for line in (synth / "val.txt").read_text().splitlines():
        rel, label = line.split()
        if int(label) in classes and len(out) < n:
            out.append(synth / rel)
    return out


def _check_top(top: list[dict], names: list[str], k: int) -> None:
    assert len(top) == k
    assert all(t["class"] in names for t in top)
    assert len({t["class"] for t in top}) == k
    probs = [t["probability"] for t in top]
    assert all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1 + 1e-3  # rounded to 4 decimals


def test_predict_with_checkpoint_json(synth, trained):
    videos = _val_videos(synth, [8, 9, 10, 11], n=2)
    p = run(vclip_cmd("predict", *videos, "--labels", PREDICT_LABELS, "--checkpoint",
                      trained / "checkpoints" / "last", "--json", "--top-k", "3"))
    items = json.loads(p.stdout)
    assert [i["video"] for i in items] == [str(v) for v in videos]
    for item in items:
        _check_top(item["top"], PREDICT_LABELS.split(","), 3)
    assert "randomly initialised" not in p.stderr  # the checkpoint holds every weight


def test_predict_text_output_and_broken_video(synth, trained, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red star\nblue star\nhexagon\n")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    (good,) = _val_videos(synth, [8])
    p = run(vclip_cmd("predict", good, broken, "--labels-file", labels, "--checkpoint",
                      trained / "checkpoints" / "last"), check=False)
    assert p.returncode == 1
    assert "Traceback" not in p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == str(good)
    ranked = [line.split() for line in lines[1:4]]
    assert [r[0] for r in ranked] == ["1.", "2.", "3."]
    probs = [float(r[-1].rstrip("%")) for r in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    assert {" ".join(r[1:-1]) for r in ranked} == {"red star", "blue star", "hexagon"}
    assert lines[4] == str(broken)
    assert lines[5].startswith("  error:") and str(broken) in lines[5]


def test_predict_random_init_warns(synth, trained):
    (video,) = _val_videos(synth, [0])
    p = run(vclip_cmd("predict", video, "--labels", "a,b,c", "-c", trained / "config.yaml", "--json"))
    warnings = [line for line in p.stderr.splitlines() if "randomly initialised" in line]
    assert len(warnings) == 1 and "model.pretrained=" in warnings[0]
    (item,) = json.loads(p.stdout)
    _check_top(item["top"], ["a", "b", "c"], 3)


def test_predict_usage_errors(synth, trained, capsys):
    from vclip.cli import main

    (video,) = _val_videos(synth, [0])
    assert main(["predict", str(video), "--labels", " , ", "-c", str(trained / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "vclip predict: error: --labels: no class names given" in err and "Traceback" not in err
    assert main(["predict", str(video), "--checkpoint", str(trained / "missing")]) == 2
    err = capsys.readouterr().err
    assert "vclip predict: error:" in err and "missing" in err
