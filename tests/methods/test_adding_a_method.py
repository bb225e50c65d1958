"""docs/architecture.md "Adding a method" works as written: the example method and its config are
taken from the page, registered, built, scored, trained one step and counted."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vclip.cli import main
from vclip.config import from_dict, RunConfig, validate
from vclip.engine.optim import build_method_optimizer
from vclip.engine.trainer import weighted_loss
from vclip.methods import METHODS, build_method, check_config
from vclip.methods.base import Vocabulary
from vclip.methods.clip import CLIPMean

DOC = Path(__file__).parents[2] / "docs" / "architecture.md"


def _blocks(lang: str) -> list[str]:
    section = DOC.read_text().split("## Adding a method", 1)[1]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


@pytest.fixture
def tmlp(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    path = tmp_path / "tmlp.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("tmlp_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(METHODS, "tmlp", module.TemporalMLP)
    return module.TemporalMLP


def test_the_documented_method_builds_scores_and_trains(tmlp):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    (config_text,) = _blocks("yaml")
    cfg = from_dict(RunConfig, yaml.safe_load(config_text))
    validate(cfg)
    assert check_config(cfg) is tmlp
    m = build_method(cfg)
    assert type(m) is tmlp and m.options.mlp_ratio == 2.0
    assert not any(p.requires_grad for p in m.clip.text.parameters())

    vocab = Vocabulary(("moving left", "moving right", "rotating"), tmlp.default_templates)
    video = torch.randn(3, 4, 3, 32, 32)
    y = torch.tensor([0, 2, 1])
    baseline = CLIPMean(m.clip, num_frames=4).eval()
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(video, vocab).logits, baseline(video, vocab).logits, atol=1e-6)  # starts as CLIP-mean
        torch.nn.init.normal_(m.head[2].weight, std=0.5)
    m.train()
    out = m(video, vocab, y)
    feats = m.encode_video(video)
    reg = (feats["video"] - feats["mean"]).pow(2).mean()
    assert float(reg.detach()) > 0
    weights = {**tmlp.loss_weights, **cfg.train.loss_weights}
    assert weights == {"ce": 1.0, "head_reg": 0.5}
    loss = weighted_loss(out.losses, weights)
    assert torch.allclose(loss, F.cross_entropy(out.logits, y) + 0.5 * reg, atol=1e-6)

    opt = build_method_optimizer(m, cfg.train)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["new/decay"] == pytest.approx(10 * lrs["clip/decay"]) == pytest.approx(1e-2)
    head_before = m.head[0].weight.detach().clone()
    text_before = m.clip.text.token_embedding.weight.detach().clone()
    loss.backward()
    opt.step()
    assert not torch.equal(m.head[0].weight, head_before)
    assert torch.equal(m.clip.text.token_embedding.weight, text_before)


def test_the_documented_method_is_counted_by_vclip_flops(tmlp, capsys):
    assert main(["flops", "--method", "tmlp", "--arch", "tiny", "--frames", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "tmlp" and r["parts"]["rest"] > 0      # the head is counted outside the towers
