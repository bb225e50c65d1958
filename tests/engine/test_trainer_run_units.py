"""The trainer's setup and run loop in this process, on fakes (well under a second each): ``train``
(run directory, logging, resume, overwrite), ``_Run.__init__`` (seeding, the plan, the initial
state), ``_build_data`` (what each data builder is given), ``_build_optimization`` (optimizer,
schedule, precision, DDP wrapping, compile) and ``_fit`` (epochs, skips, signals, evaluations,
saves). Written against the mutants no test could reach before: the integration tests train in
``vclip train`` subprocesses, where mutmut sees no call (docs/testing.md, "Mutation testing").

The fakes: three classes, a loader of fixed two-sample batches whose "video" is a [2, 2] tensor,
a two-weight quadratic method (``ce`` = mean((video · w − label)²)), SGD at ``train.lr`` in
place of AdamW, and an evaluation returning given top-1 values; the run directory, checkpoints,
logging, config checks and the schedule are the real ones."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import warnings
from types import SimpleNamespace

import pytest
import torch

from vclip.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
from vclip.engine import trainer as T
from vclip.engine.distributed import DistInfo
from vclip.engine.logging import setup_logging, teardown_logging
from vclip.engine.optim import warmup_cosine_lr
from vclip.engine.trainer import _Plan, _Run
from vclip.errors import ConfigError
from test_trainer_units import _Sampler  # the same recording sampler

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NAMES = ["a", "b", "c"]


class _Method(torch.nn.Module):
    """``ce`` = mean((video · w − label)²), ``aux`` = 0.25 (weight 0.5 from the method, overridable
    by ``train.loss_weights``); records the devices it is moved to and what each forward got."""

    loss_weights = {"ce": 1.0, "aux": 0.5}

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -0.25]))
        self.drawn = float(torch.rand(()))  # the global RNG right after seeding
        self.moved, self.calls = [], []

    def to(self, *args, **kwargs):
        self.moved.append(args)
        return self  # a CUDA device object on a CPU-only machine stays a no-op

    def forward(self, video, vocab, targets, label_smoothing):
        self.calls.append((tuple(video.shape), vocab.class_names, label_smoothing))
        ce = ((video @ self.w - targets.float()) ** 2).mean()
        return SimpleNamespace(losses={"ce": ce, "aux": torch.tensor(0.25)})


class _Loader(list):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        super().__init__({"video": torch.randn(2, 2, generator=g), "label": torch.randint(0, 3, (2,), generator=g)}
                         for _ in range(n))
        self.sampler = _Sampler()


class _Dataset:
    num_skipped = 0

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _Fakes:
    """Every builder ``_Run`` calls, patched; what each was given is in ``self.calls``."""

    def __init__(self, monkeypatch, micro=4, top1=(0.5, 0.75, 0.25, 1.0), num_videos=8):
        self.calls: list[tuple] = []
        self.methods: list[_Method] = []
        self.loaders: list[_Loader] = []
        self.top1 = list(top1)
        d = T.run_data

        def record(name, result):
            def fn(*args):
                self.calls.append((name, *args))
                return result(*args)
            return fn

        monkeypatch.setattr(d, "class_names", record("class_names", lambda cfg: list(NAMES)))
        monkeypatch.setattr(d, "train_dataset", record("train_dataset", lambda cfg, names: _Dataset(num_videos)))
        monkeypatch.setattr(d, "train_loader", record("train_loader", lambda *a: self._loader(micro)))
        monkeypatch.setattr(d, "eval_dataset", record("eval_dataset", lambda cfg, names: "val set"))
        monkeypatch.setattr(d, "mixup", record("mixup", lambda cfg, n: None))
        monkeypatch.setattr(T, "build_method", record("build_method", lambda cfg: self._method()))
        monkeypatch.setattr(T, "build_method_optimizer", record(
            "build_method_optimizer", lambda method, t: torch.optim.SGD(method.parameters(), lr=t.lr)))
        monkeypatch.setattr(T, "evaluate_method", record("evaluate_method", lambda *a: {
            "top1": self.top1.pop(0), "num_videos": 6}))
        monkeypatch.setattr(T, "init_distributed", record("init_distributed", lambda device: CPU))

    def _loader(self, micro):
        self.loaders.append(_Loader(micro))
        return self.loaders[-1]

    def _method(self):
        self.methods.append(_Method())
        return self.methods[-1]

    def named(self, name):
        return [c[1:] for c in self.calls if c[0] == name]


def _cfg(tmp_path, name="r", val=True, **train) -> RunConfig:
    t = dict(epochs=2, lr=0.1, warmup_epochs=0.0, accum_steps=2, log_every=1, seed=7, clip_grad=None,
             precision="fp32", weight_decay=0.0)
    t.update(train)
    return RunConfig(name=name, output_dir=str(tmp_path), device="cpu", model=ModelConfig(arch="tiny"),
                     data=DataConfig(num_frames=2, image_size=32, batch_size=2, val_list="val.txt" if val else None),
                     train=TrainConfig(**t), eval=EvalConfig(epoch_views=None, confusion_png=False))


@pytest.fixture(autouse=True)
def _no_leftover_logging():
    yield
    teardown_logging()


def _file_handlers():
    return [h for h in logging.getLogger("vclip").handlers if isinstance(h, logging.FileHandler)]


# --------------------------------------------------------------------------- train()


def test_train_a_fresh_run_end_to_end(tmp_path, monkeypatch):
    """Two epochs of two optimizer steps (accumulation 2 of 4 micro-batches), evaluated after each:
    the plumbing of every builder, the weights trained exactly, the saves, the logs, the summary."""
    fakes = _Fakes(monkeypatch)
    clock = iter([100.0, 103.5])
    monkeypatch.setattr(T, "time", SimpleNamespace(time=lambda: next(clock)))
    cfg = _cfg(tmp_path, loss_weights={"ce": 2.0})
    out = T.train(cfg)

    assert fakes.named("init_distributed") == [("cpu",)]
    assert fakes.named("class_names") == [(cfg,)]
    [(c, names)] = fakes.named("train_dataset")
    assert c is cfg and names == NAMES
    [(c, ds, rank, world)] = fakes.named("train_loader")
    assert c is cfg and ds.n == 8 and (rank, world) == (0, 1)
    assert fakes.named("eval_dataset") == [(cfg, NAMES)]
    assert fakes.named("mixup") == [(cfg, 3)]
    [method] = fakes.methods
    assert fakes.named("build_method") == [(cfg,)] and method.moved == [(torch.device("cpu"),)]
    assert [c[1] for c in fakes.named("build_method_optimizer")] == [cfg.train]
    evals = fakes.named("evaluate_method")  # (method, dataset, vocab, cfg, dist, logger)
    assert len(evals) == 2 and all(e[0] is method and e[1] == "val set" and e[3] is cfg and e[4] == CPU for e in evals)
    assert evals[0][2].class_names == tuple(NAMES)
    # the forward: the vocabulary of the class names, the configured smoothing (no Mixup), 8 micro-batches
    assert cfg.data.aug.label_smoothing == 0.1 and method.calls == [((2, 2), tuple(NAMES), 0.1)] * 8
    assert fakes.loaders[0].sampler.calls == [("set_epoch", 0), ("set_epoch", 1)]

    # SGD on ce weighted 2 (train.loss_weights over the method's 1.0), the cosine from 0.1 to 0.1 / 100
    # over the run's 4 steps, each step the mean of two micro-batches' gradients: the weights exactly
    lrs = [warmup_cosine_lr(s, base_lr=0.1, total_steps=4, warmup_steps=0, min_lr=0.001) for s in range(4)]
    w = torch.tensor([0.5, -0.25], requires_grad=True)
    batches = fakes.loaders[0]
    for step in range(4):
        grads = [torch.autograd.grad(2 * ((b["video"] @ w - b["label"].float()) ** 2).mean(), w)[0]
                 for b in batches[2 * (step % 2): 2 * (step % 2) + 2]]
        with torch.no_grad():
            w -= lrs[step] * (grads[0] + grads[1]) / 2
    torch.testing.assert_close(method.w.detach(), w.detach())

    summary = {"steps": 4, "epochs": 2, "seconds": 3.5, "skipped_training_videos": 0, "nonfinite_skips": 0}
    assert out == {"top1": 0.75, "num_videos": 6, "training": summary}
    assert json.loads((cfg.run_dir / "results.json").read_text())["training"] == summary
    ck = cfg.run_dir / "checkpoints"
    last, best = (json.loads((ck / t / "meta.json").read_text()) for t in ("last", "best"))
    assert {k: last[k] for k in ("step", "epoch", "micro_in_epoch", "metric")} == {
        "step": 4, "epoch": 2, "micro_in_epoch": 0, "metric": 0.75}
    assert last["config_hash"] == cfg.digest() and last["nonfinite_skips"] == 0
    assert (best["epoch"], best["metric"]) == (2, 0.75)
    metrics = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [(m["step"], round(m["epoch"], 3), m["lr"]) for m in metrics if "loss" in m]
    assert logged == [(1, 0.5, lrs[0]), (2, 1.0, lrs[1]), (3, 1.5, lrs[2]), (4, 2.0, lrs[3])]
    assert all(m["aux"] == 0.25 and m["loss"] > 0 for m in metrics if "loss" in m)
    assert [(m["step"], m["val/top1"]) for m in metrics if "val/top1" in m] == [(2, 0.5), (4, 0.75)]
    assert _file_handlers() == []  # the run's log file handlers are removed again


def test_train_refuses_overwrites_and_resumes(tmp_path, monkeypatch):
    fakes = _Fakes(monkeypatch, top1=[0.5] * 8)
    T.train(_cfg(tmp_path, val=False, epochs=1))
    with pytest.raises(ConfigError, match="already holds a run"):
        T.train(_cfg(tmp_path, val=False, epochs=1))  # no resume, no overwrite
    (tmp_path / "r" / "stray.txt").write_text("kept")
    out = T.train(_cfg(tmp_path, val=False, epochs=1), overwrite=True)
    assert out == {"training": {"steps": 2, "epochs": 1, "seconds": out["training"]["seconds"],
                                "skipped_training_videos": 0, "nonfinite_skips": 0}}
    assert len(fakes.methods) == 2 and (tmp_path / "r" / "stray.txt").read_text() == "kept"
    assert "--overwrite: removed" in (tmp_path / "r" / "log_rank0.txt").read_text()
    # a longer config: refused without allow_config_change, continued with it from the checkpoint
    with pytest.raises(ConfigError, match="train.epochs"):
        T.train(_cfg(tmp_path, val=False, epochs=2), resume="auto")
    trained = fakes.methods[-1].w.detach().clone()
    out = T.train(_cfg(tmp_path, val=False, epochs=2), resume="auto", allow_config_change=True)
    assert out["training"]["steps"] == 4 and out["training"]["epochs"] == 2
    resumed = fakes.methods[-1]
    assert len(resumed.calls) == 4  # epoch 2 only
    assert fakes.loaders[-1].sampler.calls == [("set_epoch", 1)]
    assert not torch.equal(resumed.w.detach(), trained)
    meta = json.loads((tmp_path / "r" / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["step"], meta["epoch"]) == (4, 2)


def test_train_logs_its_notes_and_leaves_a_callers_logging_alone(tmp_path, monkeypatch):
    _Fakes(monkeypatch)
    outer = tmp_path / "outer"
    setup_logging(outer)  # a library caller logging to its own file
    mine = _file_handlers()
    cfg = _cfg(tmp_path, val=False, epochs=1)
    T.train(cfg, resume="auto")  # nothing to resume: a note, and a fresh start
    assert mine[0] in _file_handlers()  # the caller's handler stays: the caller owns the logging
    text = (cfg.run_dir / "log_rank0.txt").read_text()
    assert f"INFO vclip.engine.trainer: --resume auto: {cfg.run_dir} holds no checkpoint; starting from scratch" \
        in text
    assert len((cfg.run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_train_on_another_rank_logs_under_its_rank(tmp_path, monkeypatch):
    """Rank 1 of 2 (the collective steps replaced): its log file, a logger of its rank, the run built
    with the config, the process info and that logger, resumed from what the run directory said."""
    seen = []

    class Run:
        def __init__(self, cfg, dist, logger):
            seen.append((cfg, dist, logger.rank, logger.main))

        def fit(self, resume):
            seen.append(resume)
            logging.getLogger("vclip.engine.trainer").info("training")
            return {"done": True}

    monkeypatch.setattr(T, "prepare_run_dir", lambda *a: seen.append(a[1:]) or ("ckpt", [(logging.INFO, "a note")]))
    monkeypatch.setattr(T, "barrier", lambda: None)
    monkeypatch.setattr(T, "_Run", Run)
    cfg = _cfg(tmp_path)
    rank1 = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert T.train(cfg, "auto", rank1) == {"done": True}
    assert seen == [("auto", rank1, False, False), (cfg, rank1, 1, False), "ckpt"]
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["log_rank1.txt"]
    assert "INFO vclip.engine.trainer: a note" in (cfg.run_dir / "log_rank1.txt").read_text()
    assert _file_handlers() == []


# --------------------------------------------------------------------------- _Run.__init__ and its builders


class _FakeDDP(torch.nn.Module):
    def __init__(self, module, device_ids):
        super().__init__()
        self.wrapped, self.device_ids = module, device_ids


def test_run_setup_one_process(tmp_path, monkeypatch):
    fakes = _Fakes(monkeypatch)
    cfg = _cfg(tmp_path, val=False, min_lr=0.003, warmup_epochs=1.0, epochs=3, schedule="timm_cosine",
               loss_weights={"aux": 2.0})
    run = _Run(cfg, CPU, "logger")
    assert (run.cfg, run.dist, run.logger, run.device) == (cfg, CPU, "logger", torch.device("cpu"))
    assert (run.config_dict, run.config_hash) == (cfg.to_dict(), cfg.digest())
    assert (run.step, run.nonfinite_skips, run._checked_step, run._finite, run.signal, run._stop) == (
        0, 0, 0, None, None, False)
    assert run.check_every == 1  # the CPU, no skips, no train.check_every
    torch.manual_seed(7)
    assert run.method.drawn == float(torch.rand(()))  # seeded with train.seed + rank before the build
    assert run.plan == _Plan(4, 2, 6, 3, 2)
    assert run.loss_weights == {"ce": 1.0, "aux": 2.0}
    assert run.val_set is None and fakes.named("eval_dataset") == [] and run.mix is None
    assert run.names == NAMES and run.vocab.class_names == tuple(NAMES)
    s = run.scheduler
    assert (s.total_steps, s.warmup_steps, s.min_lr, s.schedule) == (6, 2, 0.003, "timm_cosine")
    assert s.optimizer is run.optimizer
    assert run.amp_dtype is None and not run.scaler.is_enabled()
    assert run.model is run.method and run.forward is run.method
    assert run.ckpts.path("last") == cfg.run_dir / "checkpoints" / "last"
    run = _Run(_cfg(tmp_path, val=False, precision="bf16"), CPU, None)
    assert run.scheduler.min_lr == pytest.approx(0.001)  # min_lr unset: lr / 100
    assert run.amp_dtype == torch.bfloat16 and not run.scaler.is_enabled()
    with pytest.raises(ConfigError) as e:
        _Run(_cfg(tmp_path, val=False, precision="fp16"), CPU, None)
    assert str(e.value) == "train.precision: fp16 needs a CUDA device (this run is on cpu); use bf16 or fp32"
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or ("compiled", m))
    run = _Run(_cfg(tmp_path, val=False, compile=True), CPU, None)
    assert compiled == [run.model] and run.forward == ("compiled", run.model)


def test_run_setup_rank_one_of_two(tmp_path, monkeypatch):
    """Rank 1 of 2 (DDP replaced by a recorder): seeded with seed + 1, its shard of the loader, the
    model wrapped; on a CUDA device object (nothing runs on it) the wrapper gets the device index
    and fp16 is accepted."""
    fakes = _Fakes(monkeypatch, micro=3)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _FakeDDP)
    dist = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    run = _Run(_cfg(tmp_path, accum_steps=1), dist, None)
    torch.manual_seed(8)
    assert run.method.drawn == float(torch.rand(()))
    assert [c[2:] for c in fakes.named("train_loader")] == [(1, 2)]
    assert isinstance(run.model, _FakeDDP) and run.model.wrapped is run.method and run.model.device_ids is None
    assert run.forward is run.model and run.val_set == "val set"
    cuda = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    with warnings.catch_warnings():  # no CUDA here: the GradScaler warns and disables itself
        warnings.simplefilter("ignore")
        run = _Run(_cfg(tmp_path, precision="fp16", check_every=None, log_every=5), cuda, None)
    assert run.amp_dtype == torch.float16 and run.model.device_ids == [1] and run.check_every == 5
    assert run.scaler.is_enabled() == torch.cuda.is_available()  # the CUDA scaler, not a device-less one
    run = _Run(_cfg(tmp_path, precision="auto"), cuda, None)
    assert run.amp_dtype == torch.bfloat16  # "auto" is bf16 on CUDA: the run's device decides
    assert run.method.moved == [(torch.device("cuda", 1),)]
    with pytest.raises(ConfigError) as e:  # too few videos: the plan's error names the world size
        _Run(_cfg(tmp_path, accum_steps=4), dist, None)
    assert str(e.value) == ("data.batch_size=2 × world 2 × train.accum_steps=4 is more than the 8 training videos: "
                            "no full optimizer step per epoch")


# --------------------------------------------------------------------------- _fit on recorded pieces


def _fit_run(calls, epochs=3, total=6, step=0, restored=(0, 0), done_at=None, results=None, signal_at=None):
    run = object.__new__(_Run)
    run.plan, run.step, run.signal, run.dist = _Plan(4, 2, total, epochs, 0), step, None, CPU

    def train_epoch(epoch, skip):
        calls.append(("train", epoch, skip))
        if signal_at == epoch:
            run.signal = signal.SIGTERM  # arrives during this epoch's evaluation, say
        return epoch == done_at

    run._restore = lambda path: calls.append(("restore", path)) or restored
    run._train_epoch = train_epoch
    run._evaluate_now = lambda epoch, done: calls.append(("eval?", epoch, done)) or epoch != 0
    run._evaluate = lambda epoch: calls.append(("eval", epoch)) or dict(results or {"top1": 0.5 + epoch})
    run._save = lambda epoch, micro, metric: calls.append(("save", epoch, micro, metric))
    run._finish = lambda res, seconds: calls.append(("finish", res, seconds)) or "finished"
    run._interrupted = lambda epoch, micro: calls.append(("interrupted", epoch, micro)) or RuntimeError("interrupted")
    return run


def test_fit_epochs_evaluations_and_saves(monkeypatch):
    clock = itertools.count(10.0, 2.5)
    monkeypatch.setattr(T, "time", SimpleNamespace(time=lambda: next(clock)))
    calls = []
    assert _fit_run(calls, restored=(1, 3))._fit("ckpt") == "finished"
    assert calls == [("restore", "ckpt"),
                     ("train", 1, 3), ("eval?", 1, False), ("eval", 1), ("save", 2, 0, 1.5),
                     ("train", 2, 0), ("eval?", 2, False), ("eval", 2), ("save", 3, 0, 2.5),
                     ("finish", {"top1": 2.5}, 2.5)]
    # the best checkpoint follows the epoch-view score; no evaluation: no metric
    calls = []
    run = _fit_run(calls, epochs=2, results={"top1": 0.5, "epoch_views": {"top1": 0.25}})
    run.fit("path")  # fit: under the signal handlers, the same
    assert calls[0] == ("restore", "path")
    assert [c for c in calls if c[0] in ("save", "finish")] == [
        ("save", 1, 0, None), ("save", 2, 0, 0.25),
        ("finish", {"top1": 0.5, "epoch_views": {"top1": 0.25}}, 2.5)]


def test_fit_stops_when_done_and_on_a_signal():
    calls = []  # the last step is reached in epoch 2 of 4 (max_steps): no epoch after it
    assert _fit_run(calls, epochs=4, done_at=1)._fit(None) == "finished"
    assert [c[:2] for c in calls if c[0] == "train"] == [("train", 0), ("train", 1)]
    assert ("eval?", 1, True) in calls
    calls = []  # resumed from a checkpoint at the run's last step: nothing left to train
    assert _fit_run(calls, step=6, restored=(1, 2))._fit(None) == "finished"
    assert calls == [("restore", None), ("finish", {}, calls[-1][2])]
    calls = []  # a signal during epoch 2's evaluation: stopped before epoch 3 (saved at epoch 2's end)
    with pytest.raises(RuntimeError, match="^interrupted$"):
        _fit_run(calls, restored=(1, 0), signal_at=1)._fit(None)
    assert calls[-2:] == [("save", 2, 0, 1.5), ("interrupted", 2, 0)]
    calls = []  # a signal before the first epoch: the epoch runs (its first step stops it), not checked before it
    run = _fit_run(calls, restored=(1, 0))
    run.signal = signal.SIGINT
    with pytest.raises(RuntimeError, match="^interrupted$"):
        run._fit(None)
    assert [c[0] for c in calls] == ["restore", "train", "eval?", "eval", "save", "interrupted"]
    assert calls[-1] == ("interrupted", 2, 0)
