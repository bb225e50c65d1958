"""``vclip flops`` against independent hand counts of a ViT's matrix products (issue 13, item 11):
the counter is exact for CLIP-mean and for OST's towers, so these tests allow rounding only."""

from __future__ import annotations

import pytest

from vclip.backbone import get_config
from vclip.methods.flops import method_flops


def tower_macs(layers: int, tokens: int, width: int, mlp_ratio: float = 4.0) -> int:
    """Multiply-adds of a transformer's blocks: per token and layer, q/k/v/out projections 4·d²,
    the MLP 2·(mlp_ratio·d)·d, and attention QKᵀ + AV 2·L·d."""
    return layers * tokens * int((4 + 2 * mlp_ratio) * width * width + 2 * tokens * width)


def image_macs(arch: str) -> int:
    """One frame: patch embedding (a conv = one matmul per patch) + blocks + the CLS projection."""
    v, e = get_config(arch).vision, get_config(arch).embed_dim
    patches = (v.image_size // v.patch_size) ** 2
    return (patches * 3 * v.patch_size ** 2 * v.width + tower_macs(v.layers, patches + 1, v.width, v.mlp_ratio)
            + v.width * e)


def text_macs(arch: str) -> int:
    """One sentence: the blocks over the full context + the EOT projection."""
    t, e = get_config(arch).text, get_config(arch).embed_dim
    return tower_macs(t.layers, t.context_length, t.width, t.mlp_ratio) + t.width * e


@pytest.mark.parametrize("arch, frames, texts", [("ViT-B-32", 8, 1), ("ViT-B-16", 8, 0), ("tiny", 4, 3)])
def test_clip_mean_flops_equal_a_hand_count(arch, frames, texts):
    r = method_flops("clip", arch, frames, num_texts=texts)
    image, text = frames * image_macs(arch), texts * text_macs(arch)
    assert r.parts["image tower"] * 1e9 == pytest.approx(image, rel=1e-12, abs=0.5)
    assert r.parts["text tower"] * 1e9 == pytest.approx(text, rel=1e-12, abs=0.5)
    # outside the towers CLIP-mean adds only the cosines of the video with the K texts: K·E
    cosines = texts * get_config(arch).embed_dim
    assert r.parts["rest"] * 1e9 == pytest.approx(cosines, abs=0.5)
    assert r.gflops * 1e9 == pytest.approx(image + text + cosines, rel=1e-12, abs=0.5)


def test_clip_mean_b32_is_the_documented_38_25():
    """The number that showed X-CLIP's 10 % tolerance was too loose (X-CLIP B/32: 39 GFLOPs)."""
    assert method_flops("clip", "ViT-B-32", 8).gflops == pytest.approx(38.25026304, rel=1e-9)


def test_ost_flops_are_towers_plus_a_small_solver():
    """OST (counted on CPU weights): T frames, 2 kinds × N descriptor sentences per class, and the
    solver: the T×N cosines of each kind, the pooled term, and the Sinkhorn products."""
    t, n, k = 4, 3, 1
    r = method_flops("ost", "tiny", t, num_texts=k, options={"num_descriptors": n})
    assert r.parts["image tower"] * 1e9 == pytest.approx(t * image_macs("tiny"), abs=0.5)
    assert r.parts["text tower"] * 1e9 == pytest.approx(2 * n * k * text_macs("tiny"), abs=0.5)
    e = get_config("tiny").embed_dim
    rest = r.parts["rest"] * 1e9
    assert 2 * (t * n * e) <= rest <= 2 * (t * n * e + e + 100 * 2 * t * n) + 0.5
