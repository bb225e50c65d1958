"""``evaluate_method`` on a fake dataset and loader (milliseconds, no video decoding): failed videos
reported by path and error and left out of the metrics, a batch with no decoded video, one-view
batches, the result fields, the progress bar, the training mode restored, non-finite weights
refused; and ``evaluate``, the ``vclip eval`` command, in this process with its builders patched.
Written against the mutants its other tests let survive (docs/testing.md, "Mutation
testing")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vclip.config import DataConfig, EvalConfig, RunConfig
from vclip.engine import evaluate as E
from vclip.engine.distributed import DistInfo
from vclip.errors import EvaluationError

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
K = 4


class Oracle(torch.nn.Module):
    """Scores each view by the class written into its first pixel (10 for that class, 0 elsewhere),
    plus a per-class bias from ``class_features``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []
        self.autocast = []

    def class_features(self, vocab):
        return torch.tensor(vocab, dtype=torch.float32)

    def forward(self, views, class_features):
        self.seen.append((tuple(views.shape), self.training, torch.is_grad_enabled()))
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        cls = views[:, 0, 0, 0, 0].long()
        return SimpleNamespace(logits=10 * self.w * torch.nn.functional.one_hot(cls, K).float() + class_features)


class Dataset:
    def __init__(self, n):
        self.records = [f"rec{i}" for i in range(n)]

    def __len__(self):
        return len(self.records)

    def full_path(self, record):
        return f"/videos/{record}.mp4"


def _batch(indices, labels, preds, valid, views=None, errors=None):
    """A loader batch: video [B, V, T, 3, H, W] (or [B, T, 3, H, W] when ``views`` is None) whose
    first pixel holds the class the oracle predicts."""
    b = len(indices)
    shape = (b, views, 2, 3, 4, 4) if views else (b, 2, 3, 4, 4)
    video = torch.zeros(shape)
    for i, p in enumerate(preds):
        video[i].view(-1)[0] = p  # every view of a video: the first view's first pixel only
        if views:
            video[i, :, 0, 0, 0, 0] = p
    return {"video": video, "label": torch.tensor(labels), "index": torch.tensor(indices),
            "valid": torch.tensor(valid, dtype=torch.uint8),
            "error": errors or ["" if v else f"cannot decode {i}" for i, v in zip(indices, valid)]}


class Logger:
    def __init__(self):
        self.calls = []

    def progress(self, loader, total, desc):
        self.calls.append((total, desc))
        return loader


def _run(monkeypatch, batches, n, views=(1, 1), precision="auto", **kwargs):
    cfg = RunConfig(data=DataConfig(batch_size=3), eval=EvalConfig(num_clips=views[0], num_crops=views[1],
                                                                    aggregation="mean_logits"))
    cfg.train.precision = precision

    def eval_loader(c, ds, rank, world):
        assert (c, len(ds), rank, world) == (cfg, n, 0, 1)  # this process's shard of the whole set
        return batches

    monkeypatch.setattr(E.run_data, "eval_loader", eval_loader)
    method = kwargs.pop("method", None) or Oracle()
    return method, E.evaluate_method(method, Dataset(n), [0.0] * K, cfg, CPU, **kwargs)


def test_failed_videos_are_reported_and_left_out(monkeypatch):
    batches = [_batch([0, 1, 2], [0, 1, 2], [0, 3, 2], [1, 0, 1], views=2),
               _batch([3, 4, 5], [3, 0, 1], [3, 0, 2], [0, 0, 0], views=2),  # nothing decoded: skipped
               _batch([6, 7], [1, 3], [1, 3], [1, 1], views=2)]
    logger = Logger()
    method, res = _run(monkeypatch, batches, 8, views=(2, 1), logger=logger, subsets={"odd": [1, 3]})
    assert res["num_videos"] == 4 and res["num_failed"] == 4
    assert res["top1"] == 1.0  # video 1 (predicted 3, label 1) failed: not scored
    assert res["failed_videos"] == [{"index": i, "path": f"/videos/rec{i}.mp4", "error": f"cannot decode {i}"}
                                    for i in (1, 3, 4, 5)]
    assert res["views"] == {"clips": 2, "crops": 1, "aggregation": "mean_logits"}
    assert res["subsets"]["odd"] == {"top1": 1.0, "num_videos": 2}
    assert logger.calls == [(3, "eval")]
    # the oracle saw the decoded videos' views only, flattened, in eval mode without gradients
    assert method.seen == [((4, 2, 3, 4, 4), False, False), ((4, 2, 3, 4, 4), False, False)]
    assert method.training  # the training mode is restored
    assert method.autocast == [(False, torch.float32)] * 2  # fp32 on the CPU: no autocast
    assert "scores" not in res


def test_one_view_batches_and_returned_scores(monkeypatch):
    batches = [_batch([1, 0], [1, 0], [1, 2], [1, 1]), _batch([2], [3], [3], [1])]
    method = Oracle().eval()
    method, res = _run(monkeypatch, batches, 3, method=method, return_scores=True)
    assert method.seen[0][0] == (2, 2, 3, 4, 4) and not method.training  # eval mode stays eval mode
    assert res["num_videos"] == 3 and res["num_failed"] == 0 and res["failed_videos"] == []
    assert res["top1"] == pytest.approx(2 / 3)
    assert res["indices"].tolist() == [0, 1, 2] and res["targets"].tolist() == [0, 1, 3]
    assert res["scores"].shape == (3, K) and res["scores"][0].tolist() == [0.0, 0.0, 10.0, 0.0]


def test_a_missing_video_is_an_error_not_a_smaller_set(monkeypatch):
    with pytest.raises(EvaluationError):
        _run(monkeypatch, [_batch([0, 1], [0, 1], [0, 1], [1, 1])], 3)


def test_nonfinite_weights_are_refused(monkeypatch):
    method = Oracle()
    with torch.no_grad():
        method.w.fill_(float("nan"))
    with pytest.raises(EvaluationError, match=r"^refusing to evaluate: the model has non-finite weights in 'w' \(1 NaN, 0 inf of 1 values\)$"):
        _run(monkeypatch, [], 1, method=method)


def test_bf16_scores_under_autocast(monkeypatch):
    method, res = _run(monkeypatch, [_batch([0], [2], [2], [1])], 1, precision="bf16")
    assert method.autocast == [(True, torch.bfloat16)] and res["top1"] == 1.0


# --------------------------------------------------------------------------- evaluate(): the command


class _Evaluated:
    """``evaluate``'s builders and writers patched (no model, no data, no files but the run's log):
    what each was given is in ``self.calls``."""

    def __init__(self, monkeypatch, dist=CPU):
        import vclip.engine.distributed as D
        import vclip.engine.inference as I
        import vclip.methods as M

        self.calls: list[tuple] = []

        def record(name, result):
            def fn(*args, **kwargs):
                self.calls.append((name, *args, *kwargs.items()))
                return result(*args)
            return fn

        def method(*args):
            m = Oracle()
            m.drawn = float(torch.rand(()))  # the global RNG right after seeding
            m.to = record("to", lambda *a: m)
            return m

        monkeypatch.setattr(D, "init_distributed", record("init_distributed", lambda device: dist))
        monkeypatch.setattr(E.run_data, "class_names", record("class_names", lambda cfg: ["a", "b"]))
        monkeypatch.setattr(E.run_data, "eval_dataset", record("eval_dataset", lambda *a: "dataset"))
        monkeypatch.setattr(M, "build_method", record("build_method", method))
        monkeypatch.setattr(I, "build_for_checkpoint", record("build_for_checkpoint", method))
        monkeypatch.setattr(I, "open_checkpoint", record("open_checkpoint", lambda path: I.InferenceCheckpoint(
            path=Path("/ck") / path, state={"w": torch.ones(())}, meta={})))
        monkeypatch.setattr(E, "evaluate_method", record("evaluate_method", lambda *a: {"top1": 0.5}))
        monkeypatch.setattr(E, "write_results", record("write_results", lambda *a: None))

    def named(self, name):
        return [c[1:] for c in self.calls if c[0] == name]


def _command_cfg(tmp_path, png=True):
    cfg = RunConfig(output_dir=str(tmp_path), name="ev", device="cpu",
                    eval=EvalConfig(confusion_png=png))
    cfg.train.seed = 11
    return cfg


def test_evaluate_command_without_a_checkpoint(tmp_path, monkeypatch):
    ev = _Evaluated(monkeypatch)
    cfg = _command_cfg(tmp_path)
    assert E.evaluate(cfg, annotation="other.txt", subsets={"s": [0]}) == {"top1": 0.5}
    assert ev.named("init_distributed") == [("cpu",)] and ev.named("class_names") == [(cfg,)]
    assert ev.named("open_checkpoint") == [] and ev.named("build_for_checkpoint") == []
    [(built,)] = ev.named("build_method")
    assert built is cfg and ev.named("to") == [(torch.device("cpu"),)]
    assert ev.named("eval_dataset") == [(cfg, ["a", "b"], "other.txt")]
    [(method, dataset, vocab, c, dist, logger, subsets)] = ev.named("evaluate_method")
    assert (dataset, c, dist, subsets) == ("dataset", cfg, CPU, {"s": [0]})
    assert vocab.class_names == ("a", "b") and isinstance(method, Oracle)
    torch.manual_seed(11)
    assert method.drawn == float(torch.rand(()))  # seeded with train.seed before the build
    assert (logger.run_dir, logger.rank) == (cfg.run_dir, 0) and (cfg.run_dir / "metrics.jsonl").exists()
    assert ev.named("write_results") == [({"top1": 0.5}, cfg.run_dir / "results_eval.json", ["a", "b"],
                                          cfg.run_dir / "confusion_eval.png")]
    ev.calls.clear()
    cfg = _command_cfg(tmp_path, png=False)
    E.evaluate(cfg, checkpoint="")  # an empty checkpoint argument: none
    assert ev.named("open_checkpoint") == [] and len(ev.named("build_method")) == 1
    assert ev.named("eval_dataset") == [(cfg, ["a", "b"], None)]
    assert ev.named("evaluate_method")[0][-1] is None
    assert ev.named("write_results")[0][1:] == (cfg.run_dir / "results_eval.json", ["a", "b"], None)


def test_evaluate_command_with_a_checkpoint(tmp_path, monkeypatch):
    from vclip.engine.inference import InferenceCheckpoint
    from vclip.errors import CheckpointError

    ev = _Evaluated(monkeypatch)
    cfg = _command_cfg(tmp_path)
    E.evaluate(cfg, checkpoint="run/checkpoints/best")
    assert ev.named("open_checkpoint") == [("run/checkpoints/best",)] and ev.named("build_method") == []
    [(c, ck)] = ev.named("build_for_checkpoint")
    assert c is cfg and ck.path == Path("/ck/run/checkpoints/best")
    ev.calls.clear()
    ck = InferenceCheckpoint(path=Path("/opened"), state={"w": torch.ones(())}, meta={})
    E.evaluate(cfg, checkpoint=ck)  # already opened: used as it is
    assert ev.named("open_checkpoint") == [] and ev.named("build_for_checkpoint")[0][1] is ck
    bad = InferenceCheckpoint(path=Path("/diverged"), state={"w": torch.tensor([1.0, float("inf")])}, meta={})
    with pytest.raises(CheckpointError) as e:
        E.evaluate(cfg, checkpoint=bad)
    assert str(e.value) == ("/diverged: refusing to evaluate a checkpoint with non-finite weights in 'w' (0 NaN, "
                            "1 inf of 2 values) (the training that wrote it diverged)")


def test_evaluate_command_on_another_rank_writes_no_results(tmp_path, monkeypatch):
    rank1 = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    ev = _Evaluated(monkeypatch)
    cfg = _command_cfg(tmp_path)
    E.evaluate(cfg, dist=rank1)
    assert ev.named("init_distributed") == [] and ev.named("write_results") == []
    assert ev.named("evaluate_method")[0][4] is rank1 and ev.named("evaluate_method")[0][5].rank == 1


# --------------------------------------------------------------------------- scoring_function, write_results


def test_scoring_function_modes_and_cuda_graph_steps(monkeypatch):
    """``eval.compile`` unset: the method's logits as they are. Set: ``torch.compile`` (patched: a
    recorder, nothing is compiled) with that mode and static shapes; under "reduce-overhead" on a
    CUDA device every call starts a CUDA-graph step and returns a copy, nowhere else. (Named without
    the word the mutation script deselects: no real compilation runs here.)"""
    compiled, steps = [], []

    class Raw(SimpleNamespace):
        """What the patched compiled function returns: its ``clone()`` is recognisable."""

        def clone(self):
            return ("a copy of", self.raw)

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)
        return lambda views, features: Raw(raw=fn(views, features))

    method = Oracle()
    views, features = torch.zeros(1, 2, 3, 4, 4), torch.zeros(K)
    want = method(views, features).logits
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    plain = E.scoring_function(method, None, torch.device("cpu"))
    assert torch.equal(plain(views, features), want) and compiled == []
    for mode, device, graphs in (("reduce-overhead", torch.device("cuda", 0), True),
                                 ("default", torch.device("cuda", 0), False),
                                 ("reduce-overhead", torch.device("cpu"), False)):
        compiled.clear(), steps.clear()
        fn = E.scoring_function(method, mode, device)
        assert compiled == [{"mode": mode, "dynamic": False}]
        outs = [fn(views, features) for _ in range(2)]
        assert steps == ([1, 1] if graphs else [])
        for out in outs:
            if graphs:
                assert out[0] == "a copy of" and torch.equal(out[1], want)
            else:
                assert isinstance(out, Raw) and torch.equal(out.raw, want)


def test_write_results_draws_the_confusion_png_with_the_class_names(tmp_path, monkeypatch):
    import numpy as np

    drawn = []
    monkeypatch.setattr(E, "save_confusion_png", lambda path, matrix, names: drawn.append((path, matrix, names)))
    confusion = np.array([[1, 0], [0, 1]])
    E.write_results({"top1": 1.0, "confusion": confusion}, tmp_path / "r.json", ["run", "jump"], tmp_path / "c.png")
    assert [(p, n) for p, _, n in drawn] == [(tmp_path / "c.png", ["run", "jump"])] and drawn[0][1] is confusion
    E.write_results({"top1": 1.0, "confusion": confusion}, tmp_path / "r.json", ["run", "jump"])
    assert len(drawn) == 1  # no PNG asked for: none drawn


def test_evaluate_method_scores_through_the_configured_mode(monkeypatch):
    """``eval.compile`` reaches the scoring function with the run's device (patched compile: a
    recorder; on the CPU "reduce-overhead" records no CUDA graphs)."""
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = RunConfig(data=DataConfig(batch_size=3), eval=EvalConfig(compile="reduce-overhead"))
    monkeypatch.setattr(E.run_data, "eval_loader", lambda *a: [_batch([0, 1], [0, 1], [0, 1], [1, 1])])
    res = E.evaluate_method(Oracle(), Dataset(2), [0.0] * K, cfg, CPU)
    assert compiled == [{"mode": "reduce-overhead", "dynamic": False}] and res["top1"] == 1.0
