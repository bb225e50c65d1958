"""MoTED by hand, on the tiny tower (seconds): every equation of the module docstring written out
(motion encoder, query and size-weighted pooling, fusions, adapter, scores), the toggles, the
initial values and settings the paper's sizes rest on, the temporal interpolation, gradient
checkpointing with merging, the description files and every error message. Written for the
mutation score of ``vclip/methods/moted.py`` (docs/testing.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from test_moted import DESCRIPTORS, NAMES, clip_video, hand_class_tokens, perturb, tiny  # noqa: E402

from vclip.errors import ConfigError  # noqa: E402
from vclip.methods.base import Vocabulary  # noqa: E402
from vclip.methods.clip import CLIPMean  # noqa: E402
from vclip.methods.moted import MoTED  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


# ------------------------------------------------------------------ by hand: the module's equations
def _hand_motion_encoder(me, dense, taps):
    """The 3D stem + E_s + E_t, then per block LME, GME (G = W_l LN X; G + MSA_t(LN(G + E_g))) and INT
    (Z + CrossAttn(LN Z, LN G)), written out with the modules' own layers."""
    a, p = me.stem.kernel_size[0], me.stem.kernel_size[1]
    x = F.conv3d(dense.permute(0, 2, 1, 3, 4), me.stem.weight, me.stem.bias, stride=(a, p, p))
    b, c, t = x.shape[:3]
    z = x.reshape(b, c, t, -1).permute(0, 2, 3, 1) + me.spatial_embedding[None] + me.temporal_embedding[:, None]
    z = z.reshape(b, -1, c)
    for blk, x_cls in zip(me.blocks, taps):
        z = blk.lme(z)[0]
        gme, integ = blk.gme, blk.integration
        g = gme.proj(gme.ln_in(x_cls))
        g = g + gme.attn(gme.ln(g + gme.temporal_embedding))[0]
        z = z + integ.attn(integ.ln_q(z), integ.ln_kv(g))
    return z


def _hand_query_pooling(qp, z, t):
    b, n, c = z.shape
    tokens = z.reshape(b * t, n // t, c)
    qf, qv = qp.frame_query.expand(b * t, 1, c), qp.video_query.expand(b, 1, c)
    for layer in qp.layers:
        fa, ff, va, vf = layer.frame_attn, layer.frame_ffn, layer.video_attn, layer.video_ffn
        qf = qf + fa.attn(fa.ln(qf), fa.ln(tokens))
        qf = qf + ff.mlp(ff.ln(qf))
        kv = qf.reshape(b, t, c) + qp.temporal_embedding
        qv = qv + va.attn(va.ln(qv), va.ln(kv))
        qv = qv + vf.mlp(vf.ln(qv))
    return qv[:, 0]


@pytest.mark.parametrize("pooling", ["query", "avg"])
def test_video_motion_and_text_scores_equal_the_equations_by_hand(pooling):
    """Every step of the module docstring written out on a perturbed tiny model (non-zero fusions):
    the motion tokens, the pooling, m = W_m LN(Pool Z), v = mean_t [f_t + CrossAttn(LN f_t, LN W_kv Z)],
    H = E + MHSA(LN E), e = mean_j H, e' = c + CrossAttn(LN c, LN H), S = s · cos."""
    m = perturb(tiny(pooling=pooling)).eval()
    video = clip_video()
    vocab = Vocabulary(NAMES, descriptors=DESCRIPTORS)
    with torch.no_grad():
        feats = m.encode_video(video)
        out = m.outputs(feats, m.encode_vocabulary(vocab))
        taps = [tp.view(2, 4, -1) for tp in hand_class_tokens(m.clip, video[:, ::2].flatten(0, 1))[:2]]
        z = _hand_motion_encoder(m.motion_encoder, video, taps)
        pooled = _hand_query_pooling(m.motion_pooling, z, 4) if pooling == "query" else z.mean(1)
        motion = m.motion_proj(m.motion_ln(pooled))
        f = m.clip.visual(video[:, ::2].flatten(0, 1)).embeds.view(2, 4, -1)
        vf = m.vision_fusion
        fused_frames = f + vf.attn(vf.ln_q(f), vf.ln_kv(vf.kv_proj(z)))
        c = CLIPMean(m.clip, num_frames=4).class_features(Vocabulary(NAMES, ("{}",)))
        sentences = [f"{n}: {d}" for n, ds in zip(NAMES, DESCRIPTORS) for d in ds]
        e_desc = F.normalize(m.clip.text(__import__("vclip.backbone.tokenizer", fromlist=["x"]).get_tokenizer()(
            sentences)).embeds, dim=-1).view(3, 3, -1)
        ad, tf = m.text_adapter, m.text_fusion
        h = e_desc + ad.attn(ad.ln(e_desc))[0]
        e = h.mean(1)
        e_fused = c + tf.attn(tf.ln_q(c)[:, None], tf.ln_kv(h))[:, 0]
        s = m.clip.logit_scale.exp()
        s_m = s * F.normalize(motion, dim=-1) @ F.normalize(e, dim=-1).t()
        s_v = s * F.normalize(fused_frames.mean(1), dim=-1) @ F.normalize(e_fused, dim=-1).t()
    torch.testing.assert_close(feats["motion"], motion, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats["frames"], fused_frames, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats["video"], fused_frames.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.aux["motion_logits"], s_m, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.aux["video_logits"], s_v, rtol=1e-4, atol=1e-4)
    assert out.logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(m.logits(feats, m.encode_vocabulary(vocab)), out.logits)
    # called directly, without label_smoothing: none (the default 0)
    y = torch.tensor([0, 2])
    torch.testing.assert_close(m.losses(out, y)["video"], F.cross_entropy(out.aux["video_logits"], y))


def test_size_weighted_average_pooling_under_merging():
    """pooling: avg with ToMe in the LME blocks: Σ size·z / Σ size over the merged tokens."""
    m = perturb(tiny(pooling="avg", lme_merge=4)).eval()
    video = clip_video()
    seen = {}
    real = m.motion_encoder.forward

    def spy(dense, taps):
        seen["z"], seen["size"] = real(dense, taps)
        return seen["z"], seen["size"]

    m.motion_encoder.forward = spy
    with torch.no_grad():
        got = m.encode_video(video)["motion"]
        w = seen["size"][..., None]
        want = m.motion_proj(m.motion_ln((seen["z"] * w).sum(1) / w.sum(1)))
    assert not torch.equal(seen["size"], torch.ones_like(seen["size"]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ablation_toggles_skip_their_module():
    """adapter / text_fusion / vision_fusion off: H = E, e' = c, v = mean_t f_t."""
    m = perturb(tiny(adapter=False, text_fusion=False, vision_fusion=False)).eval()
    assert (m.text_adapter, m.text_fusion, m.vision_fusion) == (None, None, None)
    video = clip_video()
    vocab = Vocabulary(NAMES, descriptors=DESCRIPTORS)
    with torch.no_grad():
        feats = m.encode_video(video)
        cf = m.encode_vocabulary(vocab)
        e, fused = m.text_embeddings(cf)
        f = m.clip.visual(video[:, ::2].flatten(0, 1)).embeds.view(2, 4, -1)
    torch.testing.assert_close(feats["video"], f.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e, cf["descriptions"].mean(1))
    assert torch.equal(fused, cf["names"])
    assert cf["descriptions"].shape == (3, 3, 32)
    torch.testing.assert_close(cf["descriptions"].norm(dim=-1), torch.ones(3, 3))


def test_new_modules_start_at_their_documented_values():
    m = tiny(motion_width=64)
    stem = m.motion_encoder.stem.weight.detach()
    assert float(stem.std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(m.motion_encoder.stem.bias, torch.zeros(64))
    te = m.motion_encoder.temporal_embedding.detach()
    assert float(te.std()) == pytest.approx(0.02, rel=0.3) and te.abs().sum() > 0
    assert float(m.motion_pooling.frame_query.detach().abs().sum()) > 0
    attn = m.motion_encoder.blocks[0].gme.attn
    assert float(attn.in_proj_weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(attn.in_proj_bias, torch.zeros(3 * 64))
    ln = m.motion_encoder.blocks[1].gme.ln
    assert torch.equal(ln.weight, torch.ones(64)) and torch.equal(ln.bias, torch.zeros(64))
    for mod in (m.vision_fusion.attn.proj, m.text_fusion.attn.proj, m.text_adapter.attn.out_proj):
        assert torch.equal(mod.weight, torch.zeros_like(mod.weight)) and torch.equal(mod.bias, torch.zeros_like(mod.bias))
    assert m.motion_proj.bias is None and m.motion_encoder.stem.kernel_size == (2, 8, 8)
    assert m.motion_encoder.stem.stride == (2, 8, 8)
    assert m.motion_encoder.blocks[0].gme.attn.heads == 1 and m.text_fusion.attn.heads == 1
    assert tiny(motion_heads=4).motion_encoder.blocks[0].lme.attn.heads == 4
    assert m.motion_encoder.blocks[0].lme.mlp.c_fc.out_features == 256 and m.motion_pooling.layers[0].frame_ffn.mlp.c_fc.out_features == 256
    assert m.clip.visual.transformer.resblocks[0].attn.in_proj_weight.requires_grad is False
    assert {"motion_encoder.temporal_embedding", "motion_pooling.frame_query"} <= {
        n for n, _ in m.named_parameters() if any(s in n for s in MoTED.no_weight_decay)}


def test_temporal_embedding_interpolation_is_linear_with_half_pixel_centres():
    from vclip.methods.moted import _resize_time

    pos = torch.tensor([[0.0, 10.0], [1.0, 20.0]])
    assert _resize_time(pos, 2) is pos
    # 2 → 4: sources (i + 0.5)·2/4 − 0.5 = −0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    torch.testing.assert_close(_resize_time(pos, 4), torch.tensor([[0.0, 10.0], [0.25, 12.5], [0.75, 17.5],
                                                                  [1.0, 20.0]]))
    assert _resize_time(pos.double(), 3).dtype == torch.float64


def test_description_errors_and_the_sentences():
    from vclip.methods.moted import read_descriptions
    from vclip.text.descriptors import DescriptorSet, write_descriptors

    m = tiny(description_template="{description} ({class_name})")
    vocab = Vocabulary(NAMES[:2], descriptors=(("a", "b"), ("c", "d")))
    assert m.description_sentences(vocab) == [["a (moving left)", "b (moving left)"],
                                              ["c (moving right)", "d (moving right)"]]
    assert m.description_sentences(Vocabulary(NAMES[:2])) == [["moving left"], ["moving right"]]
    assert m.description_sentences(Vocabulary(NAMES[:2], descriptors=(("a",), ("c",)))) == [
        ["a (moving left)"], ["c (moving right)"]]                       # one description each is fine
    with pytest.raises(ConfigError, match=r"same number \(>= 1\) of descriptions, got \[1, 2\]"):
        m.description_sentences(Vocabulary(NAMES[:2], descriptors=(("a",), ("c", "d"))))
    with pytest.raises(ConfigError, match=r"got \[0\]"):
        m.description_sentences(Vocabulary(NAMES[:2], descriptors=((), ())))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dis.json"
        write_descriptors(path, DescriptorSet("moted-discriminative", ["x", "y"], [["1", "2", "3"], ["4", "5", "6"]]))
        assert read_descriptions([str(path)], ["y", "x"], "moted-discriminative", "k", 2) == [["4", "5"], ["1", "2"]]
        assert read_descriptions([str(path)], ["x"], "moted-discriminative", "k") == [["1", "2", "3"]]
        assert read_descriptions([str(path)], ["x"], "moted-discriminative", "k", 3) == [["1", "2", "3"]]
        with pytest.raises(ConfigError, match=r"model\.options\.k: class 'x' has 3 moted-discriminative "
                                              r"descriptions, model\.options\.num_discriminative asks for 4"):
            read_descriptions([str(path)], ["x"], "moted-discriminative", "k", 4)
        con = Path(d) / "con.json"
        write_descriptors(con, DescriptorSet("moted-conceptual", ["x"], [["concept x"]]))
        got = MoTED.vocabulary_descriptors({"conceptual_descriptions": str(con), "discriminative_descriptions":
                                            [str(path)], "num_discriminative": 2}, ["x"])
        assert got == (("concept x", "1", "2"),)
        # the conceptual description is one per class: the first of a file holding more
        two = Path(d) / "two.json"
        write_descriptors(two, DescriptorSet("moted-conceptual", ["x"], [["first", "second"]]))
        assert MoTED.vocabulary_descriptors({"conceptual_descriptions": str(two)}, ["x"]) == (("first",),)
        # errors of the discriminative file name its option and list the files searched
        with pytest.raises(ConfigError, match=r"^model\.options\.discriminative_descriptions: no "
                                              r"moted-discriminative descriptions for class 'z' in .*dis\.json, "
                                              r".*dis\.json \(generate them with `vclip describe --kind "
                                              r"moted-discriminative` on this label list\)$"):
            MoTED.vocabulary_descriptors({"discriminative_descriptions": [str(path), str(path)]}, ["z"])
        assert MoTED.vocabulary_descriptors({"discriminative_descriptions": str(path), "num_discriminative": 1},
                                            ["x", "y"]) == (("1",), ("4",))


def test_without_description_files_a_warning_says_how_to_set_them(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="vclip.methods.moted"):
        assert MoTED.vocabulary_descriptors({}, ["x"]) is None
    assert caplog.messages == ["MoTED without description files: every class is described by its name alone (set "
                               "model.options.conceptual_descriptions / discriminative_descriptions)"]


def test_option_and_input_errors_name_what_is_wrong():
    for key in ("alpha", "motion_width", "pooling_layers", "num_discriminative"):
        with pytest.raises(ConfigError, match=rf"model\.options\.{key}: must be >= 1, got 0"):
            MoTED.parse_options({key: 0})
    for key in ("motion_heads", "fusion_heads", "temporal_positions"):
        with pytest.raises(ConfigError, match=rf"model\.options\.{key}: must be >= 1 or null, got 0"):
            MoTED.parse_options({key: 0})
    with pytest.raises(ConfigError, match=r"model\.options\.motion_width: 96 is not divisible by 5 heads"):
        MoTED.parse_options({"motion_width": 96, "motion_heads": 5})
    with pytest.raises(ConfigError, match=r"model\.options\.motion_width: 200 is not divisible by 3 heads"):
        MoTED.parse_options({"motion_width": 200})   # Cm // 64 heads by default
    with pytest.raises(ConfigError, match=r"model\.options\.lme_merge: "):
        MoTED.parse_options({"lme_merge": -1, "pooling": "avg"})
    with pytest.raises(ConfigError, match=r"must contain \{description\} and may contain \{class_name\}"):
        MoTED.parse_options({"description_template": "{class_name} {description} {x}"})
    for good in ({"alpha": 1}, {"motion_width": 64, "motion_heads": 1}, {"tap_offset": 1},
                 {"lme_merge": 2, "pooling": "avg"}, {"description_template": "{description}"},
                 {"fusion_heads": 1, "temporal_positions": 1, "pooling_layers": 1, "num_discriminative": 1}):
        MoTED.parse_options(good)
    m = tiny()
    with pytest.raises(ValueError, match=r"expected video \[B, αT, 3, H, W\], got shape \(8, 3, 32, 32\)"):
        m.encode_video(clip_video()[0])
    with pytest.raises(ValueError, match=r"motion encoder: 4 patches per frame, built for 16"):
        m.motion_encoder(torch.zeros(1, 2, 3, 16, 16), [torch.zeros(1, 1, 64)] * 2)


def test_module_settings_the_sizes_rest_on():
    """QuickGELU and LayerNorm ε 1e-5 in the LME blocks and the pooling MLPs (CLIP's), [1, 1, Cm]
    queries, head counts from the options, ToMe without a protected class token (the motion tokens
    have none), and a MotionEncoder that by default neither merges nor checkpoints."""
    from vclip.backbone.model import QuickGELU
    from vclip.methods.moted import MotionEncoder

    m = tiny(fusion_heads=2)
    lme = m.motion_encoder.blocks[0].lme
    assert isinstance(lme.mlp.act, QuickGELU) and lme.ln_1.eps == 1e-5 and lme.ln_2.eps == 1e-5
    assert isinstance(m.motion_pooling.layers[1].video_ffn.mlp.act, QuickGELU)
    assert m.motion_pooling.frame_query.shape == m.motion_pooling.video_query.shape == (1, 1, 32)
    assert m.text_fusion.attn.heads == m.text_adapter.attn.heads == m.vision_fusion.attn.heads == 2
    assert m.motion_encoder.alpha == 2 and m.motion_encoder.merging is None
    merged = tiny(pooling="avg", lme_merge=4).motion_encoder.merging
    assert merged.class_token is False and merged.schedule == [4, 4]
    plain = MotionEncoder(64, 32, 1, 2, 8, 4, 2, 4, 4.0)
    assert plain.merging is None and plain.grad_checkpointing is False


def test_merging_with_gradient_checkpointing_gives_the_same_gradients():
    """The checkpointed temporal blocks get the sizes, the state and the block index (a per-layer
    ToMe schedule [4, 2] tells the blocks apart): the same loss and gradients as without."""
    vocab, y = Vocabulary(NAMES), torch.tensor([0, 2])
    res = []
    for ckpt in (False, True):
        m = perturb(tiny(pooling="avg", lme_merge=[4, 2])).train()
        m.clip.set_grad_checkpointing(ckpt)
        out = m(clip_video(), vocab, y)
        (out.losses["motion"] + out.losses["video"]).backward()
        res.append((out.losses["motion"].detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(res[1][0], res[0][0])
    for n, g in res[0][1].items():
        torch.testing.assert_close(res[1][1][n], g, rtol=1e-5, atol=1e-7, msg=n)
    with torch.no_grad():
        z, size = tiny(pooling="avg", lme_merge=[4, 2]).eval().motion_encoder(clip_video(), [torch.zeros(2, 4, 64)] * 2)
    assert z.shape[1] == 64 - 4 - 2 and torch.equal(size.sum(-1), torch.full((2,), 64.0))


def test_initialisation_leaves_clip_untouched_and_the_merge_error_is_spelled_out():
    """reset_parameters re-initialises the new modules only: CLIP's weights (its ``*_embedding``
    parameters included) stay as the pretrained model had them."""
    from vclip.backbone import CLIP, get_config

    torch.manual_seed(0)
    clip = CLIP(get_config("tiny"))
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    MoTED(clip, num_frames=4, options=MoTED.parse_options({"motion_width": 32, "pooling_layers": 1}))
    for k, v in clip.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ConfigError, match=r"^model\.options\.lme_merge: merging mixes the frames' tokens, which "
                                          r"query pooling needs per frame; set model\.options\.pooling=avg with it$"):
        MoTED.parse_options({"lme_merge": 8})
