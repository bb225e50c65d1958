import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from vclip.engine import checkpoint as ckpt
from vclip.engine.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint, restore_rng_state
from vclip.engine.optim import WarmupCosine, build_optimizer
from vclip.errors import CheckpointError


def model_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 4, generator=g)
    return {
        "visual.proj": w,
        "text.token_embedding.weight": w,                 # tied: same storage
        "visual.ln.weight": torch.randn(4, generator=g).half(),
        "mit.fc.weight": torch.randn(3, 3, generator=g).bfloat16(),
        "counter": torch.tensor([seed, 2, 3], dtype=torch.int64),
        "transposed": torch.randn(4, 6, generator=g).t(),  # non-contiguous
    }


def train_state(step=10):
    m = nn.Linear(4, 3)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.01)
    sched = WarmupCosine(opt, total_steps=100, warmup_steps=5, min_lr=1e-5)
    for _ in range(3):
        m(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    return {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "sampler": {"epoch": 2, "seed": 1024, "position": 17},
        "step": step,
        "epoch": 2,
    }


def assert_same(a, b, path="x"):
    assert type(a) is type(b) or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path


def save(mgr, step, metric=None, **kw):
    return mgr.save("last", model_state=model_state(step), train_state=train_state(step),
                    meta={"step": step, "epoch": step // 10, "metric": metric, "config_hash": "abc123"}, **kw)


def test_round_trip_exact(tmp_path):
    mgr = CheckpointManager(tmp_path)
    ms, ts = model_state(3), train_state(30)
    path = mgr.save("last", model_state=ms, train_state=ts,
                    meta={"step": 30, "epoch": 3, "metric": 0.25, "config_hash": "abc"})
    assert path == tmp_path / "checkpoints" / "last"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "train_state.pt"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last"]  # no temp dirs left
    assert mgr.latest() == path

    ms2, ts2, meta = mgr.load(path)
    assert set(ms2) == set(ms)
    for k in ms:
        assert ms2[k].dtype == ms[k].dtype and torch.equal(ms2[k], ms[k]), k
    assert_same(ts, ts2)
    assert meta["step"] == 30 and meta["epoch"] == 3 and meta["metric"] == 0.25 and meta["config_hash"] == "abc"
    assert meta["tag"] == "last" and isinstance(meta["time"], float)
    assert set(meta["files"]) == {"model.safetensors", "train_state.pt"}
    # the train state is a plain weights-only file
    torch.load(path / "train_state.pt", weights_only=True)
    # load() without a path resumes the latest; a file inside the directory works too
    assert mgr.load()[2]["step"] == 30
    assert load_checkpoint(path / "meta.json")[2]["step"] == 30


def test_state_restores_optimizer_and_scheduler(tmp_path):
    m = nn.Linear(4, 3)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.01)
    sched = WarmupCosine(opt, total_steps=50, warmup_steps=5, min_lr=0.0)
    for _ in range(7):
        opt.zero_grad()
        m(torch.ones(2, 4)).sum().backward()
        opt.step()
        sched.step()
    mgr = CheckpointManager(tmp_path)
    mgr.save("last", model_state=m.state_dict(), train_state={"optimizer": opt.state_dict(),
             "scheduler": sched.state_dict()}, meta={"step": 7})
    ms, ts, _ = mgr.load()
    m2 = nn.Linear(4, 3)
    m2.load_state_dict(ms)
    opt2 = build_optimizer(m2, lr=1e-3, weight_decay=0.01)
    sched2 = WarmupCosine(opt2, total_steps=50, warmup_steps=5, min_lr=0.0)
    opt2.load_state_dict(ts["optimizer"])
    sched2.load_state_dict(ts["scheduler"])
    for mm, o, s in ((m, opt, sched), (m2, opt2, sched2)):
        o.zero_grad()
        mm(torch.ones(2, 4)).sum().backward()
        o.step()
        s.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_crash_in_writer_keeps_previous(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    save(mgr, 10)

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk full; the previous 'last' checkpoint is kept unchanged"):
        save(mgr, 20)  # one line (CheckpointError), the cause chained
    monkeypatch.undo()
    assert mgr.latest() == tmp_path / "checkpoints" / "last"
    ms, ts, meta = mgr.load(mgr.latest())
    assert meta["step"] == 10 and ts["step"] == 10 and torch.equal(ms["counter"], model_state(10)["counter"])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["last"]


def test_crash_at_rename_keeps_previous(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    save(mgr, 10)
    real = os.replace

    def replace(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-"):
            raise OSError("simulated crash while moving the new checkpoint in")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="simulated.*previous 'last' checkpoint is kept"):
        save(mgr, 20)
    monkeypatch.undo()
    assert mgr.load(mgr.latest())[2]["step"] == 10


def test_killed_between_renames_falls_back(tmp_path):
    """State a SIGKILL between `last → .old-last-*` and `.tmp-last-* → last` leaves behind."""
    mgr = CheckpointManager(tmp_path)
    save(mgr, 10)
    d = tmp_path / "checkpoints"
    os.replace(d / "last", d / ".old-last-0123")
    (d / ".tmp-last-4567").mkdir()
    (d / ".tmp-last-4567" / "model.safetensors").write_bytes(b"partial")
    assert mgr.latest() == d / ".old-last-0123"
    assert mgr.load()[2]["step"] == 10
    save(mgr, 20)  # the next save cleans everything up
    assert sorted(p.name for p in d.iterdir()) == ["last"]
    assert mgr.load()[2]["step"] == 20


#: run in a subprocess: for each kill point K, a forked child saves step 3 (``last`` and ``best``)
#: over steps 0-2 and dies with ``os._exit`` (no cleanup, as under SIGKILL) just before its K-th
#: file-system change (audit events: files opened for writing, renames, links, mkdir, removals);
#: prints the number of kill points that interrupted the save (the last K lets it complete).
_KILL_SCRIPT = """
import os, shutil, sys, torch
from vclip.engine.checkpoint import CheckpointManager

torch.set_num_threads(1)
root = sys.argv[1]
WRITES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.link", "os.symlink", "os.truncate",
          "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.chmod"}
kill_at, seen = [None], [0]

def hook(event, args):
    if kill_at[0] is None:
        return
    if event == "open":
        mode, flags = args[1], args[2]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        if not writes:
            return
    elif event not in WRITES:
        return
    seen[0] += 1
    if seen[0] == kill_at[0]:
        os._exit(137)

sys.addaudithook(hook)

def save(mgr, step):
    w = torch.full((1000,), float(step))
    mgr.save("last", model_state={"w": w}, train_state={"step": step, "m": w.clone()},
             meta={"step": step}, is_best=True)

k = 1
while True:
    d = os.path.join(root, f"k{k}")
    mgr = CheckpointManager(d)
    for step in range(3):
        save(mgr, step)
    pid = os.fork()
    if pid == 0:
        kill_at[0] = k
        save(mgr, 3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 137), code
    if code == 0:
        print(k, flush=True)
        break
    k += 1
"""


def test_sigkill_during_saves_never_leaves_a_broken_last(tmp_path):
    """A process killed at every file-system step of a save, in turn (deterministic kill points,
    not a random moment): ``last`` and ``best`` are always complete checkpoints of the step before
    the save or of the new one, and a kill before the final rename keeps the previous one."""
    p = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    points = int(p.stdout.split()[-1])
    assert points >= 8  # mkdir, the files of last and best, the renames: a save has many steps
    for k in range(1, points + 1):
        mgr = CheckpointManager(tmp_path / f"k{k}")
        steps = []
        for found in (mgr.latest(), mgr.find("best")):
            assert found is not None, k
            ms, ts, meta = mgr.load(found)
            step = meta["step"]
            assert step in (2, 3), k
            assert ts["step"] == step and bool((ms["w"] == step).all()) and bool((ts["m"] == step).all()), k
            steps.append(step)
        if k == 1:
            assert steps == [2, 2]  # killed before anything was written
        if k == points:
            assert steps == [3, 3]  # not killed: the save completed
        # a new save after the crash cleans up and succeeds
        mgr.save("last", model_state={"w": torch.full((1000,), 4.0)},
                 train_state={"step": 4, "m": torch.full((1000,), 4.0)}, meta={"step": 4}, is_best=True)
        assert mgr.load(mgr.latest())[2]["step"] == 4 and mgr.load(mgr.find("best"))[2]["step"] == 4


def test_best_kept(tmp_path):
    mgr = CheckpointManager(tmp_path)
    assert mgr.best_metric() is None and mgr.is_better(0.1)
    save(mgr, 1, metric=0.5, is_best=mgr.is_better(0.5))
    save(mgr, 2, metric=0.4, is_best=mgr.is_better(0.4))
    assert mgr.best_metric() == 0.5
    assert mgr.load(mgr.find("best"))[2]["step"] == 1
    assert mgr.load(mgr.latest())[2]["step"] == 2
    save(mgr, 3, metric=0.7, is_best=mgr.is_better(0.7))
    _, ts, meta = mgr.load(tmp_path / "checkpoints" / "best")
    assert meta["step"] == 3 and meta["tag"] == "best" and ts["step"] == 3
    assert mgr.best_metric() == 0.7
    assert not mgr.is_better(float("nan")) and not mgr.is_better(None)
    assert mgr.is_better(0.1, mode="min")
    # best and last are independent directories: replacing last leaves best intact
    save(mgr, 4, metric=0.1)
    assert mgr.load(mgr.find("best"))[2]["step"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "last"]


def test_rng_restore_reproduces():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state()

    def draw():
        return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
                torch.rand(3).tolist())

    first = draw()
    draw()
    restore_rng_state(state)
    assert draw() == first


def test_rng_restore_through_checkpoint(tmp_path):
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    mgr = CheckpointManager(tmp_path)
    mgr.save("last", model_state={}, train_state={"rng": state}, meta={"step": 0})
    first = (random.random(), np.random.randn(2).tolist(), torch.randn(2).tolist())
    _, ts, _ = mgr.load()
    restore_rng_state(ts["rng"])
    assert (random.random(), np.random.randn(2).tolist(), torch.randn(2).tolist()) == first


def test_corrupt_files_are_named(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path = save(mgr, 10)
    weights, state, meta = path / "model.safetensors", path / "train_state.pt", path / "meta.json"

    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        mgr.load(path)
    weights.write_bytes(good)

    good_state = state.read_bytes()
    bad = bytearray(good_state)
    bad[len(bad) // 2] ^= 0xFF
    state.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"train_state\.pt: corrupted"):
        mgr.load(path)
    # without the hash check the reader itself still reports the file by name
    state.write_bytes(good_state[:100] + b"\0" * (len(good_state) - 100))
    with pytest.raises(CheckpointError, match=r"train_state\.pt: cannot read"):
        mgr.load(path, verify=False)
    state.write_bytes(good_state)
    weights.write_bytes(b"\xff" * len(good))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        mgr.load(path, verify=False)
    weights.write_bytes(good)
    mgr.load(path)

    meta_text = meta.read_text()
    meta.write_text(meta_text[:20])
    with pytest.raises(CheckpointError, match=r"meta\.json: unreadable"):
        mgr.load(path)
    meta.unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    assert CheckpointManager(tmp_path / "empty").latest() is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        CheckpointManager(tmp_path / "empty").load()


def test_rejects_non_plain_train_state(tmp_path):
    mgr = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"train_state\['sampler'\]\['perm'\]: numpy.ndarray"):
        mgr.save("last", model_state={}, train_state={"sampler": {"perm": np.arange(3)}}, meta={})
    with pytest.raises(TypeError, match=r"train_state\['metric'\]: numpy.float64"):
        mgr.save("last", model_state={}, train_state={"metric": np.float64(1.0)}, meta={})
    with pytest.raises(TypeError, match="JSON"):
        mgr.save("last", model_state={}, train_state={}, meta={"x": object()})
    with pytest.raises(ValueError, match="tag"):
        mgr.save("../x", model_state={}, train_state={}, meta={})
    assert mgr.latest() is None


def test_save_checkpoint_standalone_directory(tmp_path, monkeypatch):
    """The public one-shot writer (used by `vclip wise`): loadable, atomic, refuses a non-empty target."""
    out = tmp_path / "sub" / "wise"
    p = ckpt.save_checkpoint(out, model_state(3), meta={"step": 0, "note": "x"}, tag="wise")
    assert p == out
    ms, ts, meta = load_checkpoint(out)
    assert ts == {} and meta["tag"] == "wise" and meta["note"] == "x" and "time" in meta
    for k, v in model_state(3).items():
        assert torch.equal(ms[k], v)
    assert sorted(x.name for x in out.parent.iterdir()) == ["wise"]  # no temporary folder left
    with pytest.raises(CheckpointError, match="not an empty folder"):
        ckpt.save_checkpoint(out, model_state(4))
    assert load_checkpoint(out)[2]["note"] == "x"
    # a failure while writing leaves nothing under the final name and no temporary folder
    def broken_save(obj, f, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path / "other", model_state(5))
    assert list(tmp_path.glob("*other*")) == []
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    assert ckpt.save_checkpoint(tmp_path / "empty", model_state(6)).joinpath(ckpt.META_FILE).is_file()
    assert load_checkpoint(tmp_path / "empty")[2]["tag"] == "empty"
