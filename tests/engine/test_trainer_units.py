"""The trainer's small pieces, each alone and without data or a model (milliseconds): the weighted
loss, the accumulation context, the host-check cadence, the run plan, the check steps, the
non-finite handling, the per-step exchange, the interruption message, the evaluation epochs and the
training summary. Written against the mutants the integration tests let survive (docs/testing.md,
"Mutation testing"): each assertion pins a value a broken trainer would not produce."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vclip.engine import trainer as T
from vclip.engine.trainer import _Plan, _Run, accumulation_context, resolve_check_every, weighted_loss
from vclip.errors import ConfigError, TrainingError, TrainingInterrupted

# --------------------------------------------------------------------------- weighted_loss


def test_weighted_loss_values_and_dtype():
    losses = {"ce": torch.tensor(2.0, dtype=torch.float64), "kl": torch.tensor(3.0, dtype=torch.float16)}
    total = weighted_loss(losses, {"ce": 1.0, "kl": 0.5, "unused": 7.0})
    assert total.dtype == torch.float32  # every term in float32, whatever the method computed it in
    assert float(total) == 3.5
    assert float(weighted_loss({"ce": torch.tensor(2.0)}, {"ce": 3})) == 6.0  # an int weight
    assert float(weighted_loss({"ce": torch.tensor(1.5)}, {"ce": 2.0})) == 3.0
    assert float(weighted_loss({"a": torch.tensor(1.0), "b": torch.tensor(4.0)}, {"a": 0.0, "b": 1.0})) == 4.0


def test_weighted_loss_errors_name_the_term():
    with pytest.raises(ConfigError, match="^the method returned no loss terms for the training targets$"):
        weighted_loss({}, {"ce": 1.0})
    with pytest.raises(ConfigError) as e:
        weighted_loss({"ce": torch.tensor(1.0), "od": torch.tensor(1.0)}, {"ce": 1.0, "kl": 2.0})
    assert str(e.value) == ("loss term 'od' has no weight: declare it in the method's loss_weights "
                            "(has: ce, kl) or set train.loss_weights.od")


# --------------------------------------------------------------------------- accumulation_context


class _FakeDDP(torch.nn.parallel.DistributedDataParallel):
    """A DDP instance without a process group: only ``no_sync`` is looked at."""

    def __init__(self):
        torch.nn.Module.__init__(self)

    def no_sync(self):
        return "no_sync"


def test_accumulation_context_uses_no_sync_only_on_ddp_micro_batches_without_sync():
    assert accumulation_context(_FakeDDP(), sync=False) == "no_sync"
    for model, sync in ((_FakeDDP(), True), (torch.nn.Linear(1, 1), False), (torch.nn.Linear(1, 1), True)):
        ctx = accumulation_context(model, sync)
        assert type(ctx).__name__ == "nullcontext", (model, sync)


# --------------------------------------------------------------------------- resolve_check_every


def test_resolve_check_every():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def t(skips=0, check=None, log=7):
        return SimpleNamespace(max_nonfinite_skips=skips, check_every=check, log_every=log)

    assert resolve_check_every(t(skips=1, check=5), cuda) == 1  # a skipped step needs its own check
    assert resolve_check_every(t(skips=0, check=5), cuda) == 5
    assert resolve_check_every(t(skips=0, check=5), cpu) == 5
    assert resolve_check_every(t(), cuda) == 7  # log_every on CUDA
    assert resolve_check_every(t(), cpu) == 1


# --------------------------------------------------------------------------- _plan


def _cfg(accum=1, epochs=4, max_steps=None, warmup=0.0, batch_size=4):
    return SimpleNamespace(train=SimpleNamespace(accum_steps=accum, epochs=epochs, max_steps=max_steps,
                                                 warmup_epochs=warmup),
                           data=SimpleNamespace(batch_size=batch_size))


def test_plan_counts():
    # 10 micro-batches of accumulation 3: 3 steps per epoch (the 10th micro-batch is dropped)
    assert T._plan(_cfg(accum=3, warmup=1.5), 10, 80, 2) == _Plan(10, 3, 12, 4, 4)  # warm-up int(4.5)
    assert T._plan(_cfg(accum=3, max_steps=7), 10, 80, 2) == _Plan(10, 3, 7, 3, 0)  # epochs ceil(7 / 3)
    assert T._plan(_cfg(accum=3, max_steps=20), 10, 80, 2) == _Plan(10, 3, 12, 4, 0)  # a cap above: none
    assert T._plan(_cfg(accum=3, max_steps=6), 10, 80, 2) == _Plan(10, 3, 6, 2, 0)
    assert T._plan(_cfg(accum=3, epochs=1), 3, 12, 1) == _Plan(3, 1, 1, 1, 0)  # exactly one step
    assert T._plan(_cfg(epochs=2, warmup=1.0), 5, 20, 1) == _Plan(5, 5, 10, 2, 5)  # a one-epoch warm-up


def test_plan_errors():
    with pytest.raises(ConfigError) as e:
        T._plan(_cfg(accum=3, batch_size=4), 2, 15, 2)
    assert str(e.value) == ("data.batch_size=4 × world 2 × train.accum_steps=3 is more than the 15 training "
                            "videos: no full optimizer step per epoch")
    for over in ({"epochs": 0}, {"max_steps": 0}):
        with pytest.raises(ConfigError) as e:
            T._plan(_cfg(**over), 5, 20, 1)
        t = _cfg(**over).train
        assert str(e.value) == f"train.epochs={t.epochs}, train.max_steps={t.max_steps}: no optimizer step to run"
    with pytest.raises(ConfigError) as e:
        T._plan(_cfg(accum=3, epochs=2, warmup=2.0), 10, 80, 1)  # 6 warm-up steps of 6
    assert str(e.value) == (
        "train.warmup_epochs=2.0 is 6 optimizer steps (3 per epoch), not fewer than the run's 6 steps "
        "(train.epochs=2, train.max_steps=None): lower train.warmup_epochs (0 turns the warm-up off) or "
        "train longer")
    with pytest.raises(ConfigError, match="is 4 optimizer steps"):  # the cap counts, not the epochs
        T._plan(_cfg(epochs=10, max_steps=4, warmup=2.0), 2, 8, 1)


# --------------------------------------------------------------------------- _Run pieces without a run


class _Ckpts:
    def __init__(self, last=None):
        self.last = last

    def latest(self):
        return self.last

    def path(self, tag):
        return Path("/runs/r/checkpoints") / tag


class _Logger:
    def __init__(self):
        self.calls = []

    def log(self, step, **values):
        self.calls.append((step, values))


def _run(**attrs) -> _Run:
    run = object.__new__(_Run)
    for k, v in attrs.items():
        setattr(run, k, v)
    return run


def test_check_steps():
    """Check steps: every ``check_every``, every ``log_every``, every ``save_every``, the last step and
    the epoch's last optimizer step; nothing else."""
    plan = _Plan(micro_per_epoch=9, steps_per_epoch=4, total_steps=22, epochs=6, warmup_steps=0)

    def checks(save_every, micro=2):
        run = _run(cfg=SimpleNamespace(train=SimpleNamespace(log_every=6, save_every=save_every, accum_steps=2)),
                   plan=plan, check_every=4)
        out = []
        for step in range(0, 25):
            run.step = step
            if run._check_step(micro):
                out.append(step + 1)
        return out

    assert checks(None) == [4, 6, 8, 12, 16, 18, 20, 22, 23, 24, 25]  # 22: the last step
    assert checks(5) == [4, 5, 6, 8, 10, 12, 15, 16, 18, 20, 22, 23, 24, 25]
    # micro-batch 8 of 9 with accumulation 2: the epoch's last step (8 + 2 > 9); micro-batch 7 is not
    assert checks(None, micro=8) == list(range(1, 26))
    assert checks(None, micro=7) == checks(None)


def _nonfinite_run(limit=0, skips=0, step=7, last=None, method=None):
    return _run(cfg=SimpleNamespace(train=SimpleNamespace(max_nonfinite_skips=limit)), step=step,
                plan=_Plan(8, 4, 40, 10, 0), nonfinite_skips=skips, ckpts=_Ckpts(last), logger=_Logger(),
                method=method)


def test_nonfinite_messages():
    nan = float("nan")
    with pytest.raises(TrainingError) as e:
        _nonfinite_run()._nonfinite(["ce"], {"loss": nan, "ce": nan}, 1.0)
    assert str(e.value) == (
        "step 8 (epoch 2): non-finite loss term 'ce' (nan) (weighted loss nan); training stopped, nothing "
        "saved (last checkpoint: none); lower train.lr, set train.clip_grad, or skip up to N such steps with "
        "train.max_nonfinite_skips=N")
    with pytest.raises(TrainingError) as e:
        _nonfinite_run(step=8, last="/x/last")._nonfinite(["loss", "ce", "kl"], {"loss": nan, "ce": nan, "kl": 1e39},
                                                          1.0)
    assert str(e.value).startswith(
        "step 9 (epoch 3): non-finite loss terms 'ce' (nan), 'kl' (1e+39) (weighted loss nan); training stopped, "
        "nothing saved (last checkpoint: /x/last); ")
    with pytest.raises(TrainingError) as e:  # only the weighted loss: named as itself, once
        _nonfinite_run()._nonfinite(["loss"], {"loss": math.inf, "ce": 1.0}, 1.0)
    assert str(e.value).startswith("step 8 (epoch 2): non-finite loss term 'loss' (inf); training stopped")
    # a non-finite gradient norm: the first parameter with a non-finite gradient is named
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), torch.nn.Linear(1, 1))
    model[0].weight.grad = torch.ones(1, 1)
    model[1].bias.grad = torch.tensor([math.inf])
    model[2].weight.grad = torch.tensor([[math.nan]])
    with pytest.raises(TrainingError) as e:
        _nonfinite_run(method=model)._nonfinite([], {"loss": 1.5}, math.inf)
    assert str(e.value).startswith(
        "step 8 (epoch 2): non-finite gradient norm (inf) with a finite loss (1.5), first in '1.bias'; training")
    model[1].bias.grad = None
    model[2].weight.grad = torch.ones(1, 1)
    with pytest.raises(TrainingError) as e:  # no parameter to name (a non-finite norm of finite gradients)
        _nonfinite_run(method=model)._nonfinite([], {"loss": 1.5}, math.nan)
    assert str(e.value).startswith("step 8 (epoch 2): non-finite gradient norm (nan) with a finite loss (1.5); ")


def test_nonfinite_skips_then_stops(caplog):
    run = _nonfinite_run(limit=2, skips=1)
    with caplog.at_level(logging.WARNING, logger="vclip.engine.trainer"):
        run._nonfinite(["ce"], {"loss": 1.0, "ce": math.nan}, 1.0)  # skipped: no exception
    assert run.nonfinite_skips == 2
    assert run.logger.calls == [(8, {"nonfinite_skips": 2})]
    assert ("step 8 (epoch 2): non-finite loss term 'ce' (nan) (weighted loss 1.0); update skipped "
            "(2 of train.max_nonfinite_skips=2)") in caplog.messages
    with pytest.raises(TrainingError) as e:
        run._nonfinite(["ce"], {"loss": 1.0, "ce": math.nan}, 1.0)
    assert str(e.value).endswith("(last checkpoint: none); 2 such steps were skipped already "
                                 "(train.max_nonfinite_skips=2)")
    assert run.nonfinite_skips == 2 and len(run.logger.calls) == 1


def test_mean_over_ranks_one_process():
    assert T._mean_over_ranks({}) == {}
    got = T._mean_over_ranks({"a": torch.tensor(1.5), "b": 0.1, "c": torch.tensor([3.0]), T._STOP: 0.0})
    assert got == {"a": 1.5, "b": 0.1, "c": 3.0, T._STOP: 0.0}  # 0.1 exactly: exchanged in float64
    assert all(type(v) is float for v in got.values())


def test_interrupted_message(caplog):
    def interrupted(sig, world, epoch, micro):
        run = _run(signal=sig, cfg=SimpleNamespace(run_dir=Path("/runs/my run")),
                   dist=SimpleNamespace(world_size=world), plan=_Plan(9, 9, 90, 10, 0), step=13,
                   ckpts=_Ckpts())
        return run._interrupted(epoch, micro)

    with caplog.at_level(logging.WARNING, logger="vclip.engine.trainer"):
        e = interrupted(signal.SIGINT, 1, 1, 4)
    assert isinstance(e, TrainingInterrupted)
    assert caplog.messages == [str(e)]  # logged too
    assert str(e) == ("stopped by SIGINT after step 13 (epoch 2, micro-batch 4 of 9); checkpoint saved in "
                      "/runs/r/checkpoints/last; resume with: vclip train -c '/runs/my run/config.yaml' --resume auto")
    assert (e.signum, e.exit_code, e.checkpoint) == (2, 130, "/runs/r/checkpoints/last")
    assert e.resume_command == "vclip train -c '/runs/my run/config.yaml' --resume auto"
    e = interrupted(None, 2, 3, 0)  # another process got the signal; an epoch end
    assert str(e).startswith("stopped by a signal to another process after step 13 (end of epoch 3); ")
    assert e.resume_command.endswith("--resume auto (launched as this run was, e.g. under torchrun)")
    assert (e.signum, e.exit_code) == (15, 143)


def test_evaluate_now():
    def run(val_set, every=2):
        return _run(val_set=val_set, cfg=SimpleNamespace(train=SimpleNamespace(eval_every=every)),
                    plan=_Plan(4, 4, 20, 5, 0))

    assert [run([1])._evaluate_now(e, False) for e in range(5)] == [False, True, False, True, True]
    assert [run([1], every=1)._evaluate_now(e, False) for e in range(5)] == [True] * 5
    assert [run([1], every=3)._evaluate_now(e, False) for e in range(5)] == [False, False, True, False, True]
    assert run([1])._evaluate_now(0, True)  # the run's last step, before its last epoch (max_steps)
    assert not run(None)._evaluate_now(4, True)  # no validation set


def test_finish_summary(caplog):
    def run(skipped=0, nonfinite=0):
        return _run(train_set=SimpleNamespace(num_skipped=skipped), nonfinite_skips=nonfinite, step=12,
                    plan=_Plan(4, 4, 12, 3, 0), dist=SimpleNamespace(is_main=True))

    with caplog.at_level(logging.WARNING, logger="vclip.engine.trainer"):
        out = run(skipped=3, nonfinite=2)._finish({}, 12.345)
    assert out == {"training": {"steps": 12, "epochs": 3, "seconds": 12.3, "skipped_training_videos": 3,
                                "nonfinite_skips": 2}}
    assert caplog.messages == [
        "3 training samples were replaced because their video could not be decoded",
        "2 optimizer steps were skipped for a non-finite loss or gradient norm"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vclip.engine.trainer"):
        assert run()._finish({}, 0.04)["training"]["seconds"] == 0.0
    assert caplog.messages == []


# --------------------------------------------------------------------------- _optimizer_step on a Linear


def _step_run(clip_grad=1.0, limit=0):
    """A run around ``Linear(2, 1)`` (weight [1, 1], bias 0), SGD at LR 0.1 halved after every step,
    gradients set by hand: the update of a step is visible in the weights exactly."""
    torch.manual_seed(0)
    method = torch.nn.Linear(2, 1)
    with torch.no_grad():
        method.weight.copy_(torch.tensor([[1.0, 1.0]]))
        method.bias.zero_()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    return _run(cfg=SimpleNamespace(train=SimpleNamespace(clip_grad=clip_grad, max_nonfinite_skips=limit)),
                method=method, optimizer=opt, scheduler=sched, scaler=torch.amp.GradScaler("cpu", enabled=False),
                device=torch.device("cpu"), step=0, _finite=None, _checked_step=0, signal=None, _stop=False,
                check_every=4, plan=_Plan(8, 8, 80, 10, 0), nonfinite_skips=0, ckpts=_Ckpts(), logger=_Logger())


def _saving_run(tmp_path):
    """A ``_step_run`` that saves checkpoints under ``tmp_path`` as rank 0 of one process."""
    from vclip.engine.checkpoint import CheckpointManager

    run = _step_run()
    run.ckpts = CheckpointManager(tmp_path)
    run.dist = SimpleNamespace(is_main=True, rank=0, world_size=1)
    run.cfg.model = SimpleNamespace(method="clip")
    run.config_dict, run.config_hash = {"name": "r"}, "abc"
    return run


def _set_grads(run, weight=(3.0, 4.0), bias=0.0):
    run.method.weight.grad = torch.tensor([list(weight)])
    run.method.bias.grad = torch.tensor([bias])


def test_optimizer_step_clips_steps_and_schedules():
    run = _step_run(clip_grad=1.0)
    _set_grads(run)  # norm 5: clipped to 1
    lr, stats = run._optimizer_step({"loss": torch.tensor(2.0), "ce": torch.tensor(0.25)})
    assert lr == 0.1 and stats == {"loss": 2.0, "ce": 0.25}
    torch.testing.assert_close(run.method.weight.detach(), torch.tensor([[1 - 0.1 * 0.6, 1 - 0.1 * 0.8]]))
    assert run.method.weight.grad is None and run.method.bias.grad is None  # zeroed (set to None)
    assert (run.step, run._checked_step, run._stop) == (1, 1, False)
    assert run.optimizer.param_groups[0]["lr"] == 0.05  # the schedule moved on
    _set_grads(run, (0.3, 0.4))  # norm 0.5: below the clip, unchanged; no host check
    run.signal = signal.SIGTERM
    lr, stats = run._optimizer_step({"loss": torch.tensor(1.0)}, check=False)
    assert lr == 0.05 and stats is None and run._stop is False  # a signal is agreed on at check steps only
    torch.testing.assert_close(run.method.weight.detach(), torch.tensor([[0.94 - 0.015, 0.92 - 0.02]]))
    assert bool(run._finite) and (run.step, run._checked_step) == (2, 1)
    assert run.method.weight.grad is None and run.optimizer.param_groups[0]["lr"] == 0.025
    _set_grads(run, (0.0, 0.0))
    lr, stats = run._optimizer_step({"loss": torch.tensor(1.0)}, check=True)
    assert run._stop is True and run._finite is None and (run.step, run._checked_step) == (3, 3)


def test_optimizer_step_without_clipping_and_without_gradients():
    run = _step_run(clip_grad=None)
    _set_grads(run)
    run._optimizer_step({"loss": torch.tensor(2.0)}, check=False)
    torch.testing.assert_close(run.method.weight.detach(), torch.tensor([[1 - 0.3, 1 - 0.4]]))
    run = _step_run(clip_grad=1.0)  # no gradient at all (nothing trained this step): a zero norm, no error
    lr, stats = run._optimizer_step({"loss": torch.tensor(2.0)})
    assert stats == {"loss": 2.0} and run.step == 1


def test_optimizer_step_nonfinite_between_checks_stops_at_the_next_check():
    run = _step_run()
    _set_grads(run)
    run._optimizer_step({"loss": torch.tensor(1.0)}, check=False)
    assert bool(run._finite)
    _set_grads(run, (math.nan, 0.0))  # a non-finite gradient norm, finite loss, unchecked step 2
    run._optimizer_step({"loss": torch.tensor(1.0)}, check=False)
    assert not bool(run._finite)
    _set_grads(run)
    run._optimizer_step({"loss": torch.tensor(1.0)}, check=False)
    assert not bool(run._finite)  # stays false until the check
    _set_grads(run)
    with pytest.raises(TrainingError) as e:
        run._optimizer_step({"loss": torch.tensor(1.0)}, check=True)
    assert str(e.value) == ("a non-finite loss term or gradient norm at one of steps 1–3 (host checks every "
                            "train.check_every=4 steps); training stopped, nothing saved (last checkpoint: "
                            "none); rerun with train.check_every=1 to find the step, then lower train.lr, set "
                            "train.clip_grad, or skip such steps with train.max_nonfinite_skips=N")
    run = _step_run()
    _set_grads(run)
    run._optimizer_step({"loss": torch.tensor(math.inf)}, check=False)  # a non-finite loss term
    assert not bool(run._finite)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_optimizer_step_skips_a_nonfinite_update_within_the_limit():
    run = _step_run(limit=1)
    _set_grads(run, (math.inf, 0.0))
    lr, stats = run._optimizer_step({"loss": torch.tensor(1.0)})
    assert lr == 0.1 and run.nonfinite_skips == 1 and run.step == 1
    torch.testing.assert_close(run.method.weight.detach(), torch.tensor([[1.0, 1.0]]))  # no update
    assert run.method.weight.grad is None and run.optimizer.param_groups[0]["lr"] == 0.05
    _set_grads(run)
    with pytest.raises(TrainingError, match=r"^step 2 \(epoch 1\): non-finite loss term 'loss' \(nan\)"):
        run._optimizer_step({"loss": torch.tensor(math.nan)})
    run = _step_run(limit=0)
    _set_grads(run, (math.inf, 0.0))
    with pytest.raises(TrainingError, match=r"^step 1 \(epoch 1\): non-finite gradient norm \(inf\) with a finite "
                                            r"loss \(1.0\), first in 'weight'"):
        run._optimizer_step({"loss": torch.tensor(1.0)})


# --------------------------------------------------------------------------- _evaluate with fakes


def test_evaluate_epoch_views_then_full_views(tmp_path, monkeypatch):
    """``eval.epoch_views`` "2x1" of 4×3: the epoch-view dataset is built once (with the run's class
    names) and reused; the last epoch is scored with both, logged as ``val/*`` and ``final/*``, and
    the full-view results come back with the epoch-view scores under ``epoch_views``."""
    from vclip.config import EvalConfig, RunConfig

    cfg = RunConfig(output_dir=str(tmp_path), eval=EvalConfig(num_clips=4, num_crops=3, epoch_views="2x1"))
    built, written = [], []
    top1 = iter([0.5, 0.25, 0.75])

    def eval_dataset(c, names):
        built.append((c.eval.num_clips, c.eval.num_crops, names))
        return "epoch-view set"

    def evaluate_method(method, dataset, vocab, c, dist, logger):
        assert (method, vocab, dist, logger) == ("method", "vocab", run.dist, run.logger)
        return {"top1": next(top1), "top5": 1.0, "mean_class_accuracy": 0.375, "num_videos": 3,
                "views": {"clips": c.eval.num_clips, "crops": c.eval.num_crops}, "dataset": dataset, "per_class": [1.0]}

    monkeypatch.setattr(T.run_data, "eval_dataset", eval_dataset)
    monkeypatch.setattr(T, "evaluate_method", evaluate_method)
    monkeypatch.setattr(T, "write_results", lambda results, path, names, confusion_png: written.append(
        (results["top1"], Path(path).name, names, confusion_png)))
    run = _run(cfg=cfg, plan=_Plan(4, 4, 8, 2, 0), dist=SimpleNamespace(is_main=True), names=["a", "b"],
               val_set="full set", logger=_Logger(), step=4, method="method", vocab="vocab")
    first = run._evaluate(0)
    assert first == {"top1": 0.5, "top5": 1.0, "mean_class_accuracy": 0.375, "num_videos": 3,
                     "views": {"clips": 2, "crops": 1}, "dataset": "epoch-view set", "per_class": [1.0]}
    run.step = 8
    final = run._evaluate(1)
    assert built == [(2, 1, ["a", "b"])]  # built once, for the epoch views
    assert final == {"top1": 0.75, "top5": 1.0, "mean_class_accuracy": 0.375, "num_videos": 3,
                     "views": {"clips": 4, "crops": 3}, "dataset": "full set", "per_class": [1.0],
                     "epoch_views": {"top1": 0.25, "top5": 1.0, "mean_class_accuracy": 0.375, "num_videos": 3,
                                     "views": {"clips": 2, "crops": 1}}}  # the scalars and views only
    assert written == [(0.5, "results_epoch1.json", ["a", "b"], None), (0.25, "results_epoch2.json", ["a", "b"], None)]
    scalars = {"top5": 1.0, "mean_class_accuracy": 0.375, "num_videos": 3}
    assert run.logger.calls == [(4, {"val/top1": 0.5, **{f"val/{k}": v for k, v in scalars.items()}}),
                                (8, {"val/top1": 0.25, **{f"val/{k}": v for k, v in scalars.items()}}),
                                (8, {"final/top1": 0.75, **{f"final/{k}": v for k, v in scalars.items()}})]
    # views equal to the full ones: one evaluation per epoch, on the run's own set; rank > 0 writes nothing
    cfg = RunConfig(output_dir=str(tmp_path), eval=EvalConfig(num_clips=2, num_crops=1, epoch_views="2x1"))
    run = _run(cfg=cfg, plan=_Plan(4, 4, 8, 2, 0), dist=SimpleNamespace(is_main=False), names=["a", "b"],
               val_set="full set", logger=_Logger(), step=8, method="method", vocab="vocab")
    top1, written[:] = iter([0.125]), []
    assert run._evaluate(1)["dataset"] == "full set" and written == [] and len(built) == 1


# --------------------------------------------------------------------------- _save then _restore


def test_save_then_restore_round_trip(tmp_path, caplog):
    """A checkpoint written by ``_save`` (rank 0 of one process) and read by ``_restore`` into a
    fresh run: weights, optimizer and schedule state, step, non-finite skip count and the RNG
    continue exactly; the epoch and micro-batch come back; ``best`` follows the metric."""
    import json

    def make():
        return _saving_run(tmp_path)

    run = make()
    _set_grads(run)
    run._optimizer_step({"loss": torch.tensor(1.0)})
    run.optimizer = torch.optim.AdamW(run.method.parameters(), lr=0.1)  # a state to restore
    _set_grads(run)
    run.optimizer.step()
    run.step, run.nonfinite_skips = 7, 2
    torch.manual_seed(123)
    run._save(3, 5, metric=0.5)
    after_save = torch.rand(3)
    meta = json.loads((tmp_path / "checkpoints" / "last" / "meta.json").read_text())
    assert {k: meta[k] for k in ("step", "epoch", "micro_in_epoch", "metric", "config_hash", "config", "method",
                                 "nonfinite_skips")} == {
        "step": 7, "epoch": 3, "micro_in_epoch": 5, "metric": 0.5, "config_hash": "abc", "config": {"name": "r"},
        "method": "clip", "nonfinite_skips": 2}
    assert json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())["metric"] == 0.5

    # a worse metric keeps the best; no metric keeps it too
    run._save(4, 0, metric=0.25)
    run._save(5, 0)
    assert json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())["metric"] == 0.5
    assert json.loads((tmp_path / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 5
    fresh = make()
    fresh.optimizer = torch.optim.AdamW(fresh.method.parameters(), lr=0.1)
    torch.manual_seed(999)
    best = tmp_path / "checkpoints" / "best"  # not the latest: the path given is the one read
    with caplog.at_level(logging.INFO, logger="vclip.engine.trainer"):
        assert fresh._restore(best) == (3, 5)
    assert caplog.messages == [f"resumed from {best} at epoch 3, step 7"]
    assert torch.equal(torch.rand(3), after_save)  # the RNG continues where the saved run was
    assert (fresh.step, fresh._checked_step, fresh.nonfinite_skips) == (7, 7, 2)
    for a, b in zip(run.method.parameters(), fresh.method.parameters()):
        assert torch.equal(a, b)
    sa, sb = run.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and len(sa) == 2
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) and torch.equal(sa[k]["step"], sb[k]["step"])
    assert fresh.scheduler.state_dict() == run.scheduler.state_dict()
    assert fresh.scheduler.last_epoch == 1
    assert make()._restore(None) == (0, 0)
    # a process whose rank the checkpoint has no RNG state for (more processes than saved) takes rank 0's
    more = make()
    more.dist = SimpleNamespace(is_main=False, rank=1, world_size=2)
    more.optimizer = torch.optim.AdamW(more.method.parameters(), lr=0.1)
    torch.manual_seed(999)
    more._restore(best)
    assert torch.equal(torch.rand(3), after_save)


def test_finish_writes_the_results_with_the_training_summary(tmp_path, monkeypatch):
    from vclip.config import EvalConfig, RunConfig

    written = []
    monkeypatch.setattr(T, "write_results", lambda results, path, names, confusion_png: written.append(
        (results, path, names, confusion_png)))
    for png in (True, False):
        cfg = RunConfig(output_dir=str(tmp_path), eval=EvalConfig(confusion_png=png))
        run = _run(train_set=SimpleNamespace(num_skipped=0), nonfinite_skips=0, step=12, cfg=cfg, names=["a"],
                   plan=_Plan(4, 4, 12, 3, 0), dist=SimpleNamespace(is_main=True))
        out = run._finish({"top1": 0.5}, 1.0)
        summary = {"steps": 12, "epochs": 3, "seconds": 1.0, "skipped_training_videos": 0, "nonfinite_skips": 0}
        assert out == {"top1": 0.5, "training": summary}
        assert written[-1] == (out, cfg.run_dir / "results.json", ["a"], cfg.run_dir / "confusion.png" if png else None)
    run.dist = SimpleNamespace(is_main=False)  # other ranks write nothing and return the results as they are
    assert run._finish({"top1": 0.5}, 1.0) == {"top1": 0.5} and len(written) == 2


def test_save_errors(tmp_path, monkeypatch):
    from vclip.errors import CheckpointError

    class Failing:
        def save(self, *args, **kwargs):
            raise CheckpointError("disk full")

    run = _step_run()
    run.ckpts, run.dist = Failing(), SimpleNamespace(is_main=True, rank=0, world_size=1)
    run.cfg.model, run.config_dict, run.config_hash = SimpleNamespace(method="clip"), {}, "h"
    with pytest.raises(CheckpointError, match="^disk full$"):
        run._save(1, 0)
    # another process failed: this one raises too, naming process 0
    monkeypatch.setattr(T, "any_rank", lambda flag, dist: True)
    run.dist = SimpleNamespace(is_main=False, rank=1, world_size=2)
    with pytest.raises(CheckpointError, match=r"^process 0 could not save the checkpoint \(see its error\)$"):
        run._save(1, 0)


# --------------------------------------------------------------------------- _train_epoch / _micro_step on fakes


class _Sampler:
    def __init__(self):
        self.calls = []

    def set_epoch(self, epoch):
        self.calls.append(("set_epoch", epoch))

    def skip_first(self, n):
        self.calls.append(("skip_first", n))


class _Loader(list):
    def __init__(self, batches):
        super().__init__(batches)
        self.sampler = _Sampler()


class _Progress(_Logger):
    def __init__(self):
        super().__init__()
        self.bars = []

    def progress(self, loader, total, desc):
        self.bars.append((total, desc))
        return loader


class _Quadratic(torch.nn.Module):
    """loss "ce" = mean((w · x − y)²) of a batch, "aux" = 0.5 (weighted 0 by default: logged, not
    optimised)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, -0.25]))
        self.calls = []

    def forward(self, video, vocab, targets, label_smoothing):
        self.calls.append((video.shape[0], vocab, label_smoothing, self.training))
        ce = ((video @ self.w - targets.float()) ** 2).mean()
        return SimpleNamespace(losses={"ce": ce, "aux": torch.tensor(0.5)})


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"video": torch.randn(2, 2, generator=g), "label": torch.randint(0, 3, (2,), generator=g)}
            for _ in range(n)]


def _epoch_run(batches, accum=2, total=3, save_every=2, log_every=2, per_epoch=None):
    method = _Quadratic()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    t = SimpleNamespace(accum_steps=accum, log_every=log_every, save_every=save_every, seed=5, clip_grad=None,
                        max_nonfinite_skips=0)
    cfg = SimpleNamespace(train=t, data=SimpleNamespace(batch_size=2, aug=SimpleNamespace(label_smoothing=0.1)),
                          run_dir=Path("/runs/r"))
    per_epoch = per_epoch or len(batches)
    run = _run(cfg=cfg, method=method, model=method, forward=method, optimizer=opt,
               scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
               scaler=torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"),
               dist=SimpleNamespace(rank=0, world_size=1), mix=None, vocab="vocab", amp_dtype=None,
               loss_weights={"ce": 1.0, "aux": 0.0}, step=0, _finite=None, _checked_step=0, signal=None,
               _stop=False, check_every=1, nonfinite_skips=0, ckpts=_Ckpts(), logger=_Progress(),
               plan=_Plan(per_epoch, per_epoch // accum, total, 2, 0), loader=_Loader(batches))
    run.saves = []
    run._save = lambda epoch, micro, metric=None: run.saves.append((epoch, micro))
    grads = []
    real_step = run._optimizer_step

    def step(losses, check=True):
        grads.append(method.w.grad.detach().clone())
        return real_step(losses, check)

    run._optimizer_step = step
    return run, grads


def test_train_epoch_accumulates_logs_saves_and_stops():
    batches = _batches(6)
    run, grads = _epoch_run(batches)
    w0 = run.method.w.detach().clone()
    run.method.eval()
    assert run._train_epoch(1, 0) is True  # the run's last step (3 of 3) done
    assert run.loader.sampler.calls == [("set_epoch", 1)]
    assert run.logger.bars == [(6, "epoch 2/2")]
    assert run.method.calls == [(2, "vocab", 0.1, True)] * 6  # train mode, the configured smoothing
    assert run.step == 3 and run.saves == [(1, 4)]  # step 2 at micro-batch 4 of 6; step 3 ends the epoch
    # each step's gradient: the mean of its two micro-batches' gradients (not their sum)
    w = w0.clone().requires_grad_(True)
    losses = []
    for s in range(3):
        per_micro = []
        for b in batches[2 * s: 2 * s + 2]:
            ce = ((b["video"] @ w - b["label"].float()) ** 2).mean()
            per_micro.append((torch.autograd.grad(ce, w)[0], float(ce.detach())))
        want = (per_micro[0][0] + per_micro[1][0]) / 2
        torch.testing.assert_close(grads[s], want)
        losses.append((per_micro[0][1] + per_micro[1][1]) / 2)
        with torch.no_grad():
            w -= 0.1 * want
    logged = run.logger.calls
    assert [(s, v["epoch"], v["lr"]) for s, v in logged] == [(2, 1 + 4 / 6, 0.1), (3, 2.0, 0.1)]
    for (s, v), want in zip(logged, losses[1:]):
        assert v["loss"] == pytest.approx(want, rel=1e-6) and v["ce"] == pytest.approx(want, rel=1e-6)
        assert v["aux"] == pytest.approx(0.5) and set(v) == {"epoch", "lr", "loss", "ce", "aux"}


def test_train_epoch_resumes_mid_epoch_and_stops_on_a_signal():
    run, _ = _epoch_run(_batches(4), total=10, save_every=None, per_epoch=8)
    assert run._train_epoch(0, 4) is False  # micro-batches 5–8 of 8: two steps, the run goes on
    assert run.loader.sampler.calls == [("set_epoch", 0), ("skip_first", 8)]
    assert run.logger.bars == [(4, "epoch 1/2")] and run.step == 2 and run.saves == []
    run, _ = _epoch_run(_batches(4), total=10, save_every=None, per_epoch=8)
    run.signal = signal.SIGTERM
    with pytest.raises(TrainingInterrupted):
        run._train_epoch(0, 0)  # the first step agrees to stop: saved there, then interrupted
    assert run.step == 1 and run.saves == [(0, 2)]


class _Features(_Quadratic):
    """A method with a cached text side (``class_features``) and a switch for a trained one."""

    def __init__(self, trainable):
        super().__init__()
        self.trainable = trainable

    def text_trainable(self):
        return self.trainable

    def class_features(self, vocab):
        return ("features of", vocab)

    def forward(self, video, vocab, targets, label_smoothing):
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().forward(video, vocab, targets, label_smoothing)


class _NoSyncDDP(_FakeDDP):
    def __init__(self):
        super().__init__()
        self.no_syncs = 0

    def no_sync(self):
        self.no_syncs += 1
        return contextlib.nullcontext()


def test_micro_step_mixup_text_side_autocast_and_no_sync():
    batch = _batches(1)[0]
    # Mixup: drawn from a generator seeded by (seed, epoch, micro-batch, rank); no label smoothing on top
    run, _ = _epoch_run([batch])
    run.dist = SimpleNamespace(rank=3, world_size=4)
    seen = []

    def mix(video, labels, rng):
        seen.append((video, labels, rng.random()))
        return video * 2, labels.float() * 0.5  # stand-ins for mixed video and soft targets

    run.mix = mix
    terms = run._micro_step(batch, 7, 11, sync=True)
    assert len(seen) == 1 and seen[0][0] is not None and torch.equal(seen[0][1], batch["label"])
    assert seen[0][2] == np.random.default_rng([5, 7, 11, 3]).random()
    assert run.method.calls[-1][2] == 0.0  # Mixup's soft targets carry the smoothing
    want = float(((batch["video"] * 2 @ run.method.w.detach() - batch["label"].float() * 0.5) ** 2).mean())
    assert float(terms["loss"]) == pytest.approx(want, rel=1e-6) and set(terms) == {"loss", "ce", "aux"}
    # a frozen text side: the cached class features go into the forward; a trained one: the vocabulary
    for trainable, vocab in ((False, ("features of", "vocab")), (True, "vocab")):
        run, _ = _epoch_run([batch])
        run.method = run.forward = _Features(trainable)
        run.optimizer = torch.optim.SGD(run.method.parameters(), lr=0.1)
        run._micro_step(batch, 0, 0, sync=True)
        assert run.method.calls[-1][1] == vocab and run.method.autocast == (False, torch.float32)
    run.amp_dtype = torch.bfloat16
    run._micro_step(batch, 0, 0, sync=True)
    assert run.method.autocast == (True, torch.bfloat16)
    # DDP's no_sync on every micro-batch of an accumulation but the last
    run, _ = _epoch_run(_batches(4), total=10, save_every=None, per_epoch=8)
    run.model = _NoSyncDDP()
    run._train_epoch(0, 4)
    assert run.model.no_syncs == 2  # micro-batches 5 and 7 of 5–8


def test_train_epoch_check_steps_and_saves_at_a_signal():
    run, _ = _epoch_run(_batches(4), total=10, save_every=None, log_every=3, per_epoch=10)
    run.check_every = 3
    run._train_epoch(0, 4)
    assert run.step == 2 and run._checked_step == 0 and run._finite is not None  # no host check yet
    assert run.logger.calls == []
    run, _ = _epoch_run(_batches(6), total=10, save_every=1, per_epoch=6)
    assert run._train_epoch(0, 0) is False
    assert run.saves == [(0, 2), (0, 4)]  # not at the epoch's end: the epoch-end checkpoint follows
    run, _ = _epoch_run(_batches(4), total=10, save_every=1, per_epoch=8)
    run.signal = signal.SIGINT
    with pytest.raises(TrainingInterrupted, match=r"\(epoch 1, micro-batch 2 of 8\)"):
        run._train_epoch(0, 0)
    assert run.saves == [(0, 2)]  # saved once: the regular save is the stop's checkpoint


def test_train_epoch_seeds_mixup_by_epoch_and_micro_batch():
    run, _ = _epoch_run(_batches(4), total=10, save_every=None, per_epoch=8)
    draws = []
    run.mix = lambda video, labels, rng: (draws.append(rng.random()), (video, labels.float()))[1]
    run._train_epoch(2, 4)  # resumed at micro-batch 4 of epoch 3: the draws of micro-batches 4–7
    assert draws == [np.random.default_rng([5, 2, m, 0]).random() for m in (4, 5, 6, 7)]


# --------------------------------------------------------------------------- what the old survivors left open


def test_mean_over_ranks_divides_the_sum_by_the_world_size(monkeypatch):
    """Two processes holding the same values (the collective replaced by a doubling): the mean is
    the value itself, not four times it."""
    import vclip.engine.distributed as D

    monkeypatch.setattr(D, "all_reduce_sum", lambda t: t * 2)
    monkeypatch.setattr(D, "world_size", lambda: 2)
    assert T._mean_over_ranks({"loss": torch.tensor(1.5), T._STOP: 1.0}) == {"loss": 1.5, T._STOP: 1.0}


def test_micro_step_logs_the_weighted_loss_under_loss_even_beside_a_term_of_that_name():
    """A method whose own terms include one named ``loss``: the logged ``loss`` is the weighted
    total (what is optimised), not the method's term."""
    batch = _batches(1)[0]
    run, _ = _epoch_run([batch])

    class Named(_Quadratic):
        def forward(self, video, vocab, targets, label_smoothing):
            out = super().forward(video, vocab, targets, label_smoothing)
            return SimpleNamespace(losses={"ce": out.losses["ce"], "loss": torch.tensor(4.0)})

    run.method = run.forward = Named()
    run.loss_weights = {"ce": 1.0, "loss": 0.5}
    terms = run._micro_step(batch, 0, 0, sync=True)
    ce = float(((batch["video"] @ run.method.w.detach() - batch["label"].float()) ** 2).mean())
    assert set(terms) == {"loss", "ce"}
    assert float(terms["loss"]) == pytest.approx(ce + 2.0, rel=1e-6) and float(terms["ce"]) == pytest.approx(ce)


def _saved_run(tmp_path, monkeypatch, rng=None):
    """``_save`` of a ``Linear(2, 1)`` run at step 3 (with ``rng`` as the gathered RNG states when
    given), and a fresh run to restore it into."""
    def make():
        return _saving_run(tmp_path)

    run = make()
    run.step = 3
    if rng is not None:
        monkeypatch.setattr(T, "_gather_rng", lambda: rng)
    run._save(1, 0)
    monkeypatch.undo()
    return make()


def test_restore_takes_its_own_ranks_rng_state(tmp_path, monkeypatch):
    from vclip.engine.checkpoint import capture_rng_state

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(capture_rng_state())
    fresh = _saved_run(tmp_path, monkeypatch, rng=states)
    fresh.dist = SimpleNamespace(is_main=False, rank=1, world_size=2)
    fresh._restore(tmp_path / "checkpoints" / "last")
    got = torch.rand(3)
    assert fresh.step == 3
    torch.manual_seed(2)
    assert torch.equal(got, torch.rand(3))  # rank 1's state (seed 2), not rank 0's (seed 1)


def test_restore_of_a_checkpoint_without_a_skip_count_and_of_weights_that_do_not_fit(tmp_path, monkeypatch):
    from vclip.errors import CheckpointError

    fresh = _saved_run(tmp_path, monkeypatch)
    fresh.nonfinite_skips = 5
    real_load = fresh.ckpts.load

    def load_old(path):  # a checkpoint written before nonfinite_skips was recorded
        model_state, state, meta = real_load(path)
        return model_state, state, {k: v for k, v in meta.items() if k != "nonfinite_skips"}

    fresh.ckpts.load = load_old
    last = tmp_path / "checkpoints" / "last"
    fresh._restore(last)
    assert fresh.nonfinite_skips == 0 and type(fresh.nonfinite_skips) is int
    fresh.method = torch.nn.Linear(3, 1)  # another model: the error names the --resume path
    with pytest.raises(CheckpointError, match=rf"^--resume {last}: the checkpoint's weights do not fit the model"):
        fresh._restore(last)


def test_training_interrupted_survives_pickling():
    """A parallel suite's worker sends it back to the main process: every field crosses."""
    import pickle

    e = TrainingInterrupted("stopped at step 3", signum=15, exit_code=143, resume_command="vclip train -c c.yaml",
                            checkpoint="/runs/a/checkpoints/last")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is TrainingInterrupted and str(back) == "stopped at step 3"
    assert (back.signum, back.exit_code, back.resume_command, back.checkpoint) == \
        (15, 143, "vclip train -c c.yaml", "/runs/a/checkpoints/last")
