"""benchmarks/bench_compile.py in its --smoke mode (tiny model, backend aot_eager: no code generation):
structure only, never timings."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_compile  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch._dynamo.reset()


def test_smoke_interleaves_checks_and_reports_graph_breaks(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert bench_compile.main(["--smoke", "--methods", "clip,ost", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["kind"] == "compile_vs_eager" and rec["settings"]["backend"] == "aot_eager"
    assert rec["settings"]["arch"] == "tiny" and len(rec["load_start"]) == 3
    clip, ost = rec["results"]
    assert [clip["method"], ost["method"]] == ["clip", "ost"]
    for r in (clip, ost):
        # one eager and one compiled call per round, the order swapped every round
        assert r["order"] == ["eager", "compiled", "compiled", "eager"]
        assert len(r["runs_s"]["eager"]) == len(r["runs_s"]["compiled"]) == 2
        ratios = [e / c for e, c in zip(r["runs_s"]["eager"], r["runs_s"]["compiled"])]
        assert r["speedup"] == {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)}
        assert r["agree"] and r["rel_diff"] <= 1e-4 and r["input_shape"][:2] == [2, 2]
    assert clip["fullgraph"] is True and "fullgraph_error" not in clip
    # OST's default Sinkhorn checks its stop flag on the host: a graph break, recorded with its reason
    assert ost["fullgraph"] is False and ost["graph_breaks"] >= 1
    assert any("item()" in b for b in ost["break_reasons"]), ost["break_reasons"]
    table = capsys.readouterr().out
    assert "| clip | yes |" in table and "| ost | no (" in table


def test_ost_without_host_checks_compiles_fullgraph(tmp_path):
    out = tmp_path / "c.json"
    assert bench_compile.main(["--smoke", "--methods", "ost", "--options", "ost.check_every=0", "--json", str(out)]) == 0
    (ost,) = json.loads(out.read_text())["results"]
    assert ost["options"] == {"max_iter": 3, "check_every": 0} and ost["fullgraph"] is True


def test_compiled_logits_that_differ_are_refused_before_timing(tmp_path, monkeypatch):
    real = torch.compile

    def off_by_a_bit(fn, **kw):
        compiled = real(fn, **kw)
        return lambda *a: compiled(*a) * 1.001

    monkeypatch.setattr(torch, "compile", off_by_a_bit)
    out = tmp_path / "c.json"
    assert bench_compile.main(["--smoke", "--methods", "clip", "--json", str(out)]) == 1
    (clip,) = json.loads(out.read_text())["results"]
    assert clip["agree"] is False and "differ from eager" in clip["error"] and "runs_s" not in clip


def test_bad_arguments():
    from vclip.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method"):
        bench_compile.main(["--smoke", "--methods", "clip,nope"])
    with pytest.raises(ConfigError, match="METHOD.KEY=VALUE"):
        bench_compile.main(["--smoke", "--options", "check_every=0"])
