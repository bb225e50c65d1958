"""Evaluation: multi-view scoring, top-1/top-5, per-class accuracy, failed videos, results files.

Every video of the evaluation set is scored exactly once over all processes (contiguous shards,
no padding; the merge de-duplicates by index and checks completeness). A video that fails to
decode is reported by path and error in ``failed_videos`` — never silently dropped — and the
metrics are computed over the videos that decoded (``num_videos`` says how many).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from vclip.engine import data as run_data
from vclip.engine.distributed import DistInfo, all_gather_object
from vclip.engine.metrics import Accumulator, aggregate_views, save_confusion_png
from vclip.engine.runtime import autocast_dtype, seed_everything
from vclip.errors import CheckpointError, EvaluationError


def scoring_function(method, mode: str | None, device: torch.device):
    """``fn(views, class_features) -> logits``: the method's per-batch scoring, compiled with
    ``torch.compile(mode=mode)`` when ``mode`` is set (``eval.compile``; static shapes). With
    "reduce-overhead" on CUDA every call starts a new CUDA-graph step and returns a copy (a replay
    overwrites the graph's output memory)."""

    def score(views, class_features):
        return method(views, class_features).logits

    if mode is None:
        return score
    compiled = torch.compile(score, mode=mode, dynamic=False)
    graphs = mode == "reduce-overhead" and device.type == "cuda"

    def run(views, class_features):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = compiled(views, class_features)
        return out.clone() if graphs else out

    return run


def evaluate_method(method, dataset, vocab, cfg, dist: DistInfo, logger=None,
                    subsets: Mapping[str, Sequence[int]] | None = None, return_scores: bool = False) -> dict:
    """Score ``dataset`` (built by ``vclip.engine.data.eval_dataset``) with ``method``.
    ``return_scores`` adds ``scores`` [N, K], ``targets`` and ``indices`` (numpy) to the results.
    A model whose weights hold NaN or ±inf is refused (:class:`~vclip.errors.EvaluationError`
    naming the tensor) instead of being scored."""
    from vclip.engine.checkpoint import nonfinite_report

    bad = nonfinite_report(method.state_dict())
    if bad is not None:
        raise EvaluationError(f"refusing to evaluate: the model has non-finite weights in {bad}")
    loader = run_data.eval_loader(cfg, dataset, dist.rank, dist.world_size)
    device = dist.device
    amp = autocast_dtype(cfg.train.precision, device)
    was_training = method.training
    method.eval()
    acc = Accumulator(len(vocab))
    failed: list[dict] = []
    batches = logger.progress(loader, total=len(loader), desc="eval") if logger else loader
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        # the vocabulary is encoded once (the method's cache), never per batch
        class_features = method.class_features(vocab) if hasattr(method, "class_features") else vocab
        score = scoring_function(method, cfg.eval.compile, device)
        for batch in batches:
            video = batch["video"]
            if video.dim() == 5:  # one view: [B, T, 3, H, W]
                video = video.unsqueeze(1)
            valid = batch["valid"].bool()
            for i in torch.nonzero(~valid).flatten().tolist():
                idx = int(batch["index"][i])
                failed.append({"index": idx, "path": dataset.full_path(dataset.records[idx]),
                               "error": batch["error"][i]})
            if not valid.any():
                continue
            views = video[valid]
            b, v = views.shape[:2]
            logits = score(views.flatten(0, 1).to(device, non_blocking=True), class_features).float()
            scores = aggregate_views(logits.view(b, v, -1), cfg.eval.aggregation)
            acc.add(scores, batch["label"][valid], batch["index"][valid])
    if was_training:
        method.train()
    acc.gather()
    failed = sorted((f for part in all_gather_object(failed) for f in part), key=lambda f: f["index"])
    failed_idx = {f["index"] for f in failed}
    expected = [i for i in range(len(dataset)) if i not in failed_idx]
    results = acc.summary(expected=expected, subsets=subsets)
    results.update(
        num_failed=len(failed),
        failed_videos=failed,
        views={"clips": cfg.eval.num_clips, "crops": cfg.eval.num_crops, "aggregation": cfg.eval.aggregation},
    )
    if return_scores:
        results["scores"], results["targets"], results["indices"] = acc.local_arrays()
    return results


def write_results(results: dict, path: str | os.PathLike, class_names: Sequence[str],
                  confusion_png: str | os.PathLike | None = None) -> Path:
    """Results JSON (atomic write), with per-class accuracy by name; optionally the confusion PNG."""
    from vclip.io import atomic_write_text

    path = Path(path)
    out = {k: v for k, v in results.items() if k != "confusion"}
    if "confusion" in results:
        out["confusion"] = results["confusion"].tolist()
        if confusion_png is not None:
            save_confusion_png(confusion_png, results["confusion"], class_names)
    if "per_class_accuracy" in results:
        out["per_class"] = {name: {"accuracy": a, "videos": c} for name, a, c in
                            zip(class_names, results["per_class_accuracy"], results["per_class_count"])}
    return atomic_write_text(path, json.dumps(out, indent=2))


def evaluate(cfg, checkpoint=None, annotation: str | None = None, dist: DistInfo | None = None,
             subsets: Mapping[str, Sequence[int]] | None = None) -> dict:
    """``vclip eval``: build the method (from ``model.pretrained``, or holding the weights of the
    checkpoint ``checkpoint`` — a path or an already opened
    :class:`~vclip.engine.inference.InferenceCheckpoint`, see :mod:`vclip.engine.inference`) and
    score ``data.val_list`` (or ``annotation``). Writes ``results_eval.json`` into the run dir."""
    from vclip.engine.distributed import init_distributed
    from vclip.engine.inference import InferenceCheckpoint, build_for_checkpoint, open_checkpoint
    from vclip.engine.logging import RunLogger
    from vclip.methods import build_method, check_config, make_vocabulary

    check_config(cfg)
    dist = dist or init_distributed(cfg.device)
    names = run_data.class_names(cfg)
    vocab = make_vocabulary(cfg, names)
    ck = None
    if checkpoint is not None and checkpoint != "":  # a bad path fails before the build; train_state.pt unneeded
        ck = checkpoint if isinstance(checkpoint, InferenceCheckpoint) else open_checkpoint(checkpoint)
        checkpoint = ck.path
    model_state = ck.state if ck is not None else None
    if model_state is not None:
        from vclip.engine.checkpoint import nonfinite_report

        bad = nonfinite_report(model_state)
        if bad is not None:
            raise CheckpointError(f"{checkpoint}: refusing to evaluate a checkpoint with non-finite weights in "
                                  f"{bad} (the training that wrote it diverged)")
    seed_everything(cfg.train.seed)  # the same weights on every process for what no file provides
    # with a checkpoint: compared with its config, built without model.pretrained where possible,
    # a strict load whose failure names the differing settings and tensors
    method = build_for_checkpoint(cfg, ck) if ck is not None else build_method(cfg)
    method.to(dist.device)
    dataset = run_data.eval_dataset(cfg, names, annotation)
    with RunLogger(cfg.run_dir, rank=dist.rank) as logger:
        results = evaluate_method(method, dataset, vocab, cfg, dist, logger, subsets)
    if dist.is_main:
        write_results(results, cfg.run_dir / "results_eval.json", names,
                      cfg.run_dir / "confusion_eval.png" if cfg.eval.confusion_png else None)
    return results
