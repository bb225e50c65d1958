"""The fast GPU path in the models, checked on the CPU (docs/performance.md "Fast path"):

* attention goes through ``scaled_dot_product_attention`` with no mask unless token sizes need
  one (the flash / cuDNN kernels take no float mask), causal text as ``is_causal``, q/k/v with
  unit stride in the head dimension, and the logits equal those of explicit softmax attention;
* the towers and the method heads compile with ``fullgraph=True`` (no graph break) for CLIP-mean,
  X-CLIP and OST, in inference and in a training forward with its loss terms.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vclip.backbone import CLIP, get_config
from vclip.backbone.hooks import TokenMerging
from vclip.methods import METHODS
from vclip.methods.base import Vocabulary

NAMES = ("moving left", "moving right", "rotating")
OPTIONS = {"clip": {}, "xclip": {}, "ost": {"check_every": 0, "max_iter": 3}}


pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


def build(name: str):
    torch.manual_seed(0)
    cls = METHODS[name]
    m = cls(CLIP(get_config("tiny")), num_frames=4, options=cls.parse_options(OPTIONS[name])).eval()
    descriptors = tuple(tuple(f"{n} descriptor {i}" for i in range(8)) for n in NAMES) if name == "ost" else None
    torch.manual_seed(1)
    return m, Vocabulary(NAMES, cls.default_templates, descriptors), torch.randn(2, 4, 3, 32, 32)


def math_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q kᵀ / √d + mask) v written out (the reference)."""
    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s + attn_mask
    return s.softmax(dim=-1) @ v


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        self.calls.append({"mask": attn_mask, "causal": is_causal, "strides": (q.stride(-1), k.stride(-1), v.stride(-1)),
                           "q": tuple(q.shape), "k": tuple(k.shape)})
        return self.fn(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)


@pytest.mark.parametrize("name", ["clip", "xclip", "ost"])
def test_attention_takes_no_mask_when_none_is_needed(name, monkeypatch):
    m, vocab, video = build(name)
    with torch.no_grad():
        ref = m(video, vocab).logits
    rec = Recorder(F.scaled_dot_product_attention)
    monkeypatch.setattr(F, "scaled_dot_product_attention", rec)
    m.clear_cache()
    with torch.no_grad():
        out = m(video, vocab).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    text = [c for c in rec.calls if c["q"][-2] == 77]
    vision = [c for c in rec.calls if c["q"][-2] != 77]
    assert len(text) >= 2 and len(vision) >= 2  # tiny: 2 blocks per tower pass (+ X-CLIP's heads)
    assert all(c["mask"] is None for c in rec.calls), [type(c["mask"]) for c in rec.calls]
    assert all(c["causal"] for c in text) and not any(c["causal"] for c in vision)
    assert all(c["strides"] == (1, 1, 1) for c in rec.calls)
    if name == "xclip":  # the message token is a key only: 17 queries (class + 16 patches), 18 keys
        assert any(c["q"][-2] == 17 and c["k"][-2] == 18 for c in vision)
    # and SDPA computes what explicit softmax attention does
    monkeypatch.setattr(F, "scaled_dot_product_attention", math_attention)
    m.clear_cache()
    with torch.no_grad():
        explicit = m(video, vocab).logits
    torch.testing.assert_close(out, explicit, rtol=0, atol=1e-6 * max(1.0, float(explicit.abs().max())))


def test_token_sizes_bring_the_log_size_mask(monkeypatch):
    """With ToMe merging the attention after the first merge gets the log-size bias (a float mask);
    before it, none."""
    m, _, video = build("clip")
    rec = Recorder(F.scaled_dot_product_attention)
    monkeypatch.setattr(F, "scaled_dot_product_attention", rec)
    with torch.no_grad():
        m.clip.visual(video.flatten(0, 1), hooks=[TokenMerging(2, layers=2)])
    assert rec.calls[0]["mask"] is None
    mask = rec.calls[1]["mask"]
    assert mask is not None and mask.is_floating_point() and mask.shape[-1] == 17 - 2


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager")  # graph capture only: no codegen on the CPU


@pytest.mark.parametrize("name", ["clip", "xclip", "ost"])
def test_towers_and_heads_compile_without_graph_breaks(name):
    """``fullgraph=True`` raises at the first graph break: inference (class features given, as
    evaluation passes them), a training forward with its loss terms and the text tower."""
    m, vocab, video = build(name)
    with torch.no_grad():
        feats = m.class_features(vocab)
        ref = m(video, feats).logits
        out = _compiled(lambda v, f: m(v, f).logits)(video, feats)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    m.train()
    y = torch.tensor([0, 2])
    terms = _compiled(lambda v, f, t: m(v, f, t).losses)(video, feats, y)
    assert terms and set(terms) <= set(m.loss_weights) and all(t.requires_grad for t in terms.values())
    sum(terms.values()).backward()
    assert m.clip.visual.conv1.weight.grad is not None
    tokens = torch.randint(1, 400, (3, 77))
    tokens[:, 5] = 49407
    with torch.no_grad():
        emb = _compiled(lambda t: m.clip.text(t).embeds)(tokens)
        torch.testing.assert_close(emb, m.clip.text(tokens).embeds, rtol=0, atol=1e-6)
