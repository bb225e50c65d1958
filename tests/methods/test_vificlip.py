"""ViFi-CLIP as a user builds it (``model.method=vificlip``): the token-embedding table stays fixed
(no gradient) while the rest of the text tower trains, unless ``freeze_token_embedding=false``;
the default prompt is "a photo of a {}."; the scoring is CLIP-mean's."""

from __future__ import annotations

import pytest
import torch

from vclip.config import load_config
from vclip.methods import build_method, make_vocabulary
from vclip.methods.vificlip import ViFiCLIP

NAMES = ("archery", "bowling", "juggling balls")


def _build(*overrides):
    torch.manual_seed(0)
    cfg = load_config([], ["model.method=vificlip", "model.arch=tiny", "data.num_frames=2", "data.image_size=32", *overrides])
    return cfg, build_method(cfg)


def _grads(m, cfg):
    vocab = make_vocabulary(cfg, NAMES)
    video = torch.randn(3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m.train()
    out = m(video, vocab, torch.tensor([0, 2, 1]))
    sum(out.losses.values()).backward()
    return {n: p.grad for n, p in m.clip.text.named_parameters()}


def test_default_freezes_the_token_embedding_only():
    torch.set_num_threads(1)
    cfg, m = _build()
    assert isinstance(m, ViFiCLIP) and m.options.freeze_token_embedding is True
    emb = m.clip.text.token_embedding.weight
    assert emb.requires_grad is False
    before = emb.detach().clone()
    grads = _grads(m, cfg)
    assert grads["token_embedding.weight"] is None
    # every other text-tower parameter trains and receives a non-zero gradient
    others = {n: g for n, g in grads.items() if n != "token_embedding.weight"}
    assert others and all(g is not None and g.abs().sum() > 0 for g in others.values()), \
        [n for n, g in others.items() if g is None or g.abs().sum() == 0]
    # an optimizer step leaves the table exactly as it was
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    assert torch.equal(m.clip.text.token_embedding.weight, before)


def test_token_embedding_trains_when_not_frozen():
    torch.set_num_threads(1)
    cfg, m = _build("model.options.freeze_token_embedding=false")
    assert m.clip.text.token_embedding.weight.requires_grad
    g = _grads(m, cfg)["token_embedding.weight"]
    assert g is not None and g.abs().sum() > 0


def test_default_template_and_explicit_templates():
    cfg, m = _build()
    assert cfg.model.templates is None
    vocab = make_vocabulary(cfg, NAMES)
    assert vocab.templates == ("a photo of a {}.",)
    assert vocab.prompts()[2] == ["a photo of a juggling balls."]
    # the logits are CLIP-mean's with that prompt: cos(mean frame embedding, prompt embedding) · scale
    video = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    m.eval()
    with torch.no_grad():
        v = m.clip.encode_image(video.flatten(0, 1), normalize=False).view(2, 2, -1).mean(1)
        t = m.encode_texts([f"a photo of a {n}." for n in NAMES])
        ref = m.clip.logit_scale.exp() * torch.nn.functional.normalize(v, dim=-1) @ \
            torch.nn.functional.normalize(t, dim=-1).t()
        assert torch.allclose(m(video, vocab).logits, ref, atol=1e-5, rtol=0)
    cfg2, _ = _build("model.templates=[\"@video\"]")
    assert make_vocabulary(cfg2, NAMES).templates == ("a video of a person {}.",)


@pytest.mark.parametrize("preset", ["@vificlip"])
def test_the_preset_names_the_same_prompt(preset):
    from vclip.text.templates import resolve_templates

    assert resolve_templates([preset]) == ViFiCLIP.default_templates
