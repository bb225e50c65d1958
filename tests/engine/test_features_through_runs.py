"""Training and evaluation options exercised through real (tiny) runs, as a user sets them in a
config: ``train.clip_grad``, ``train.compile``, ``model.freeze_vision``,
``model.grad_checkpointing``, ``eval.aggregation=mean_logits`` and ``eval.compat_random_test_clips``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vclip.config import load_config
from vclip.engine import trainer as trainer_mod
from vclip.engine.trainer import train


def _small_list(synth: Path, tmp_path: Path, n: int = 16) -> Path:
    lines = (synth / "train.txt").read_text().splitlines()
    # every class present, in the list's order (deterministic)
    path = tmp_path / f"train{n}.txt"
    path.write_text("\n".join(lines[:: max(1, len(lines) // n)][:n]) + "\n")
    return path


def _run(make_config, synth, tmp_path, name, steps=2, **over):
    """A run of ``steps`` optimizer steps without evaluation; its final model weights."""
    over.setdefault("data", {})
    over["data"] = {"train_list": str(_small_list(synth, tmp_path)), "val_list": None, "batch_size": 4,
                    **over["data"]}
    over["train"] = {"max_steps": steps, "seed": 5, **over.get("train", {})}
    cfg = load_config([str(make_config(name, **over))])
    train(cfg)
    return load_file(str(cfg.run_dir / "checkpoints" / "last" / "model.safetensors"))


@pytest.fixture
def grad_norms():
    """The total gradient norm seen by every optimizer step (a global step pre-hook)."""
    seen: list[float] = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.nn.utils.get_total_norm(grads)))

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(hook)
    yield seen
    handle.remove()


def test_clip_grad_bounds_the_norm_each_step_sees_and_changes_the_weights(synth, make_config, tmp_path, grad_norms):
    free = _run(make_config, synth, tmp_path, "free", train={"clip_grad": None})
    free_norms = list(grad_norms)
    grad_norms.clear()
    clipped = _run(make_config, synth, tmp_path, "clipped", train={"clip_grad": 0.01})
    clipped_norms = list(grad_norms)
    assert len(free_norms) == len(clipped_norms) == 2
    # without clipping the optimizer sees the raw gradients (far above 0.01) ...
    assert min(free_norms) > 0.1, free_norms
    # ... with clip_grad=0.01 it sees them rescaled to norm 0.01 exactly
    assert clipped_norms == pytest.approx([0.01, 0.01], rel=1e-4)
    # (the first step's gradients are the same in both runs: same seed, same weights, same batch;
    # AdamW normalises their scale away on step 1, so the weights differ from step 2 on)
    diff = max((free[k] - clipped[k]).abs().max().item() for k in free)
    assert diff > 1e-6


def test_freeze_vision_keeps_the_vision_tower_bit_identical(synth, make_config, tmp_path, monkeypatch):
    built = {}

    def capture(cfg):
        method = build(cfg)
        built["init"] = {k: v.detach().clone() for k, v in method.state_dict().items()}
        return method

    build = trainer_mod.build_method
    monkeypatch.setattr(trainer_mod, "build_method", capture)
    final = _run(make_config, synth, tmp_path, "frozen", model={"freeze_vision": True})
    init = built["init"]
    vision = [k for k in init if k.startswith("clip.visual.")]
    text = [k for k in init if k.startswith("clip.text.")]
    assert vision and text
    for k in vision:
        assert torch.equal(final[k], init[k]), k
    moved = [k for k in text if not torch.equal(final[k], init[k])]
    assert len(moved) > len(text) // 2, f"only {len(moved)} of {len(text)} text tensors moved"


def test_grad_checkpointing_gives_the_same_weights(synth, make_config, tmp_path, monkeypatch):
    from vclip.backbone import model as model_mod

    calls = []
    real = model_mod.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_mod, "checkpoint", counting)
    plain = _run(make_config, synth, tmp_path, "plain")
    assert not calls
    ckpt = _run(make_config, synth, tmp_path, "ckpt", model={"grad_checkpointing": True})
    assert calls  # the blocks really were recomputed in the backward pass
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=0, atol=1e-6, msg=k)


def test_compile_runs_the_model_through_torch_compile(synth, make_config, tmp_path, monkeypatch):
    """``train.compile=true`` trains through ``torch.compile`` and gives the eager run's weights. The
    backend is forced to ``aot_eager`` (dynamo tracing and AOT autograd, no C++ code generation:
    inductor needs minutes of compilation on a 2-core machine)."""
    eager = _run(make_config, synth, tmp_path, "eager")
    calls = []
    real = torch.compile

    def compile_(model, **kw):
        calls.append(type(model).__name__)
        return real(model, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    torch._dynamo.reset()
    try:
        compiled = _run(make_config, synth, tmp_path, "compiled", train={"compile": True})
    finally:
        torch._dynamo.reset()
    assert len(calls) == 1
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=0, atol=1e-5, msg=k)


# ---------------------------------------------------------------------------- evaluation options

@pytest.fixture
def trained(synth, make_config, tmp_path):
    """A 2-step run, its config (2 clips × 1 crop at test time, 6 validation videos) and the
    method loaded from its last checkpoint."""
    from vclip.engine.checkpoint import load_checkpoint
    from vclip.methods import build_method

    val = tmp_path / "val6.txt"
    val.write_text("\n".join((synth / "val.txt").read_text().splitlines()[::8][:6]) + "\n")
    _run(make_config, synth, tmp_path, "evalme", data={"val_list": str(val)},
         eval={"num_clips": 2, "num_crops": 1})
    cfg = load_config([str(tmp_path / "evalme.yaml")])
    method = build_method(cfg)
    method.load_state_dict(load_checkpoint(cfg.run_dir / "checkpoints" / "last")[0])
    return cfg, method


def _scores(cfg, method):
    from vclip.engine import data as run_data
    from vclip.engine.distributed import DistInfo
    from vclip.engine.evaluate import evaluate_method
    from vclip.methods import make_vocabulary

    names = run_data.class_names(cfg)
    ds = run_data.eval_dataset(cfg, names)
    res = evaluate_method(method, ds, make_vocabulary(cfg, names), cfg, DistInfo(0, 1, 0, torch.device("cpu")),
                          return_scores=True)
    return res, ds, make_vocabulary(cfg, names)


def test_mean_logits_is_the_mean_of_each_videos_view_logits(trained, capsys):
    from vclip.cli import main

    cfg, method = trained
    cfg.eval.aggregation = "mean_logits"
    res, ds, vocab = _scores(cfg, method)
    assert res["views"]["aggregation"] == "mean_logits"
    method.eval()
    hand = []
    with torch.no_grad():
        for i in range(len(ds)):
            views = ds[i]["video"]  # [V, T, 3, H, W]: 2 clips × 1 crop
            assert views.shape[0] == 2
            hand.append(method(views, vocab).logits.float().mean(0))
    hand = torch.stack(hand)
    order = np.argsort(res["indices"])
    torch.testing.assert_close(torch.from_numpy(res["scores"][order]), hand, rtol=1e-5, atol=1e-5)
    # softmax_sum (the default) ranks by other numbers: mean_logits really changed the scores
    cfg.eval.aggregation = "softmax_sum"
    default, _, _ = _scores(cfg, method)
    assert not np.allclose(default["scores"], res["scores"])
    # `vclip eval` with the override reports the same top-1 as the hand aggregation
    targets = torch.tensor([ds.records[i].label for i in range(len(ds))])
    top1 = (hand.argmax(1) == targets).float().mean().item()
    assert main(["eval", "--checkpoint", str(cfg.run_dir / "checkpoints" / "last"), "-c",
                 str(cfg.run_dir.parent.parent / "evalme.yaml"), "eval.aggregation=mean_logits"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {100 * top1:.2f}%" in out, out


def test_compat_random_test_clips_draws_clip_positions_from_the_seed(trained):
    cfg, method = trained

    def views(seed: int, compat: bool):
        cfg.train.seed, cfg.eval.compat_random_test_clips = seed, compat
        res, ds, _ = _scores(cfg, method)
        return torch.stack([ds[i]["video"] for i in range(len(ds))]), res["scores"]

    a, sa = views(0, False)
    b, sb = views(1, False)
    assert torch.equal(a, b) and np.array_equal(sa, sb)  # default: deterministic test views
    c, sc = views(0, True)
    c2, _ = views(0, True)
    d, sd = views(1, True)
    assert torch.equal(c, c2)  # reproducible for one seed ...
    assert not torch.equal(c, d) and not np.array_equal(sc, sd)  # ... different clip positions per seed
    assert not torch.equal(a, c)


def test_symmetric_test_positions_reach_the_evaluation_views(trained):
    """``eval.test_positions: symmetric`` gives the evaluation set the reversal-symmetric frames
    (vclip.data.sampling.segment_indices); the default keeps the official middle frames."""
    from vclip.engine import data as run_data

    cfg, _ = trained
    names = run_data.class_names(cfg)
    before = cfg.eval.test_positions
    try:
        assert before == "middle"
        mid = run_data.eval_dataset(cfg, names)
        cfg.eval.test_positions = "symmetric"
        sym = run_data.eval_dataset(cfg, names)
    finally:
        cfg.eval.test_positions = before
    assert mid.sampler.test_positions == "middle" and sym.sampler.test_positions == "symmetric"
    n = 16
    assert sym.sampler.num_clips == mid.sampler.num_clips == 2
    assert sym.sampler(n).tolist() == segment_indices_of(n, sym.sampler.num_frames, 2, True)
    assert mid.sampler(n).tolist() == segment_indices_of(n, mid.sampler.num_frames, 2, False)
    assert sym.sampler(n).tolist() != mid.sampler(n).tolist()


def segment_indices_of(n: int, t: int, clips: int, symmetric: bool) -> list:
    from vclip.data.sampling import segment_indices

    return segment_indices(n, t, test_mode=True, num_clips=clips, symmetric=symmetric).tolist()
