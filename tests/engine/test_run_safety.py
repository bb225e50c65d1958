"""Run lifecycle safety (issue 12): a new run never mixes with an old one in its directory, a
non-finite loss / gradient stops the run (or is skipped within ``train.max_nonfinite_skips``), no
checkpoint stores and no evaluation scores non-finite weights, a resume refuses a changed config,
an unusable output directory fails first, a full disk at a save keeps the previous checkpoint, and
SIGINT/SIGTERM save at the next step boundary and print a resume command that finishes the run
with exactly an uninterrupted run's weights.

Runs use 32 training videos (4 steps of 8 per epoch) and 12 validation videos to stay fast."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_utils import clean_env, read_metrics, run, torchrun_cmd, vclip_cmd
from vclip.config import load_config
from vclip.engine import checkpoint as ckpt
from vclip.engine import trainer
from vclip.engine import rundir
from vclip.engine.checkpoint import CheckpointManager, load_checkpoint
from vclip.engine.logging import RunLogger
from vclip.engine.trainer import train
from vclip.errors import CheckpointError, ConfigError, EvaluationError, TrainingError, TrainingInterrupted

STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def small_lists(synth, tmp_path_factory) -> tuple[Path, Path]:
    """32 training videos (every 4th of the 144: all 12 classes) and 12 validation videos."""
    out = tmp_path_factory.mktemp("lists")
    tr = (synth / "train.txt").read_text().splitlines()[::4][:32]
    va = (synth / "val.txt").read_text().splitlines()[::4][:12]
    (out / "train.txt").write_text("\n".join(tr) + "\n")
    (out / "val.txt").write_text("\n".join(va) + "\n")
    return out / "train.txt", out / "val.txt"


@pytest.fixture
def small(make_config, small_lists):
    """``small(name, val=False, **train)`` → the path of a config of 1 epoch on the small lists."""

    def factory(name: str, val: bool = False, **train_over) -> Path:
        return make_config(name, data={"train_list": str(small_lists[0]),
                                       "val_list": str(small_lists[1]) if val else None},
                           train={"epochs": 1, **train_over})

    return factory


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def _meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "last" / "meta.json").read_text())


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _losses(run_dir: Path) -> dict[int, float]:
    """Step → logged loss (a resumed run logs the steps after its checkpoint again: keep the last)."""
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


# ------------------------------------------------------------------------ 1. the run directory

def test_a_new_run_refuses_a_directory_holding_a_run_and_overwrite_clears_it(small, capsys):
    from vclip.cli import main

    path = small("again", val=True)
    cfg = load_config([str(path)])
    train(cfg)
    run_dir = cfg.run_dir
    assert (run_dir / "checkpoints" / "best").is_dir()
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "notes.txt").write_text("mine")

    with pytest.raises(ConfigError) as e:  # a second run under the same name, from Python
        train(load_config([str(path)], ["data.val_list=null"]))
    msg = str(e.value)
    assert str(run_dir) in msg and "--resume auto" in msg and "--overwrite" in msg and "\n" not in msg
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before  # nothing was touched

    assert main(["train", "-c", str(path), "data.val_list=null"]) == 2  # ... and from the command line
    err = capsys.readouterr().err
    assert f"vclip train: error: {run_dir} already holds a run" in err and "Traceback" not in err

    # --overwrite: the earlier run's files are gone (its stale best too); other files stay
    assert main(["train", "-c", str(path), "data.val_list=null", "--overwrite"]) == 0
    assert not (run_dir / "checkpoints" / "best").exists()
    assert not list(run_dir.glob("results*.json"))
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]  # this run's lines only
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert _meta(run_dir)["config"]["data"]["val_list"] is None

    with pytest.raises(ConfigError, match="--overwrite .* and --resume auto .* contradict"):
        train(load_config([str(path)]), resume="auto", overwrite=True)


def test_resume_auto_starts_afresh_when_the_directory_holds_no_checkpoint(small):
    """The leftovers of a run stopped before its first checkpoint (config, log): a plain new run is
    refused, ``resume="auto"`` (what the protocol runner passes) starts from scratch."""
    cfg = load_config([str(small("leftover"))])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text("name: leftover\n")
    (cfg.run_dir / "log_rank0.txt").write_text("started\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    assert train(cfg, resume="auto")["training"]["steps"] == STEPS_PER_EPOCH


# ------------------------------------------------------------------------ 3. config changes

def test_resume_refuses_a_changed_config_and_lists_the_keys(small, caplog):
    path = small("changed")
    cfg = load_config([str(path)])
    train(cfg)
    run_dir = cfg.run_dir
    config_before = (run_dir / "config.yaml").read_text()

    changed = load_config([str(path)], ["train.lr=0.002", "data.num_frames=2"])
    with pytest.raises(ConfigError) as e:
        train(changed, resume="auto")
    msg = str(e.value)
    assert "train.lr 0.001 → 0.002" in msg and "data.num_frames 4 → 2" in msg
    assert "--allow-config-change" in msg and "\n" not in msg
    assert (run_dir / "config.yaml").read_text() == config_before  # refused before writing anything

    # bookkeeping keys may differ; so may name/output_dir with an explicit path (another run's checkpoint)
    assert train(load_config([str(path)], ["train.log_every=3", "train.save_every=2", "eval.confusion_png=false"]),
                 resume="auto")["training"]["steps"] == STEPS_PER_EPOCH
    other = load_config([str(path)], ["name=changed-copy"])
    assert train(other, resume=str(run_dir / "checkpoints" / "last"))["training"]["steps"] == STEPS_PER_EPOCH

    with caplog.at_level("WARNING", logger="vclip"):  # allowed: the differences are logged
        train(changed, resume="auto", allow_config_change=True)
    assert "train.lr 0.001 → 0.002" in caplog.text

    # a checkpoint of an older vclip (no config in meta.json): the run's config.yaml is compared
    meta_path = run_dir / "checkpoints" / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]
    meta_path.write_text(json.dumps(meta))
    (run_dir / "config.yaml").write_text(config_before)
    with pytest.raises(ConfigError, match="train.lr 0.001 → 0.002"):
        train(load_config([str(path)], ["train.lr=0.002"]), resume="auto")


def test_config_changes_counts_keys_a_stored_config_lacks_as_defaults():
    from vclip.config import RunConfig

    new = RunConfig().to_dict()
    old = json.loads(json.dumps(new))
    del old["train"]["accum_steps"]  # stored by a vclip without this key: its default
    old["train"]["loss_weights"] = {"ce": 0.5}
    changes = trainer.config_changes(old, new)
    assert changes == [("train.loss_weights.ce", 0.5, "(unset)")]
    assert trainer.config_changes(new, new) == []


# ------------------------------------------------------------------------ 2. non-finite values

def test_divergence_stops_with_the_step_and_the_term_named(small, capsys):
    """lr 1e8 without clipping: the first step is finite, the second one's loss is NaN — the run
    stops there, names step and term, and saves nothing (no NaN checkpoint, no 8 % 'result')."""
    from vclip.cli import main

    path = small("diverge", val=True, lr=1e8, clip_grad=None)
    assert main(["train", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("vclip train: error:")]
    assert len(line) == 1 and "Traceback" not in err, err
    assert "step 2 (epoch 1): non-finite loss term 'ce' (nan)" in line[0]
    assert "train.max_nonfinite_skips" in line[0]
    run_dir = load_config([str(path)]).run_dir
    assert not (run_dir / "checkpoints").exists() and not list(run_dir.glob("results*.json"))


def _poison_call(monkeypatch, n: int) -> dict:
    """Make the ``n``-th micro-batch's ``ce`` term NaN (through ``weighted_loss``)."""
    real = trainer.weighted_loss
    calls = {"n": 0}

    def poisoned(losses, weights):
        calls["n"] += 1
        if calls["n"] == n:
            losses["ce"] = losses["ce"] * float("nan")
        return real(losses, weights)

    monkeypatch.setattr(trainer, "weighted_loss", poisoned)
    return calls


def test_nonfinite_steps_are_skipped_within_the_limit(small, monkeypatch):
    """``train.max_nonfinite_skips=1``: step 2's NaN loss drops its update (Adam steps 3 times in 4
    steps, the schedule 4 times), counted in metrics, summary and checkpoint; the weights stay finite.
    With no skip allowed the same NaN stops the run at step 2."""
    calls = _poison_call(monkeypatch, 2)
    cfg = load_config([str(small("skip"))], ["train.max_nonfinite_skips=1"])
    summary = train(cfg)["training"]
    assert summary["steps"] == STEPS_PER_EPOCH and summary["nonfinite_skips"] == 1
    state = torch.load(cfg.run_dir / "checkpoints" / "last" / "train_state.pt", weights_only=True)
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {3.0}
    assert state["scheduler"]["last_epoch"] == STEPS_PER_EPOCH
    assert _meta(cfg.run_dir)["nonfinite_skips"] == 1
    assert {"step": 2, "nonfinite_skips": 1}.items() <= next(
        m for m in read_metrics(cfg.run_dir) if "nonfinite_skips" in m).items()
    assert all(torch.isfinite(w).all() for w in _weights(cfg.run_dir).values())

    calls["n"] = 0
    with pytest.raises(TrainingError, match=r"^step 2 \(epoch 1\): non-finite loss term 'ce' \(nan\)"):
        train(load_config([str(small("noskip"))]))


def test_nonfinite_gradient_norm_is_caught_without_clipping(small, monkeypatch):
    """``train.clip_grad=null``: the gradient norm is still computed; an inf gradient with a finite
    loss stops the run at that step, naming the first parameter."""
    real = trainer.build_method
    poisoned = {}

    def build(cfg):
        method = real(cfg)
        name, p = next((n, p) for n, p in method.named_parameters() if p.requires_grad)
        calls = {"n": 0}

        def hook(g):
            calls["n"] += 1
            return torch.full_like(g, float("inf")) if calls["n"] == 3 else g

        p.register_hook(hook)
        poisoned["name"] = name
        return method

    monkeypatch.setattr(trainer, "build_method", build)
    with pytest.raises(TrainingError) as e:
        train(load_config([str(small("gradinf", clip_grad=None))]))
    msg = str(e.value)
    assert msg.startswith("step 3 (epoch 1): non-finite gradient norm (inf) with a finite loss")
    assert f"first in {poisoned['name']!r}" in msg


def test_nonfinite_weights_are_never_saved(tmp_path):
    mgr = CheckpointManager(tmp_path)
    good = {"a.weight": torch.ones(3), "b.weight": torch.zeros(2, 2)}
    mgr.save("last", model_state=good, train_state={}, meta={"step": 1})
    bad = dict(good, **{"b.weight": torch.tensor([[0.0, float("nan")], [float("inf"), 1.0]])})
    with pytest.raises(CheckpointError, match=r"non-finite model weights in 'b.weight' \(1 NaN, 1 inf of 4 values\)"):
        mgr.save("last", model_state=bad, train_state={}, meta={"step": 2})
    assert mgr.read_meta("last")["step"] == 1
    with pytest.raises(CheckpointError, match="'b.weight'"):
        ckpt.save_checkpoint(tmp_path / "export", bad)
    assert not (tmp_path / "export").exists()


def test_eval_refuses_a_checkpoint_with_nonfinite_weights(small, capsys):
    from vclip.cli import main
    from vclip.engine.distributed import DistInfo
    from vclip.engine import data as run_data
    from vclip.engine.evaluate import evaluate_method
    from vclip.methods import build_method, make_vocabulary

    cfg = load_config([str(small("nanw", val=True, max_steps=1))])
    train(cfg)
    model_state, train_state, meta = load_checkpoint(cfg.run_dir / "checkpoints" / "last")
    name = next(k for k, v in model_state.items() if v.is_floating_point() and v.numel() > 4)
    model_state[name] = model_state[name].clone()
    model_state[name].view(-1)[:2] = float("nan")
    bad = cfg.run_dir.parent / "bad_ckpt"
    bad.mkdir()
    ckpt.write_checkpoint_files(bad, tag="bad", model_state=model_state, train_state=train_state, meta=meta)

    assert main(["eval", "-c", str(cfg.run_dir / "config.yaml"), "--checkpoint", str(bad), "name=nanw-eval"]) == 2
    err = capsys.readouterr().err
    assert f"vclip eval: error: {bad}: refusing to evaluate a checkpoint with non-finite weights in {name!r} (2 NaN" \
        in err and "Traceback" not in err
    assert not (cfg.run_dir.parent / "nanw-eval" / "results_eval.json").exists()

    method = build_method(cfg)
    method.load_state_dict(model_state)
    names = run_data.class_names(cfg)
    with pytest.raises(EvaluationError, match=f"non-finite weights in {name!r}"):
        evaluate_method(method, run_data.eval_dataset(cfg, names), make_vocabulary(cfg, names), cfg,
                        DistInfo(0, 1, 0, torch.device("cpu")))


# ------------------------------------------------------------------------ 5. output directory, disk

def test_an_unusable_output_directory_fails_before_any_data_work(small, tmp_path, monkeypatch):
    """A file in the way, or a directory that cannot be written: one line naming it — before the
    (here missing) training list is even looked at."""
    path = small("probe")
    no_data = "data.train_list=/nonexistent/train.txt"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a directory"):
        train(load_config([str(path)], [f"output_dir={blocker}", no_data]))
    with pytest.raises(ConfigError, match=f"{blocker} is a file, not a directory"):
        train(load_config([str(path)], [f"output_dir={blocker / 'sub'}", no_data]))
    cfg = load_config([str(path)], [no_data])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "checkpoints").write_text("x")
    with pytest.raises(ConfigError, match="checkpoints is a file, not a directory"):
        train(cfg, overwrite=True)
    (cfg.run_dir / "checkpoints").unlink()

    real_open = os.open

    def read_only(p, *a, **k):  # as a read-only directory would (the tests may run as root)
        if ".vclip-write-probe" in str(p):
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr(rundir.os, "open", read_only)
    with pytest.raises(ConfigError, match=r"cannot write to the run directory .*probe.*: Permission denied"):
        train(cfg)
    monkeypatch.undo()
    assert not (cfg.run_dir / "config.yaml").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_fails_first(small, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write to the run directory"):
            train(load_config([str(small("ro"))], [f"output_dir={ro}", "data.train_list=/nonexistent.txt"]))
    finally:
        ro.chmod(0o700)


def test_a_full_disk_at_a_save_keeps_the_previous_checkpoint(small, monkeypatch):
    real = ckpt.write_checkpoint_files
    calls = {"n": 0}

    def full_disk(directory, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            (Path(directory) / ckpt.MODEL_FILE).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(directory) / ckpt.MODEL_FILE))
        return real(directory, **kw)

    monkeypatch.setattr(ckpt, "write_checkpoint_files", full_disk)
    cfg = load_config([str(small("full", save_every=1))])
    with pytest.raises(CheckpointError) as e:
        train(cfg)
    msg = str(e.value)
    assert "no space left on device (disk full)" in msg and "the previous 'last' checkpoint is kept" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    assert load_checkpoint(cfg.run_dir / "checkpoints" / "last")[2]["step"] == 1  # intact (SHA-256 checked)
    assert [p.name for p in (cfg.run_dir / "checkpoints").iterdir()] == ["last"]  # no temporary left


# ------------------------------------------------------------------------ 7. SIGINT / SIGTERM

SIGNAL_RUN = {"epochs": 2, "seed": 5}


@pytest.fixture(scope="module")
def reference(synth, small_lists, tmp_path_factory) -> Path:
    """An uninterrupted run of 2 epochs × 4 steps, evaluated after each epoch (in this process)."""
    import yaml

    from engine_utils import base_config, deep_update

    out = tmp_path_factory.mktemp("signal_ref")
    cfg = deep_update(base_config(synth, out / "runs", "ref"), {
        "data": {"train_list": str(small_lists[0]), "val_list": str(small_lists[1])}, "train": dict(SIGNAL_RUN)})
    (out / "ref.yaml").write_text(yaml.safe_dump(cfg))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config([str(out / "ref.yaml")]))
    finally:
        torch.set_num_threads(before)
    return out / "runs" / "ref"


def _check_finished_like(reference: Path, run_dir: Path) -> None:
    assert _meta(run_dir)["step"] == 2 * STEPS_PER_EPOCH
    _assert_same_weights(_weights(reference), _weights(run_dir))
    assert _losses(run_dir) == _losses(reference)  # every step's loss, bit for bit
    for e in (1, 2):  # the evaluation of each epoch too (also one that straddles the interruption)
        got = json.loads((run_dir / f"results_epoch{e}.json").read_text())
        want = json.loads((reference / f"results_epoch{e}.json").read_text())
        assert got["top1"] == want["top1"] and got["confusion"] == want["confusion"]


@pytest.mark.parametrize("signal_at_step", [1, 3])  # stops after step 2 (mid-epoch) / 4 (the epoch's last)
def test_sigint_saves_at_the_next_step_and_resumes_exactly(small, reference, monkeypatch, signal_at_step):
    cfg = load_config([str(small(f"sigint{signal_at_step}", val=True, **SIGNAL_RUN))])
    real_log = RunLogger.log

    def log_then_signal(self, step, **metrics):
        real_log(self, step, **metrics)
        if step == signal_at_step and "loss" in metrics:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunLogger, "log", log_then_signal)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    stopped = signal_at_step + 1  # the step running when the signal came is completed first
    assert e.value.exit_code == 130
    assert e.value.resume_command == f"vclip train -c {cfg.run_dir / 'config.yaml'} --resume auto"
    assert f"stopped by SIGINT after step {stopped}" in str(e.value)
    meta = _meta(cfg.run_dir)
    assert (meta["step"], meta["epoch"], meta["micro_in_epoch"]) == (stopped, 0, stopped)
    assert not (cfg.run_dir / "results_epoch1.json").exists()  # stopped before the epoch's evaluation
    monkeypatch.undo()

    # what the resume command does, in this process
    train(load_config([str(cfg.run_dir / "config.yaml")]), resume="auto")
    _check_finished_like(reference, cfg.run_dir)


@pytest.mark.parametrize("how", ["SIGTERM to the process", "SIGINT to its process group"])
def test_signal_to_the_cli_prints_a_resume_command_that_finishes_the_run(small, reference, how):
    """``vclip train`` (with a data worker process) is signalled once a step is logged: it saves at
    the next step boundary, exits with 143 / 130 and prints the resume command — also when, as with
    Ctrl-C in a terminal, the data worker is signalled too. Running that command (checked once)
    finishes the run with the weights of an uninterrupted run."""
    path = small(f"cli-{how.split()[0].lower()}", val=True, **SIGNAL_RUN)
    run_dir = load_config([str(path)]).run_dir
    sig = signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT
    proc = subprocess.Popen(vclip_cmd("train", "-c", path, "data.num_workers=1"),
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir):
                break
            time.sleep(0.01)
        if sig == signal.SIGTERM:
            proc.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)  # as Ctrl-C in a terminal: the data worker gets it too
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("vclip train: stopped by")]
    assert f"stopped by {sig.name} after step {_meta(run_dir)['step']}" in line
    assert _meta(run_dir)["step"] < 2 * STEPS_PER_EPOCH
    command = line.split("resume with: ", 1)[1]
    assert command == f"vclip train -c {shlex.quote(str(run_dir / 'config.yaml'))} --resume auto"
    meta = _meta(run_dir)
    assert meta["micro_in_epoch"] == meta["step"] % STEPS_PER_EPOCH or meta["micro_in_epoch"] == STEPS_PER_EPOCH
    if sig == signal.SIGTERM:
        run(vclip_cmd(*shlex.split(command)[1:]))
        _check_finished_like(reference, run_dir)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_ranks_agree_to_stop_when_one_of_them_is_signalled(small, tmp_path):
    """2 processes under torchrun; SIGTERM reaches rank 1 only: both stop after the same step (one
    checkpoint holding both processes' RNG states, both logs naming that step)."""
    path = small("ddp-stop", epochs=6)
    run_dir = load_config([str(path)]).run_dir
    marker = uuid.uuid4().hex
    over = ["data.batch_size=4"]  # 2 × 4 = the same 8 videos per step, 4 steps per epoch
    proc = subprocess.Popen(torchrun_cmd(2, "train", "-c", path, *over), env=clean_env(VCLIP_TEST_MARKER=marker),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and read_metrics(run_dir):
                break
            time.sleep(0.01)
        rank1 = _pid_with_env({"VCLIP_TEST_MARKER": marker, "RANK": "1"})
        assert rank1 is not None, "rank 1 not found"
        os.kill(rank1, signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers (a hang would leave them)
            proc.wait()
    assert proc.returncode != 0, out
    step = _meta(run_dir)["step"]
    assert 0 < step < 6 * STEPS_PER_EPOCH
    logs = [(run_dir / f"log_rank{r}.txt").read_text() for r in (0, 1)]
    assert f"stopped by a signal to another process after step {step}" in logs[0]
    assert f"stopped by SIGTERM after step {step}" in logs[1]
    state = torch.load(run_dir / "checkpoints" / "last" / "train_state.pt", weights_only=True)
    assert len(state["rng"]) == 2


def _pid_with_env(wanted: dict[str, str]) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(x.split("=", 1) for x in (d / "environ").read_text(errors="replace").split("\0") if "=" in x)
        except OSError:
            continue
        if all(env.get(k) == v for k, v in wanted.items()):
            return int(d.name)
    return None
