"""CLIP-mean (issue 13, item 5): the video embedding is the mean of the per-frame image
embeddings (computed here independently, frame by frame, with ``clip.encode_image``); the logits are
exactly invariant to the order of the frames; X-CLIP's (temporal modules) are not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vclip.backbone import CLIP, get_config
from vclip.methods.base import Vocabulary
from vclip.methods.clip import CLIPMean
from vclip.methods.xclip import XCLIP

NAMES = ("archery", "bowling", "juggling balls")


def _video(t: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _clip_mean() -> CLIPMean:
    torch.manual_seed(0)
    return CLIPMean(CLIP(get_config("tiny")), num_frames=4).eval()


def test_clip_mean_is_the_mean_of_frame_embeddings():
    torch.set_num_threads(1)
    m = _clip_mean()
    video = _video()
    vocab = Vocabulary(NAMES, ("a video of {}", "{}"))
    with torch.no_grad():
        per_frame = torch.stack([m.clip.encode_image(video[:, t]) for t in range(video.shape[1])], dim=1)
        hand_video = per_frame.mean(dim=1)                                           # [B, E]
        # the frames differ: the mean is none of them (a first-frame embedding would not pass)
        assert (per_frame[:, 0] - hand_video).abs().max() > 1e-2
        assert torch.allclose(m.encode_video(video), hand_video, atol=1e-6, rtol=0)
        text = torch.stack([F.normalize(m.clip.encode_text(m_tokens(m, [tpl.format(n) for tpl in vocab.templates])),
                                        dim=-1).mean(0) for n in NAMES])
        hand_logits = m.clip.logit_scale.exp() * F.normalize(hand_video, dim=-1) @ F.normalize(text, dim=-1).t()
        logits = m(video, vocab).logits
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, hand_logits, atol=1e-5, rtol=0)


def m_tokens(m, sentences):
    from vclip.backbone.tokenizer import get_tokenizer

    return get_tokenizer()(sentences, context_length=m.clip.config.text.context_length)


def test_clip_mean_is_invariant_to_frame_order_and_xclip_is_not():
    torch.set_num_threads(1)
    video = _video()
    perm = torch.tensor([2, 0, 3, 1])
    vocab = Vocabulary(NAMES)
    m = _clip_mean()
    with torch.no_grad():
        a, b = m(video, vocab).logits, m(video[:, perm], vocab).logits
    assert (a - b).abs().max() <= 1e-6

    torch.manual_seed(0)
    x = XCLIP(CLIP(get_config("tiny")), num_frames=4).eval()
    with torch.no_grad():
        a, b = x(video, vocab).logits, x(video[:, perm], vocab).logits
    assert (a - b).abs().max() > 1e-4        # X-CLIP's temporal modules see the order


def test_clip_mean_logits_cast_class_features_to_the_video_dtype():
    """Class features cached in float32 score float64 (or low-precision) video features: cast to the
    video's dtype, the product is the hand one in that dtype (not a dtype-mismatch error)."""
    torch.set_num_threads(1)
    m = _clip_mean()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(2, 8, generator=g, dtype=torch.float64)
    classes = F.normalize(torch.randn(3, 8, generator=g), dim=-1)          # float32
    with torch.no_grad():
        logits = m.logits(video, classes)
        hand = float(m.clip.logit_scale.exp()) * F.normalize(video, dim=-1) @ classes.double().t()
    assert logits.dtype == torch.float64
    assert torch.allclose(logits, hand, atol=1e-6, rtol=0)
