"""Prompt-template presets (``@name`` in ``model.templates``) resolve to the documented lists, and
multi-template prompt ensembling is the normalised mean of the normalised sentence embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vclip.errors import ConfigError
from vclip.text.templates import resolve_templates

# ActionCLIP's 16 templates (sallymmx/ActionCLIP utils/Text_Prompt.py), written out independently
ACTIONCLIP16 = [
    "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
    "{} this is an action", "{}, a video of action", "Playing action of {}", "{}",
    "Playing a kind of action, {}", "Doing a kind of action, {}", "Look, the human is {}",
    "Can you recognize the action of {}?", "Video classification of {}", "A video of {}",
    "The man is {}", "The woman is {}",
]


def test_presets_resolve_to_the_documented_lists():
    assert resolve_templates(["@actionclip16"]) == tuple(ACTIONCLIP16)
    assert resolve_templates(["@video"]) == ("a video of a person {}.",)
    assert resolve_templates(["@vificlip"]) == ("a photo of a {}.",)
    assert resolve_templates(["@bare"]) == ("{}",)
    # presets and plain templates mix, in order
    assert resolve_templates(["{} happens", "@video", "@vificlip"]) == \
        ("{} happens", "a video of a person {}.", "a photo of a {}.")
    with pytest.raises(ConfigError, match="unknown preset '@nope'"):
        resolve_templates(["@nope"])
    with pytest.raises(ConfigError, match="empty"):
        resolve_templates([])


def test_config_presets_reach_the_vocabulary():
    from vclip.config import load_config
    from vclip.methods import make_vocabulary

    cfg = load_config([], ["model.method=clip", "model.arch=tiny", 'model.templates=["@actionclip16"]'])
    vocab = make_vocabulary(cfg, ["archery"])
    assert len(vocab.templates) == 16
    assert vocab.prompts()[0][0] == "a photo of action archery" and vocab.prompts()[0][-1] == "The woman is archery"


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_embeddings():
    from vclip.backbone import CLIP, get_config
    from vclip.methods.base import Vocabulary
    from vclip.methods.clip import CLIPMean

    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = CLIPMean(CLIP(get_config("tiny")), num_frames=2).eval()
    names = ("archery", "bowling")
    templates = resolve_templates(["@video", "@vificlip", "{}"])
    with torch.no_grad():
        got = m.encode_prompt_ensemble(Vocabulary(names, templates))
        rows = []
        for n in names:
            emb = torch.stack([m.encode_texts([t.format(n)])[0] for t in templates])   # one sentence at a time
            unit = emb / emb.norm(dim=-1, keepdim=True)
            mean = unit.mean(0)
            rows.append(mean / mean.norm())
        ref = torch.stack(rows)
        # the ensemble differs from averaging the raw embeddings (the templates' norms differ)
        raw = torch.stack([F.normalize(torch.stack([m.encode_texts([t.format(n)])[0] for t in templates]).mean(0),
                                       dim=0) for n in names])
    assert got.shape == (2, get_config("tiny").embed_dim)
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert (raw - ref).abs().max() > 1e-4
