"""The fast GPU path, each piece checked on the CPU (docs/performance.md "Fast path"): bf16 autocast
by default on CUDA, fused AdamW selection, no host sync in a training step between check steps,
one gradient all-reduce per optimizer step under accumulation (DDP ``no_sync``), and an evaluation
that encodes the vocabulary once."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from engine_utils import free_port
from vclip.config import TrainConfig, load_config
from vclip.engine import trainer as trainer_mod
from vclip.engine.optim import build_optimizer, fused_by_default
from vclip.engine.runtime import autocast_dtype
from vclip.engine.trainer import accumulation_context, resolve_check_every, train

VCLIP_DIR = str(Path(trainer_mod.__file__).parents[1])


# ------------------------------------------------------------------ (a) bf16 autocast by default on CUDA
def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu():
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None  # the switch
    assert TrainConfig().precision == "auto"


# ------------------------------------------------------------------ (c) fused AdamW on CUDA
def test_fused_adamw_is_chosen_exactly_when_every_parameter_is_a_cuda_float():
    cuda = SimpleNamespace(is_cuda=True, is_floating_point=lambda: True)
    cpu = SimpleNamespace(is_cuda=False, is_floating_point=lambda: True)
    cuda_int = SimpleNamespace(is_cuda=True, is_floating_point=lambda: False)
    assert fused_by_default([cuda, cuda])
    assert not fused_by_default([cuda, cpu])
    assert not fused_by_default([cuda_int])
    assert not fused_by_default([])


def test_fused_adamw_steps_equal_the_default_ones():
    """The fused kernel (here its CPU version) takes the same steps as the foreach default."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    b.load_state_dict(a.state_dict())
    opts = [build_optimizer(m, lr=1e-2, weight_decay=0.05, fused=f) for m, f in ((a, None), (b, True))]
    assert not opts[0].defaults.get("fused") and opts[1].defaults["fused"]
    x = torch.randn(4, 6)
    for _ in range(3):
        for m, opt in zip((a, b), opts):
            m(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6)
    assert not torch.equal(a[0].weight, torch.nn.Linear(6, 5).weight)


# ------------------------------------------------------------------ (d) no host sync in the training step
_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class SyncCounter:
    """Counts host syncs (``.item()``, ``.cpu()``, ``.tolist()``, ``bool/float/int(tensor)``...)
    made from vclip's code while ``active``; each is recorded with the optimizer step it fell in."""

    def __init__(self, monkeypatch):
        self.active, self.step, self.calls = False, 0, []
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        counter = self

        def wrapper(t, *args, **kwargs):
            if counter.active:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(VCLIP_DIR):
                    counter.calls.append((counter.step, name, caller))
            return original(t, *args, **kwargs)

        return wrapper

    def steps_with_syncs(self) -> set[int]:
        return {s for s, _, _ in self.calls}


def _count_step_syncs(monkeypatch, counter: SyncCounter) -> None:
    """Activate ``counter`` inside every micro-step and optimizer step of the trainer."""
    run = trainer_mod._Run
    micro, opt = run._micro_step, run._optimizer_step

    def micro_step(self, *a, **k):
        counter.active, counter.step = True, self.step + 1
        try:
            return micro(self, *a, **k)
        finally:
            counter.active = False

    def optimizer_step(self, *a, **k):
        counter.active, counter.step = True, self.step + 1
        try:
            return opt(self, *a, **k)
        finally:
            counter.active = False

    monkeypatch.setattr(run, "_micro_step", micro_step)
    monkeypatch.setattr(run, "_optimizer_step", optimizer_step)


@pytest.mark.parametrize("method, options", [("clip", {}), ("xclip", {}), ("ost", {"check_every": 0, "max_iter": 5})])
def test_training_steps_make_no_host_sync_between_check_steps(synth, make_config, monkeypatch, tmp_path,
                                                              method, options):
    """7 optimizer steps (2 micro-batches each), logging and host checks every 3 steps: the steps
    that are neither logging nor the last (1, 2, 4, 5) make no sync from vclip's code (OST with its
    Sinkhorn host check off: ``check_every: 0``)."""
    model = {"method": method, "arch": "tiny", "templates": ["{}"], "options": options}
    if method == "ost":
        import json

        for kind in ("spatial", "temporal"):
            f = tmp_path / f"{kind}.json"
            f.write_text(json.dumps({str(i): [f"{kind} {i} a", f"{kind} {i} b"] for i in range(12)}))
            options = dict(options, **{f"{kind}_descriptors": str(f)})
        model.update(options=dict(options, num_descriptors=2))
    path = make_config(method, model=model, data={"val_list": None, "batch_size": 2},
                       train={"max_steps": 7, "accum_steps": 2, "log_every": 3, "check_every": 3})
    cfg = load_config([str(path)])
    counter = SyncCounter(monkeypatch)
    _count_step_syncs(monkeypatch, counter)
    train(cfg)
    assert counter.steps_with_syncs() <= {3, 6, 7}, counter.calls
    assert {3, 6, 7} <= counter.steps_with_syncs()  # the counter does see the check steps' exchange


def test_check_every_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_check_every(TrainConfig(log_every=10), cpu) == 1
    assert resolve_check_every(TrainConfig(log_every=10), cuda) == 10
    assert resolve_check_every(TrainConfig(log_every=10, check_every=4), cuda) == 4
    assert resolve_check_every(TrainConfig(log_every=10, check_every=4, max_nonfinite_skips=2), cuda) == 1


def test_a_nonfinite_loss_between_checks_stops_at_the_next_check(synth, make_config, monkeypatch):
    """A NaN loss at unchecked step 2 (checks every 3 steps) stops the run at step 3's check, naming
    the steps 1–2 and without saving."""
    path = make_config("nan", data={"val_list": None, "batch_size": 4},
                       train={"max_steps": 6, "log_every": 3, "check_every": 3})
    cfg = load_config([str(path)])
    original = trainer_mod.weighted_loss
    calls = []

    def poisoned(losses, weights):
        calls.append(1)
        loss = original(losses, weights)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(trainer_mod, "weighted_loss", poisoned)
    with pytest.raises(trainer_mod.TrainingError, match=r"steps 1–2 .*check_every=3"):
        train(cfg)
    assert len(calls) == 3
    assert not (cfg.run_dir / "checkpoints" / "last").exists()


# ------------------------------------------------------------------ (g) one all-reduce per optimizer step
def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import gc
    import os

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 3))
        reduces = []

        def hook(state, bucket):
            reduces.append(bucket.index())
            return allreduce_hook(None, bucket)

        model.register_comm_hook(None, hook)
        counts = []
        for step in range(3):
            before = len(reduces)
            for micro in range(2):  # accumulation 2: all-reduce on the last micro-batch only
                with accumulation_context(model, sync=micro == 1):
                    model(torch.randn(2, 4) + rank).sum().backward()
            counts.append(len(reduces) - before)
        torch.save(counts, Path(out) / f"counts{rank}.pt")
        del model, hook  # the reducer and its Python comm hook go before the process group they use
        gc.collect()
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.skipif(not torch_dist.is_available(), reason="no torch.distributed")
def test_accumulation_all_reduces_once_per_optimizer_step(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(tmp_path / f"counts{rank}.pt") == [1, 1, 1]  # one bucket, one all-reduce


# ------------------------------------------------------------------ (h) evaluation never re-encodes text
@pytest.mark.parametrize("method", ["clip", "xclip"])
def test_evaluation_encodes_the_vocabulary_once(synth, make_config, monkeypatch, method):
    """48 validation videos in 6 batches: the text tower runs once (one batch of 12 class names)."""
    from vclip.backbone.model import TextTransformer
    from vclip.engine.evaluate import evaluate

    path = make_config(method, model={"method": method, "arch": "tiny", "templates": ["{}"]},
                       data={"eval_batch_size": 8}, eval={"confusion_png": False})
    cfg = load_config([str(path)])
    calls = []
    forward = TextTransformer.forward
    monkeypatch.setattr(TextTransformer, "forward", lambda self, tokens, *a, **k: calls.append(tokens.shape[0])
                        or forward(self, tokens, *a, **k))
    results = evaluate(cfg)
    assert results["num_videos"] == 48
    assert calls == [12]


# ------------------------------------------------------------------ (f) compiled / CUDA-graph evaluation
def test_eval_compile_option_compiles_the_scoring_and_keeps_the_scores(synth, make_config, monkeypatch):
    """``eval.compile: reduce-overhead`` goes to ``torch.compile(mode=...)`` with static shapes (here
    captured with the eager backend and ``fullgraph``: no codegen on the CPU) and gives the scores of
    the uncompiled evaluation (48 videos in batches of 16)."""
    from vclip.engine import data as run_data
    from vclip.engine.distributed import init_distributed
    from vclip.engine.evaluate import evaluate_method
    from vclip.methods import build_method, make_vocabulary

    seen = []
    compile_ = torch.compile

    def recording_compile(fn, mode=None, dynamic=None, **kw):
        seen.append((mode, dynamic))
        return compile_(fn, backend="eager", fullgraph=True, dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", recording_compile)
    path = make_config("fast", model={"method": "xclip", "arch": "tiny", "templates": ["{}"]},
                       data={"eval_batch_size": 16}, eval={"confusion_png": False, "compile": "reduce-overhead"})
    cfg = load_config([str(path)])
    names = run_data.class_names(cfg)
    vocab, dataset, dist = make_vocabulary(cfg, names), run_data.eval_dataset(cfg, names), init_distributed("cpu")
    torch.manual_seed(0)
    method = build_method(cfg)
    torch._dynamo.reset()
    fast = evaluate_method(method, dataset, vocab, cfg, dist, return_scores=True)
    assert seen == [("reduce-overhead", False)]
    plain_cfg = load_config([str(path)], ["eval.compile=null"])
    plain = evaluate_method(method, dataset, vocab, plain_cfg, dist, return_scores=True)
    assert seen == [("reduce-overhead", False)] and fast["num_videos"] == 48
    np_fast, np_plain = fast["scores"], plain["scores"]
    assert np_fast.shape == (48, 12) and abs(np_fast - np_plain).max() <= 1e-6
    with pytest.raises(Exception, match="eval.compile"):
        load_config([str(make_config("bad", eval={"compile": "fast"}))])
