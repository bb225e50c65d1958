"""Two processes under torchrun (gloo, CPU): training equals one process with the same global
batch, and evaluation scores every video exactly once (failed videos reported by path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine_utils import read_metrics, run, torchrun_cmd
from vclip.config import load_config
from vclip.engine.evaluate import evaluate
from vclip.engine.trainer import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

STEPS = 4


def test_two_processes_equal_one_with_the_same_global_batch(synth, make_config):
    """2 processes × batch 4 (gloo, DDP) vs 1 process × batch 8: the logged loss (averaged over the
    processes) and the LR agree to 1e-5 at every step, and so do the final weights."""
    # Adam's eps at 1e-4 (not 1e-8): an element whose gradient is rounding noise (e.g. the key part of
    # the attention's in-projection bias, to which softmax is blind) would otherwise move by ±lr per
    # step in whichever direction the noise points, in one run and not the other. Real gradients here
    # are ≥ 1e-3, so the steps still move every trained weight.
    common = ["data.val_list=null", f"train.max_steps={STEPS}", "train.log_every=1", "train.eps=1e-4"]
    two = make_config("two", data={"batch_size": 4})
    run(torchrun_cmd(2, "train", "-c", two, *common))
    one = load_config([str(make_config("one", data={"batch_size": 8}))], common)
    train(one)

    run_two = one.run_dir.parent / "two"
    m1, m2 = read_metrics(one.run_dir), read_metrics(run_two)
    assert [m["step"] for m in m1] == [m["step"] for m in m2] == list(range(1, STEPS + 1))
    for a, b in zip(m1, m2):
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
        assert b["epoch"] == pytest.approx(a["epoch"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    assert len({round(m["loss"], 4) for m in m1}) > 1  # the model did change between steps
    w1 = load_file(str(one.run_dir / "checkpoints" / "last" / "model.safetensors"))
    w2 = load_file(str(run_two / "checkpoints" / "last" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6, msg=k)  # measured: ≤ 6e-8
    # rank 1 logs to its own file only; the metrics file and checkpoints are rank 0's
    assert (run_two / "log_rank1.txt").is_file()
    meta = json.loads((run_two / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["step"] == STEPS and len(torch.load(run_two / "checkpoints" / "last" / "train_state.pt",
                                                    weights_only=True)["rng"]) == 2


def test_two_process_evaluation_counts_every_video_once(synth, make_config, tmp_path):
    """49 videos (48 + a zero-byte file) over 2 processes with 2 views each: every video is scored
    exactly once, the broken one is reported by path, and the metrics equal a 1-process run."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"")
    lines = (synth / "val.txt").read_text().splitlines()
    val = tmp_path / "val_with_broken.txt"
    val.write_text("\n".join(lines[:20] + [f"{broken} 3"] + lines[20:]) + "\n")  # absolute path: root is ignored
    over = [f"data.val_list={val}", "eval.num_clips=2", "data.num_workers=1", "data.eval_batch_size=5"]

    two = make_config("eval2")
    p = run(torchrun_cmd(2, "eval", "-c", two, *over))
    assert "1 failed to decode" in p.stdout
    got = json.loads((tmp_path / "runs" / "eval2" / "results_eval.json").read_text())
    assert (tmp_path / "runs" / "eval2" / "confusion_eval.png").stat().st_size > 0

    assert got["num_videos"] == len(lines) == 48 and got["num_failed"] == 1
    assert got["num_videos"] + got["num_failed"] == len(lines) + 1
    assert sum(got["per_class_count"]) == 48 and np.asarray(got["confusion"]).sum() == 48
    (failed,) = got["failed_videos"]
    assert failed["index"] == 20 and failed["path"] == str(broken) and failed["error"]
    assert got["views"] == {"clips": 2, "crops": 1, "aggregation": "softmax_sum"}

    one = load_config([str(make_config("eval1"))], over + ["data.num_workers=0"])
    ref = evaluate(one)
    assert ref["num_videos"] == 48 and ref["num_failed"] == 1
    assert got["top1"] == ref["top1"] and got["per_class_count"] == ref["per_class_count"]
    assert got["confusion"] == ref["confusion"].tolist()
