import json
import logging
import sys
import types

import numpy as np
import pytest
import torch

from vclip.engine import logging as vlog
from vclip.engine.logging import RunLogger, setup_logging, teardown_logging
from vclip.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_logging():
    logger = logging.getLogger("vclip")
    before = (list(logger.handlers), logger.propagate, logger.level)
    yield
    teardown_logging()
    assert (list(logger.handlers), logger.propagate, logger.level) == before


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rank0_console_jsonl_and_file(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with RunLogger(tmp_path, use_tensorboard=False) as rl:
        rl.log(1, loss=torch.tensor(0.5), lr=1e-5, acc=np.float32(0.25), phase="train")
        rl.log(2, loss=0.25)
        assert (tmp_path / "metrics.jsonl").exists()
        rows = read_jsonl(tmp_path / "metrics.jsonl")  # flushed at once, before close
        assert len(rows) == 2
    assert rows[0]["step"] == 1 and rows[0]["loss"] == 0.5 and rows[0]["lr"] == 1e-5
    assert rows[0]["acc"] == 0.25 and rows[0]["phase"] == "train" and isinstance(rows[0]["time"], float)
    assert rows[1] == {"step": 2, "time": rows[1]["time"], "loss": 0.25}
    line = "step 1 | loss 0.5000 | lr 1.000e-05 | acc 0.2500 | phase train"
    assert line in caplog.text
    assert line in (tmp_path / "log_rank0.txt").read_text()
    # a second logger on the same run (resume) appends
    with RunLogger(tmp_path, use_tensorboard=False) as rl:
        rl.log(3, loss=0.1)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_own_console_handler_without_root_handlers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])
    with RunLogger(tmp_path, use_tensorboard=False) as rl:
        rl.log(7, loss=1.5)
    assert "step 7 | loss 1.5000" in capsys.readouterr().err


def test_other_ranks_are_quiet(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    with RunLogger(tmp_path, rank=1, use_tensorboard="auto") as rl:
        rl.log(1, loss=0.5)
        items = [1, 2, 3]
        assert rl.progress(items, total=3, desc="eval") is items
        logging.getLogger("vclip.engine.trainer").info("rank-1 only message")
    assert not (tmp_path / "metrics.jsonl").exists()
    assert "rank-1 only message" not in caplog.text and "step 1" not in caplog.text
    assert "rank-1 only message" in (tmp_path / "log_rank1.txt").read_text()
    assert capsys.readouterr().err == ""


def test_setup_logging_idempotent(tmp_path):
    logger = setup_logging(tmp_path, 0)
    n = len(logger.handlers)
    assert setup_logging(tmp_path, 0) is logger and len(logger.handlers) == n
    logging.getLogger("vclip.data").info("hello from data")
    assert "INFO vclip.data: hello from data" in (tmp_path / "log_rank0.txt").read_text()


def test_tensorboard_auto_absent_and_required(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.setitem(vlog._said, "tensorboard_missing", False)  # as in a fresh process
    caplog.set_level(logging.INFO)
    with RunLogger(tmp_path, use_tensorboard="auto") as rl:
        assert not rl.tensorboard
        rl.log(1, loss=0.5)
    assert caplog.text.count("TensorBoard not installed") == 1
    # later runs of the same process (a protocol's sub-runs, train then eval) do not repeat it
    for sub in ("a", "b"):
        with RunLogger(tmp_path / sub, use_tensorboard="auto") as rl:
            assert not rl.tensorboard
    assert caplog.text.count("TensorBoard not installed") == 1
    with pytest.raises(ConfigError, match="tensorboard is not installed"):
        RunLogger(tmp_path, use_tensorboard=True)
    with pytest.raises(ConfigError, match="use_tensorboard"):
        RunLogger(tmp_path, use_tensorboard="yes")


def test_tensorboard_scalars(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with RunLogger(tmp_path) as rl:
        assert rl.tensorboard
        rl.log(4, loss=torch.tensor(2.0), lr=0.1, phase="train", ok=True)
    assert calls == [("init", str(tmp_path / "tensorboard")), ("loss", 2.0, 4), ("lr", 0.1, 4), ("close",)]


def test_progress_rank0(tmp_path):
    with RunLogger(tmp_path, use_tensorboard=False) as rl:
        bar = rl.progress(range(4), total=4, desc="train")
        assert list(bar) == [0, 1, 2, 3]
        assert bar.total == 4 and bar.desc.startswith("train")


def test_format():
    assert vlog.format_metrics(3, {"a": 0.0, "b": 12345678.0, "c": 3, "d": float("nan"), "e": [1, 2]}) == \
        "step 3 | a 0.0 | b 1.235e+07 | c 3 | d nan | e [1, 2]"
