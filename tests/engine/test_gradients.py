"""The trainer's gradients themselves (not losses or Adam-normalised weights, which are blind to a
gradient's scale): accumulated micro-batches equal one larger batch, and two DDP processes equal
one process with the same global batch, parameter by parameter."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from vclip.config import load_config
from vclip.engine.distributed import DistInfo
from vclip.engine.logging import RunLogger

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _step_grads(cfg, dist: DistInfo, micro_batches: int) -> dict[str, torch.Tensor]:
    """Build the trainer's run for ``cfg`` and take the first optimizer step's ``micro_batches``
    forward/backward passes through ``_Run._micro_step`` (DDP's all-reduce on the last, as in
    training); the parameters' gradients, before any clipping or optimizer."""
    from vclip.engine.trainer import _Run

    with RunLogger(cfg.run_dir, rank=dist.rank, use_tensorboard=False) as logger:
        run = _Run(cfg, dist, logger)
        run.method.train()
        run.loader.sampler.set_epoch(0)
        run.optimizer.zero_grad(set_to_none=True)
        it = iter(run.loader)
        for micro in range(micro_batches):
            run._micro_step(next(it), 0, micro, sync=micro + 1 == micro_batches)
        return {n: p.grad.detach().clone() for n, p in run.method.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, ref: dict, rel: float) -> None:
    """Every gradient equal to ``rel`` of the largest gradient (rounding of a different summation
    order only); a gradient off by a factor, or by a half-batch, is far outside."""
    assert set(got) == set(ref) and len(ref) > 10
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 0
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=rel * scale, msg=n)


def test_accumulated_gradients_equal_a_larger_batch(synth, make_config):
    """2 micro-batches of 4 accumulate exactly the gradient of one batch of 8 (the mean loss over
    the 8 videos, not twice it)."""
    common = ["data.val_list=null", "train.max_steps=3"]
    big = load_config([str(make_config("gbig"))], common + ["data.batch_size=8"])
    acc = load_config([str(make_config("gacc"))], common + ["data.batch_size=4", "train.accum_steps=2"])
    ref = _step_grads(big, CPU, 1)
    got = _step_grads(acc, CPU, 2)
    _assert_same_grads(got, ref, 1e-5)


# ------------------------------------------------------------------ DDP: gradients after the all-reduce

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: str, overrides: list[str], out_dir: str) -> None:
    from vclip.engine import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist = D.init_distributed("cpu", timeout_s=120)
    try:
        cfg = load_config([config], overrides)
        grads = _step_grads(cfg, dist, 1)
        torch.save(grads, os.path.join(out_dir, f"g{rank}.pt"))
    finally:
        D.cleanup()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("method", ["clip", "xclip"])
def test_two_process_ddp_gradients_equal_one_process(synth, make_config, tmp_path, method):
    """2 gloo processes × batch 4 through the trainer's DDP path: after the all-reduce every
    parameter's gradient, on both processes, equals one process's gradient over the same 8 videos
    (the average over processes, not the sum; no parameter left unsynchronised)."""
    import torch.multiprocessing as mp

    common = ["data.val_list=null", "train.max_steps=2", f"model.method={method}"]
    two = make_config("ddp2", data={"batch_size": 4})
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(two), common, str(tmp_path)), nprocs=2, join=True)
    one = load_config([str(make_config("ddp1", data={"batch_size": 8}))], common)
    ref = _step_grads(one, CPU, 1)
    for rank in range(2):
        got = torch.load(tmp_path / f"g{rank}.pt", weights_only=True)
        _assert_same_grads(got, ref, 1e-5)
