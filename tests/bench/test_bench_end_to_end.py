"""benchmarks/bench_end_to_end.py's steady-state timing: how many batches a loader stage reads, which
are timed, and the rates computed from them (an injected clock: no wall time); and its record,
saved after each stage."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def e2e(load_benchmark):
    return load_benchmark("bench_end_to_end")


def test_plan_fills_every_worker_then_times_windows_of_one_batch_per_worker(e2e):
    # the GPU suite's shape: 256 files, batch 64, 16 workers, 2 windows — 16 warm-up batches, then 2 × 16
    p = e2e.plan_stream(256, 64, 16, 2)
    assert p == {"warm": 16, "per_window": 16, "windows": 2, "batches": 48, "repeats": 12}
    # a pass of the old benchmark (256 files = 4 batches) would have kept 4 of 16 workers busy
    assert p["batches"] * 64 <= 256 * p["repeats"] < (p["batches"] + 4) * 64
    assert e2e.plan_stream(16, 16, 2, 3) == {"warm": 2, "per_window": 2, "windows": 3, "batches": 8, "repeats": 8}
    assert e2e.plan_stream(8, 2, 0, 2)["per_window"] == 1  # in-process loading: one batch per window
    with pytest.raises(ValueError, match="windows"):
        e2e.plan_stream(8, 2, 2, 0)
    # the files read: the list repeated, cut to exactly the planned batches (none left unread)
    files = [f"v{i}.mp4" for i in range(256)]
    listed = e2e.stream_list(files, p, 64)
    assert len(listed) == 48 * 64 and listed[:256] == files and listed[256:512] == files
    assert e2e.stream_list(["a", "b", "c"], e2e.plan_stream(3, 2, 1, 1), 2) == ["a", "b", "c", "a"]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_warm_batches_are_untimed_and_each_window_is_its_own_rate(e2e):
    clock = FakeClock()
    plan = e2e.plan_stream(10, 4, 2, 3)            # warm 2, then 3 windows of 2 batches: 8 batches
    costs = [5.0, 5.0, 1.0, 1.0, 2.0, 2.0, 0.5, 0.5, 99.0]  # seconds per batch; the 9th is never read
    syncs = []

    def batches():
        for c in costs:
            clock.t += c
            yield {"video": torch.zeros(4 if c != 0.5 else 3, 1)}

    r = e2e.time_stream(batches(), plan, lambda b: b["video"].shape[0], sync=lambda: syncs.append(clock.t),
                        clock=clock)
    assert r["first_batch_s"] == 5.0
    assert r["runs_s"] == [2.0, 4.0, 1.0] and r["videos_per_window"] == [8, 8, 6]
    assert r["videos_per_s"] == {"median": 4.0, "min": 2.0, "max": 6.0}
    assert syncs == [10.0, 12.0, 16.0, 17.0]       # before the first window, then at each window's end
    # the 9th batch is drained after timing, not timed
    assert clock.t == 116.0


def test_a_run_stopped_part_way_keeps_the_stages_it_timed(e2e, tmp_path, monkeypatch, one_thread):
    """The GPU suite's time box kills a part; the record written after each stage survives, marked
    ``partial``, and the table shows its rows (tests/bench/test_gpu_suite.py)."""
    def stopped(*a, **k):
        raise KeyboardInterrupt  # what a time box's signal looks like to the script

    monkeypatch.setattr(e2e, "measure", stopped)  # the model stage, after the data stage
    out = tmp_path / "e2e.json"
    args = ["--source", "synth", "--videos", "4", "--workers", "0", "--batch", "2", "--arch", "tiny",
            "--windows", "1", "--stages", "data,model,e2e", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    with pytest.raises(KeyboardInterrupt):
        e2e.main(args)
    res = json.loads(out.read_text())["results"]
    assert res["partial"] is True and not {"model", "e2e", "bound"} & set(res)
    assert res["data"]["plan"]["batches"] == res["stream"]["batches"] == 2  # warm 1 + 1 window of 1
    assert res["data"]["videos_per_window"] == [2]
    monkeypatch.undo()
    assert e2e.main(args) == 0
    res = json.loads(out.read_text())["results"]
    assert "partial" not in res and {"data", "model", "e2e", "bound"} <= set(res)
