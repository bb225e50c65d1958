"""Multi-view evaluation: each video's score is the aggregation of its own views' logits — computed
here by hand, view by view, from the evaluation dataset's items — never a mix of views of
different videos of the batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vclip.config import load_config
from vclip.engine import data as run_data
from vclip.engine.distributed import DistInfo
from vclip.engine.evaluate import evaluate_method
from vclip.methods import make_vocabulary

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class PixelLinear(torch.nn.Module):
    """A stand-in method: each view's logits are a fixed random linear map of its pixels, so every
    view of every video has its own logits."""

    def __init__(self, num_inputs: int, num_classes: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(num_inputs, num_classes, generator=g) / num_inputs ** 0.5)

    def forward(self, video, vocab, targets=None, **kw):
        return SimpleNamespace(logits=10 * video.flatten(1).float() @ self.w)


@pytest.mark.parametrize("aggregation", ["softmax_sum", "mean_logits"])
def test_each_video_aggregates_its_own_views(synth, make_config, tmp_path, aggregation):
    """2 clips × 3 crops of 7 videos, batches of 3 (the last one partial): every video's score row
    equals its 6 views' softmax summed (``softmax_sum``) or logits averaged (``mean_logits``)."""
    val = tmp_path / "val7.txt"
    val.write_text("".join((synth / "val.txt").read_text().splitlines(keepends=True)[::7][:7]))
    cfg = load_config([str(make_config("views"))], [
        f"data.val_list={val}", "eval.num_clips=2", "eval.num_crops=3", "data.eval_batch_size=3",
        f"eval.aggregation={aggregation}"])
    names = run_data.class_names(cfg)
    dataset = run_data.eval_dataset(cfg, names)
    assert len(dataset) == 7
    first = dataset[0]["video"]
    assert first.shape[:2] == (6, 4)  # [views, T, 3, H, W]
    method = PixelLinear(first[0].numel(), len(names))
    res = evaluate_method(method, dataset, make_vocabulary(cfg, names), cfg, CPU, return_scores=True)
    scores, targets, indices = res["scores"], res["targets"], res["indices"]
    assert sorted(indices.tolist()) == list(range(7))
    for row, i in enumerate(indices.tolist()):
        item = dataset[i]
        views = item["video"]
        logits = torch.stack([method(views[j:j + 1], None).logits[0] for j in range(views.shape[0])]).double()
        # the 2 clips differ (the 3 crops of a square video resized to the crop size coincide)
        assert not torch.allclose(logits[0], logits[-1], atol=1e-3)
        want = logits.softmax(-1).sum(0) if aggregation == "softmax_sum" else logits.mean(0)
        torch.testing.assert_close(torch.as_tensor(scores[row]).double(), want, rtol=1e-5, atol=1e-4, msg=lambda m: f"video {i}: {m}")
        assert targets[row] == item["label"]
    # top-1 is the argmax of those rows
    hits = sum(int(scores[r].argmax() == targets[r]) for r in range(7))
    assert res["top1"] == pytest.approx(hits / 7)


def test_write_results_json_by_hand(tmp_path):
    """The results file: every entry but the confusion matrix as is, the matrix as nested lists,
    per-class accuracy keyed by class name, two-space indented JSON; the PNG only when asked."""
    import json

    import numpy as np

    from vclip.engine.evaluate import write_results

    conf = np.array([[2, 0], [1, 1]])
    results = {"top1": 0.75, "num_videos": 4, "confusion": conf, "per_class_accuracy": [1.0, 0.5],
               "per_class_count": [2, 2]}
    path = write_results(results, tmp_path / "r.json", ["archery", "bowling"], tmp_path / "c.png")
    expected = {"top1": 0.75, "num_videos": 4, "per_class_accuracy": [1.0, 0.5], "per_class_count": [2, 2],
                "confusion": [[2, 0], [1, 1]],
                "per_class": {"archery": {"accuracy": 1.0, "videos": 2}, "bowling": {"accuracy": 0.5, "videos": 2}}}
    assert path == tmp_path / "r.json" and path.read_text() == json.dumps(expected, indent=2)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["confusion"] is conf                       # the caller's dict is left as it was
    write_results({"top1": 0.5}, tmp_path / "s.json", ["archery", "bowling"], tmp_path / "d.png")
    assert json.loads((tmp_path / "s.json").read_text()) == {"top1": 0.5} and not (tmp_path / "d.png").exists()
    write_results(results, tmp_path / "t.json", ["archery", "bowling"])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["c.png"]      # no PNG without a path
    assert json.loads((tmp_path / "t.json").read_text()) == expected
