"""``vclip bench`` on the CPU: a smoke test of the record it writes (fields present, numbers
positive and finite). No timing thresholds: figures depend on the machine."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vclip.cli import main


@pytest.fixture
def one_thread():
    # one thread: a parallel region on a busy 2-core runner can wait milliseconds for a descheduled thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_head(rec: dict, kind: str) -> None:
    assert rec["kind"] == kind
    assert rec["command"].startswith("vclip bench " + kind)
    assert rec["date"] and rec["device"] == "cpu"
    m = rec["machine"]
    for key in ("cpu", "cpu_count", "torch", "python", "platform"):
        assert m[key], key
    assert m["torch"] == torch.__version__


@pytest.mark.parametrize("kind,unit", [("infer", "views_per_s"), ("train", "clips_per_s")])
def test_bench_cpu_json(tmp_path, capsys, one_thread, kind, unit):
    out = tmp_path / f"{kind}.json"
    argv = ["bench", kind, "--arch", "tiny", "--batch", "2", "--frames", "4", "--classes", "5",
            "--repeats", "1", "--warmup", "1", "--ceiling-size", "128", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    assert unit.replace("_per_s", "") + "/s" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    _check_head(rec, kind)
    c = rec["config"]
    assert (c["method"], c["arch"], c["batch"], c["frames"], c["dtype"]) == ("xclip", "tiny", 2, 4, "fp32")
    t = rec["timing"]
    assert len(t["runs_s"]) == 1 and t["timer"] == "perf_counter"
    assert all(_positive(rec["timing"][k]) for k in ("median_s", "min_s", "max_s"))
    assert all(_positive(v) for v in rec[unit].values())
    assert rec[unit]["min"] <= rec[unit]["median"] <= rec[unit]["max"]
    assert _positive(rec["flops"]["gflops_per_view"]) and _positive(rec["flops"]["paper_gflops_per_view_fvcore"])
    assert _positive(rec["ceiling"]["tflops"]) and rec["ceiling"]["n"] == 128
    assert _positive(rec["mfu"]) and _positive(rec["achieved_tflops"])
    mem = rec["memory"]
    assert mem["peak_rss_gib"] > 0 and mem["peak_rss_growth_gib"] >= 0
    if kind == "train":
        assert math.isfinite(rec["final_loss"]) and rec["trainable_parameters_m"] > 0
        assert rec["flops"]["train_gflops_per_clip"] == pytest.approx(3 * rec["flops"]["gflops_per_view"])


def test_bench_matmul_and_bf16_cast(tmp_path, one_thread):
    out = tmp_path / "mm.json"
    assert main(["bench", "matmul", "--device", "cpu", "--size", "64", "--repeats", "3", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    _check_head(rec, "matmul")
    assert _positive(rec["ceiling"]["tflops"]) and len(rec["ceiling"]["timing"]["runs_s"]) == 3
    # weights cast to bf16, no MFU: the path runs and the record says so
    out = tmp_path / "bf16.json"
    assert main(["bench", "infer", "--arch", "tiny", "--batch", "1", "--frames", "2", "--classes", "3", "--dtype",
                 "bf16", "--precision", "cast", "--repeats", "1", "--warmup", "0", "--no-mfu", "--device", "cpu",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["config"]["dtype"] == "bf16" and rec["config"]["precision"] == "cast"
    assert rec["mfu"] is None and rec["flops"] is None and _positive(rec["views_per_s"]["median"])


def test_bench_bad_arguments(capsys):
    assert main(["bench", "infer", "--arch", "nope", "--no-mfu", "--device", "cpu"]) == 2
    assert "unknown CLIP architecture" in capsys.readouterr().err
    assert main(["bench", "infer", "--batch", "0", "--device", "cpu"]) == 2


def test_bench_token_merging_side_by_side(tmp_path, capsys, one_thread):
    """``--token-merging 0,2``: the same model with and without merging timed in one run, runs
    alternating; the record holds both rates and the speed-up over the first."""
    out = tmp_path / "tome.json"
    assert main(["bench", "infer", "--method", "clip", "--arch", "tiny", "--batch", "1", "--frames", "2",
                 "--classes", "3", "--repeats", "2", "--warmup", "0", "--no-mfu", "--device", "cpu",
                 "--token-merging", "0,2", "--json", str(out)]) == 0
    assert "speed-up" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    _check_head(rec, "infer")
    v0, v2 = rec["token_merging"]["variants"]
    assert (v0["r"], v2["r"]) == (0, 2) and len(v0["runs_s"]) == len(v2["runs_s"]) == 2
    assert v0["speedup"] == 1.0 and _positive(v2["speedup"]) and _positive(v2["views_per_s"])
    assert v2["speedup"] == pytest.approx(v0["median_s"] / v2["median_s"])
    assert v0["speedup_cpu_time"] == 1.0 and _positive(v2["median_cpu_s"]) and len(v2["cpu_runs_s"]) == 2
    # same weights and inputs: r = 0 is the reference, r = 2 changes the logits
    assert v0["max_abs_logit_change"] == 0 and v2["max_abs_logit_change"] > 0
    for bad in ("0,x", "0,0", "-1"):
        assert main(["bench", "infer", "--arch", "tiny", "--no-mfu", "--device", "cpu", "--token-merging", bad]) == 2
        assert "--token-merging" in capsys.readouterr().err
