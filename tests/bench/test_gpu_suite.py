"""The GPU suite (benchmarks/gpu_suite.sh) runs end to end in its CPU dry-run mode and is fail-soft:
structure only, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite_table  # noqa: E402

PARTS = ["matmul_bf16", "xclip_vs_hf", "infer_b16", "train_b16_bf16", "train_b16_fp16", "infer_b16_compile",
         "od_solver", "decode_1proc", "decode_gpu", "e2e_b16", "e2e_b16_cache", "infer_b32_compile", "train_b16_compile"]


def _suite(out: Path, budget: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, SUITE_BUDGET_S=str(budget), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_writes_every_part_and_the_table(tmp_path):
    r = _suite(tmp_path, budget=480)
    assert r.returncode == 0, r.stdout + r.stderr
    parts = [line.split("\t") for line in (tmp_path / "parts.tsv").read_text().splitlines()]
    assert [p[0] for p in parts] == PARTS
    assert all(p[1] == "ok" for p in parts), (tmp_path / "suite.log").read_text()[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert sorted(suite["records"]) == sorted(PARTS)
    md = (tmp_path / "suite.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| ") and not line.startswith("| part") and "---" not in line]
    # one row per part, except the multi-row parts: X-CLIP vs transformers (2 per arch), the OD solver
    # (1 per shape), end to end (3 stages + the bound)
    assert {row.split(" | ")[0][2:] for row in rows} == set(PARTS)
    assert sum(row.startswith("| xclip_vs_hf |") for row in rows) == 2
    e2e_rows = [row for row in rows if row.startswith("| e2e_b16 |")]
    assert len(e2e_rows) == 4  # data, model, e2e stages, the bound
    assert all("steady state: 2 windows of 2 batches after 2" in e2e_rows[i] for i in (0, 2)), e2e_rows
    # from the frame cache: the 3 stages (labelled with the backend), the bound, the cache build
    cache_rows = [row for row in rows if row.startswith("| e2e_b16_cache |")]
    assert len(cache_rows) == 5 and "frame cache build" in cache_rows[-1]
    assert all(", cache)" in row for row in cache_rows[:3])
    assert all("no record" not in row and "unknown record" not in row for row in rows)
    # GPU decoding on a machine without CUDA: the part succeeds, its row says why it could not run
    gpu = [row for row in rows if row.startswith("| decode_gpu |")]
    assert len(gpu) == 1 and "torchcodec-cuda | unavailable |" in gpu[0] and "data.decode_device" in gpu[0], gpu
    assert json.loads((tmp_path / "decode_gpu.json").read_text())["results"] == []
    vs = next(row for row in rows if "— vclip" in row)
    assert "rel err" in vs and float(vs.split("rel err ")[1].split(" ")[0]) < 1e-4


def test_a_suite_out_of_time_still_writes_its_table(tmp_path):
    r = _suite(tmp_path, budget=5)  # every part needs ≥ 10 s of budget: all are skipped, none run
    assert r.returncode == 0, r.stdout + r.stderr
    parts = [line.split("\t") for line in (tmp_path / "parts.tsv").read_text().splitlines()]
    assert [p[0] for p in parts] == PARTS and {p[1] for p in parts} == {"skipped"}
    md = (tmp_path / "suite.md").read_text()
    assert md.count("| skipped |") == len(PARTS)


def test_table_keeps_failed_timed_out_and_unreadable_parts(tmp_path, capsys):
    (tmp_path / "parts.tsv").write_text(
        "matmul_bf16\tok\t3\tvclip bench matmul\n"
        "infer_b16\tfailed(rc=1)\t2\tvclip bench infer --arch ViT-B-16\n"
        "train_b16_bf16\ttimeout\t75\tvclip bench train\n"
        "od_solver\tok\t1\tpython benchmarks/bench_od_solver.py\n"
        "e2e_b16\ttimeout\t150\tpython benchmarks/bench_end_to_end.py --workers 16\n"
        "e2e_b16_cache\ttimeout\t90\tpython benchmarks/bench_end_to_end.py --backend cache\n")
    rate = {"median": 96.4, "min": 95.0, "max": 97.9}
    stream = {"distinct_videos": 256, "warm": 16, "per_window": 16, "windows": 2, "batches": 48, "repeats": 12}
    e2e = {"kind": "end_to_end", "source": "256 clips", "settings": {"arch": "ViT-B-16", "frames": 8, "workers": 16},
           "results": {"stream": stream, "partial": True, "data": {"videos_per_s": rate}}}
    (tmp_path / "e2e_b16.json").write_text(json.dumps(e2e))
    finished = {**e2e, "results": {"stream": stream, "data": {"videos_per_s": rate}}}  # a stale, complete record
    (tmp_path / "e2e_b16_cache.json").write_text(json.dumps(finished))
    (tmp_path / "matmul.json").write_text(json.dumps({
        "kind": "matmul", "machine": {"gpu": {"name": "GPU-X", "memory_gib": 80}, "cpu_count": 4, "torch": "t", "python": "p"},
        "ceiling": {"dtype": "bf16", "n": 8192, "tflops": 700.4, "tflops_best": 790.2}}))
    (tmp_path / "od_solver.json").write_text("{not json")
    assert gpu_suite_table.main([str(tmp_path)]) == 0
    md = (tmp_path / "suite.md").read_text()
    assert md.startswith("Machine: GPU-X (80 GiB), 4 CPU cores; torch t, Python p.")
    assert "| matmul_bf16 | 8192³ matmul bf16 | 700 TFLOP/s | best 790 |" in md
    assert "| infer_b16 | – | failed(rc=1) | vclip bench infer --arch ViT-B-16 |" in md
    assert "| train_b16_bf16 | – | timeout |" in md
    assert "| od_solver | record | unreadable |" in md
    # a timed-out part keeps the stages its benchmark saved before the time box (marked partial) ...
    assert "| e2e_b16 | – | timeout |" in md
    assert ("| e2e_b16 | file → logits, data stage (ViT-B-16, 8f, 16 workers) (partial) | 96 (95–98) videos/s | "
            "256 clips; steady state: 2 windows of 16 batches after 16 |") in md
    # ... but not a complete record left from another run
    assert "| e2e_b16_cache | – | timeout |" in md and md.count("| e2e_b16_cache |") == 1
    assert sorted(json.loads((tmp_path / "suite.json").read_text())["records"]) == ["e2e_b16", "matmul_bf16"]
    assert gpu_suite_table.main([str(tmp_path / "missing")]) == 2
    assert "run benchmarks/gpu_suite.sh first" in capsys.readouterr().err


def test_table_rows_for_gpu_decoding():
    rec = {"kind": "decode", "source": "8 generated clips, 10 s 340x256 (made in 3 s)",
           "results": [{"backend": "torchcodec-cuda", "clips_per_s_T8": 412.34, "clips_per_s_T32": 101.0,
                        "max_abs_diff_vs_pyav": 2, "mean_abs_diff_vs_pyav": 0.41,
                        "cpu_fallback": "[CUDA] Fallback status: No fallback required"}],
           "unavailable": [{"backend": "torchcodec-cuda", "reason": "ConfigError: no | GPU"}]}
    rows = gpu_suite_table.rows_for("decode_gpu", rec)
    assert rows[0] == ["decode_gpu", "decode, one process, torchcodec-cuda (8 generated clips, 10 s 340x256)",
                       "412.3 clips/s (T = 8)", "T = 32: 101.0 clips/s; vs PyAV max |Δ| 2 (mean 0.41); "
                       "[CUDA] Fallback status: No fallback required"]
    assert rows[1] == ["decode_gpu", "decode, one process, torchcodec-cuda", "unavailable", "ConfigError: no / GPU"]


def test_table_rows_for_inference_and_training_records():
    rate = {"median": 1357.2, "min": 1313.0, "max": 1379.9}
    infer = {"kind": "infer", "config": {"method": "xclip", "arch": "ViT-B-16", "batch": 64, "frames": 8, "dtype": "bf16",
                                         "compile": True, "compile_mode": None},
             "views_per_s": rate, "mfu": 0.505, "memory": {"peak_allocated_gib": 2.06}}
    assert gpu_suite_table.rows_for("infer_b16_compile", infer) == [[
        "infer_b16_compile", "infer xclip ViT-B-16 b64 8f bf16 compiled", "1,357 (1,313–1,380) views/s",
        "2.1 GiB peak allocated, MFU 50.5%"]]
    train = dict(infer, kind="train", clips_per_s=rate, mfu=None, memory={"peak_rss_gib": 0.5})
    del train["views_per_s"]
    assert gpu_suite_table.rows_for("t", train)[0][2:] == ["1,357 (1,313–1,380) clips/s", "0.50 GiB RSS (CPU)"]


def test_records_of_an_earlier_run_in_the_same_folder_are_removed_before_each_part(tmp_path):
    """A part that fails or times out must not show the record an earlier suite left in OUTDIR (a
    partial end-to-end record would pass for this run's). PYTHON=false: every part fails at once."""
    stale = {"kind": "end_to_end", "source": "old", "settings": {"arch": "x", "frames": 8, "workers": 16},
             "results": {"partial": True, "data": {"videos_per_s": {"median": 1.0, "min": 1.0, "max": 1.0}}}}
    for name in ("e2e_b16.json", "e2e_b16_cache.json", "matmul.json"):
        (tmp_path / name).write_text(json.dumps(stale))
    (tmp_path / "notes.txt").write_text("mine")
    env = dict(os.environ, PYTHON="false", SUITE_BUDGET_S="480")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path), "--dry-run"],
                       env=env, capture_output=True, text=True, timeout=120)
    parts = [line.split("\t") for line in (tmp_path / "parts.tsv").read_text().splitlines()]
    assert [p[0] for p in parts] == PARTS and all(p[1].startswith("failed") for p in parts), r.stdout + r.stderr
    assert not any((tmp_path / n).exists() for n in ("e2e_b16.json", "e2e_b16_cache.json", "matmul.json"))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert gpu_suite_table.main([str(tmp_path)]) == 0
    assert "(partial)" not in (tmp_path / "suite.md").read_text()
