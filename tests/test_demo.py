"""`vclip demo`: the pair metric, the text warm-up, and a shrunken end-to-end run through the CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vclip import demo
from vclip.backbone import CLIP, get_config
from vclip.backbone.tokenizer import get_tokenizer
from vclip.data.synthetic import CLASSES, ORDER_PAIRS


def test_pair_accuracy_compares_only_the_pair_partner():
    scores = np.zeros((3, 12))
    targets = np.array([0, 1, 8])  # two order-pair videos and a single-frame one (ignored)
    scores[0, 0], scores[0, 1] = 2.0, 1.0  # right over its partner, though class 5 wins overall
    scores[0, 5] = 9.0
    scores[1, 0], scores[1, 1] = 3.0, 1.0  # wrong: its partner (0) outscores it
    assert demo.pair_accuracy(scores, targets) == 0.5
    assert demo.pair_accuracy(scores[2:], targets[2:]) is None


def _max_cosine(clip):
    tokens = get_tokenizer()(list(CLASSES), context_length=clip.config.text.context_length)
    with torch.no_grad():
        e = F.normalize(clip.text(tokens).embeds, dim=-1)
    return e @ e.t()


def test_text_warmup_separates_the_pair_names():
    torch.manual_seed(0)
    clip = CLIP(get_config("tiny"))
    before_sim = _max_cosine(clip)
    before, after = demo.text_warmup(clip, list(CLASSES), steps=60)
    sim = _max_cosine(clip)
    pair_cos = [float(sim[a, b]) for a, b in ORDER_PAIRS]
    assert before == pytest.approx(float((before_sim - 2 * torch.eye(12)).max()), abs=1e-5)
    assert max(float(before_sim[a, b]) for a, b in ORDER_PAIRS) > 0.5  # random init: names nearly alike
    assert after < 0.5 and max(pair_cos) < 0.5
    assert after == pytest.approx(float((sim - 2 * torch.eye(12)).max()), abs=1e-5)


def test_demo_runs_end_to_end_small(tmp_path, monkeypatch, capsys):
    """The whole command on a shrunken set and a few steps: data, warm-up, both methods, table,
    JSON and plot. (The real figures come from the full run; see README.)"""
    from vclip.cli import main

    monkeypatch.setattr(demo, "DEMO_SYNTH", {**demo.DEMO_SYNTH, "videos_per_class": 4})
    monkeypatch.setattr(demo, "TEXT_WARMUP_STEPS", 5)
    monkeypatch.setitem(demo.DEMO_BASE["data"], "num_workers", 0)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3"]) == 0
    text = capsys.readouterr().out
    assert "CLIP-mean" in text and "X-CLIP" in text and "within pair" in text
    record = json.loads((out / "demo_results.json").read_text())
    assert [r["name"] for r in record["rows"]] == ["clip", "xclip"]
    for r in record["rows"]:
        assert r["steps"] == 3 and r["val_videos"] == 12  # 1 held-out video per class
        assert 0 <= r["top1"] <= 1 and 0 <= r["within_pair"] <= 1
    assert record["machine"]["cores"] >= 1 and "torch" in record["machine"]
    assert (out / "demo.png").stat().st_size > 1000
    assert (out / "init_clip" / "model.safetensors").is_file()
    # a second run reuses the generated set (same config) instead of writing it again
    stamp = (out / "data" / "meta.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--steps", "4", "--methods", "clip"]) == 0
    assert (out / "data" / "meta.json").stat().st_mtime_ns == stamp
    assert [r["name"] for r in json.loads((out / "demo_results.json").read_text())["rows"]] == ["clip"]


def test_demo_rejects_unknown_method_before_any_work(tmp_path, capsys):
    from vclip.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--methods", "clip,nope"]) == 2
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
