"""benchmarks/bench_xclip_vs_hf.py's compile and interleave options on the tiny model (backend
aot_eager: graph capture without code generation): the record's structure and the timing order,
never timings."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_xclip_vs_hf as bench  # noqa: E402

TINY = ["--archs", "tiny", "--batch", "2", "--frames", "4", "--image-size", "32", "--classes", "4"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def fresh_dynamo():
    yield
    torch._dynamo.reset()  # compiled graphs hold the test's models


def test_vclip_alone_compiled_and_timed_interleaved(tmp_path):
    out = tmp_path / "r.json"
    args = TINY + ["--repeats", "3", "--interleave", "--compile", "vclip", "--compile-backend", "aot_eager",
                   "--profile", "3", "--json", str(out)]
    assert bench.main(args) == 0
    rec = json.loads(out.read_text())
    (r,) = rec["results"]
    assert r["compiled"] == {"vclip": True, "transformers": False}
    assert rec["settings"]["compile"] == "vclip" and rec["settings"]["interleave"] is True
    for name in ("vclip", "transformers"):
        t = r[name]
        assert t["interleaved"] is True and len(t["runs_s"]) == 3
        assert t["median_s"] == statistics.median(t["runs_s"])
        assert t["views_per_s"]["median"] == pytest.approx(2 / t["median_s"])
        assert r[name + "_memory"] is None
        assert r["first_call_s"][name] > 0
    assert r["ratio_vclip_over_hf"] == pytest.approx(
        r["vclip"]["views_per_s"]["median"] / r["transformers"]["views_per_s"]["median"])
    assert r["rel_err_fp32_timed_paths"] < 1e-5  # the compiled path gives the eager logits
    for name in ("vclip", "transformers"):
        ops = r["profile"][name]
        assert len(ops) == 3 and all(o["calls"] >= 1 for o in ops)
        shares = [o["self_cpu_share"] for o in ops]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9


def test_profile_shares_and_order():
    def step():
        a = torch.randn(256, 256)
        for _ in range(4):
            a = a @ a.t() / 256
        return a.sum()

    ops = bench.profile_ops(step, 2)
    assert ops[0]["op"] in ("aten::mm", "aten::matmul") and ops[0]["calls"] == 4
    assert ops[0]["self_cpu_share"] >= ops[1]["self_cpu_share"] and ops[0]["self_cpu_share"] > 0.3


def test_compile_without_a_target_compiles_both(monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "bench_arch", lambda arch, args, device: seen.append(args.compile) or {})
    assert bench.main(TINY + ["--compile", "--compile-backend", "aot_eager"]) == 0
    assert bench.main(TINY) == 0
    assert seen == ["both", None]
    ns = argparse.Namespace(compile="both", compile_backend="inductor", compile_mode=None, freezing=True)
    assert bench.compile_options(ns) == {"backend": "inductor", "options": {"freezing": True}}
    ns = argparse.Namespace(compile="both", compile_backend="inductor", compile_mode="max-autotune", freezing=False)
    assert bench.compile_options(ns) == {"backend": "inductor", "mode": "max-autotune"}


@pytest.mark.parametrize("extra, message", [
    (["--freezing"], "--freezing needs --compile"),
    (["--compile", "--freezing", "--compile-backend", "aot_eager"], "--freezing is an inductor option"),
    (["--compile", "--freezing", "--compile-mode", "max-autotune"], "cannot be combined"),
])
def test_bad_compile_options_are_refused_before_building(extra, message, monkeypatch):
    monkeypatch.setattr(bench, "bench_arch", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises(SystemExit, match=message):
        bench.main(TINY + extra)


def test_interleaved_rounds_alternate_the_order():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    ns = argparse.Namespace(warmup=1, repeats=4, iters=1, batch=2)
    out = bench.time_interleaved(steps, torch.device("cpu"), ns)
    # warm-up: one untimed and one timed call of each, then rounds a b | b a | a b | b a
    assert calls == ["a", "a", "b", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(out[k]["runs_s"]) for k in "ab"] == [4, 4]
    assert all(out[k]["warmup"] == 1 and out[k]["iters"] == 1 for k in "ab")
