"""MoTED: FLOPs and parameters at B/16 against the paper, frozen CLIP, the class-token taps at every
block input, the dense/sparse routing of one sampled clip, order sensitivity of the motion branch,
init parity with CLIP-mean, both loss terms (also under 2-process DDP), descriptions from a fake
LLM server reused from the cache, and vclip train / eval / predict on a tiny synthetic set."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "text"))

from vclip.backbone import CLIP, get_config  # noqa: E402
from vclip.errors import ConfigError  # noqa: E402
from vclip.methods import METHODS  # noqa: E402
from vclip.methods.base import Vocabulary  # noqa: E402
from vclip.methods.clip import CLIPMean  # noqa: E402
from vclip.methods.moted import MoTED  # noqa: E402

NAMES = ("moving left", "moving right", "rotating")
DESCRIPTORS = tuple((f"{n} concept", f"{n} versus a", f"{n} versus b") for n in NAMES)
TINY = {"motion_width": 32, "pooling_layers": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


def tiny(seed: int = 0, t: int = 4, **opts) -> MoTED:
    torch.manual_seed(seed)
    return MoTED(CLIP(get_config("tiny")), num_frames=t, options=MoTED.parse_options({**TINY, **opts}))


def perturb(m: MoTED, seed: int = 1) -> MoTED:
    """Non-zero weights everywhere in the new modules (the zero-initialised fusion outputs too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if not n.startswith("clip."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def clip_video(b: int = 2, n: int = 8, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ FLOPs and parameters at B/16
def test_flops_per_view_at_b16_are_within_10_percent_of_180():
    """8 sparse frames for CLIP + 16 dense for the motion encoder + one class sentence (the papers'
    fvcore convention): the paper's 180 GFLOPs per view (Table 6), ±10 %."""
    from vclip.methods.flops import method_flops

    r = method_flops("moted", "ViT-B-16", 8, num_texts=1, views=(3, 1))
    assert r.input_frames == 16
    assert r.gflops == pytest.approx(180, rel=0.10)
    assert r.parts["image tower"] == pytest.approx(140.5, abs=0.1)   # CLIP on the 8 sparse frames only
    assert r.parts["text tower"] == pytest.approx(2.98, abs=0.05)    # one sentence
    assert 30 < r.parts["rest"] < 40                                  # motion encoder, pooling, fusions
    assert r.gflops_per_video == pytest.approx(3 * r.gflops)


@pytest.mark.parametrize("layers, paper", [(4, 116), (2, 112)])
def test_parameters_at_b16_are_within_5_percent_of_the_paper(layers, paper):
    """The paper's count (Tables 4/6: 116 M K400, 112 M SSv2) is the CLIP image tower plus the new
    modules; the text tower is not in it (CLIP's alone is 63 M). Counted on the meta device."""
    from vclip.methods.flops import build_for_count

    m = build_for_count("moted", "ViT-B-16", 8, options={"pooling_layers": layers})
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    visual = sum(p.numel() for p in m.clip.visual.parameters())
    assert not any(p.requires_grad for p in m.clip.parameters())
    assert (trainable + visual) / 1e6 == pytest.approx(paper, rel=0.05)
    assert trainable / 1e6 == pytest.approx(28.4 if layers == 4 else 25.2, abs=0.1)


# ------------------------------------------------------------------ frozen CLIP, taps, routing
def test_clip_receives_no_gradient_and_every_new_module_does():
    m = perturb(tiny()).train()
    out = m(clip_video(), Vocabulary(NAMES, descriptors=DESCRIPTORS), torch.tensor([0, 2]))
    (out.losses["motion"] + out.losses["video"]).backward()
    assert all(p.grad is None for p in m.clip.parameters())
    assert not any(p.requires_grad for p in m.clip.parameters())
    for n, p in m.named_parameters():
        if not n.startswith("clip."):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, n


def hand_class_tokens(clip: CLIP, frames: torch.Tensor) -> list[torch.Tensor]:
    """The class token entering every vision block, by running the tower block by block."""
    v = clip.visual
    x = v.ln_pre(v.embed(frames))
    out = []
    for block in v.transformer.resblocks:
        out.append(x[:, 0])
        x, _ = block(x)
    return out + [x[:, 0]]


@pytest.mark.parametrize("offset", [0, 1])
def test_taps_are_the_class_tokens_at_each_block_input(offset, monkeypatch):
    """Temporal block l reads X⁽ˡ⁻¹⁾, the class token entering CLIP block l−1 (Eq. 2), of the sparse
    frames; with tap_offset 1 the class token leaving it."""
    m = tiny(tap_offset=offset).eval()
    video = clip_video()
    seen = {}
    real = m.motion_encoder.forward

    def spy(dense, taps):
        seen["dense"], seen["taps"] = dense, taps
        return real(dense, taps)

    monkeypatch.setattr(m.motion_encoder, "forward", spy)
    with torch.no_grad():
        m.encode_video(video)
        ref = hand_class_tokens(m.clip, video[:, ::2].flatten(0, 1))
    layers = m.clip.config.vision.layers
    assert len(seen["taps"]) == layers
    for i in range(layers):
        torch.testing.assert_close(seen["taps"][i], ref[i + offset].view(2, 4, -1), rtol=0, atol=1e-6)
    # X⁽⁰⁾ (after ln_pre) is the same for every frame; the later taps are not
    assert not torch.allclose(seen["taps"][1][:, 0], seen["taps"][1][:, 1])
    assert torch.equal(seen["dense"], video)


def test_one_clip_feeds_clip_the_every_other_frame_and_the_stem_all_of_them(monkeypatch):
    """Frames whose pixels hold their index: CLIP sees 0, 2, 4, 6, the 3D stem all 8."""
    m = tiny().eval()
    video = torch.arange(8.0).view(1, 8, 1, 1, 1).expand(1, 8, 3, 32, 32).contiguous()
    got = {}
    real_visual, real_stem = m.clip.visual.forward, m.motion_encoder.stem.forward
    monkeypatch.setattr(m.clip.visual, "forward", lambda px, **kw: got.setdefault("clip", px) is None or
                        real_visual(px, **kw))
    monkeypatch.setattr(m.motion_encoder.stem, "forward", lambda x: got.setdefault("stem", x) is None or real_stem(x))
    with torch.no_grad():
        m.encode_video(video)
    assert got["clip"][:, 0, 0, 0].tolist() == [0, 2, 4, 6]
    assert got["stem"][0, 0, :, 0, 0].tolist() == list(range(8))       # [B, 3, αT, H, W]
    with pytest.raises(ValueError, match="not a multiple of alpha=2"):
        m.encode_video(clip_video(n=7))


def test_the_data_path_samples_alpha_T_frames_in_one_clip(tmp_path):
    """``data.num_frames`` is T; the dataset decodes α·T frames per view with one sampler call, and
    CLIP's sparse frames are DiST's dense-around-sparse sparse clip."""
    import numpy as np

    from vclip.config import RunConfig, from_dict
    from vclip.data.sampling import dense_sparse_indices
    from vclip.engine import data as run_data

    (tmp_path / "l.csv").write_text("id,name\n0,a\n1,b\n")
    (tmp_path / "v.txt").write_text("x.mp4 0\n")
    cfg = from_dict(RunConfig, {"model": {"method": "moted", "arch": "tiny"},
                                "data": {"num_frames": 4, "root": str(tmp_path), "val_list": str(tmp_path / "v.txt"),
                                         "train_list": str(tmp_path / "v.txt"), "labels": str(tmp_path / "l.csv")},
                                "eval": {"num_clips": 3}})
    assert run_data.sampled_frames(cfg) == 8
    ev = run_data.eval_dataset(cfg, ["a", "b"])
    idx = ev.sampler(100)
    dense, sparse = dense_sparse_indices(100, 4, 2, test_mode=True, num_clips=3)
    assert idx.shape == (3, 8) and np.array_equal(idx, dense) and np.array_equal(idx[:, ::2], sparse)
    assert run_data.train_dataset(cfg, ["a", "b"]).sampler.clip_len == 8
    clip_cfg = from_dict(RunConfig, {"model": {"method": "clip"}, "data": {"num_frames": 4}})
    assert run_data.sampled_frames(clip_cfg) == 4


# ------------------------------------------------------------------ what the model computes
@pytest.mark.parametrize("paired", [False, True])
def test_reversing_the_dense_clip_changes_the_motion_branch_not_clip_mean(paired):
    """``paired``: every frame twice (x0 x0 x1 x1 ...), so the reversed clip gives CLIP the same
    frames in reverse order and each 2-frame tubelet is unchanged: only the order of the tubelets
    is left to tell the two clips apart."""
    m = perturb(tiny()).eval()
    video = clip_video(n=4).repeat_interleave(2, dim=1) if paired else clip_video()
    rev = video.flip(1)
    if paired:
        assert torch.equal(rev[:, ::2], video[:, ::2].flip(1))
    with torch.no_grad():
        a, b = m.encode_video(video)["motion"], m.encode_video(rev)["motion"]
        mean = CLIPMean(m.clip, num_frames=8).eval()
        vocab = Vocabulary(NAMES)
        ca, cb = mean(video, vocab).logits, mean(rev, vocab).logits
    assert (a - b).abs().max() > 1e-2 * a.abs().max()
    torch.testing.assert_close(ca, cb, rtol=0, atol=1e-5)


def test_video_score_starts_as_clip_mean():
    """Zero-initialised fusion and adapter outputs: S_v at step 0 equals CLIP-mean's logits on the
    sparse frames with the class names (descriptions or not)."""
    m = tiny().eval()
    video = clip_video()
    with torch.no_grad():
        ref = CLIPMean(m.clip, num_frames=4).eval()(video[:, ::2], Vocabulary(NAMES)).logits
        for desc in (None, DESCRIPTORS):
            out = m(video, Vocabulary(NAMES, descriptors=desc))
            torch.testing.assert_close(out.aux["video_logits"], ref, rtol=0, atol=1e-4)
            torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-4)


def test_adapter_and_fusion_ignore_the_order_of_a_class_descriptions():
    m = perturb(tiny()).eval()
    video = clip_video()
    shuffled = tuple((d[2], d[0], d[1]) for d in DESCRIPTORS)
    with torch.no_grad():
        a = m(video, Vocabulary(NAMES, descriptors=DESCRIPTORS))
        b = m(video, Vocabulary(NAMES, descriptors=shuffled))
        c = m(video, Vocabulary(NAMES, descriptors=tuple((d[0], d[0], d[1]) for d in DESCRIPTORS)))
    for k in ("motion_logits", "video_logits"):
        torch.testing.assert_close(a.aux[k], b.aux[k], rtol=0, atol=1e-4)
    assert (a.aux["motion_logits"] - c.aux["motion_logits"]).abs().max() > 1e-3   # the content matters


def test_both_loss_terms_and_the_test_time_score():
    m = perturb(tiny()).eval()
    video, y = clip_video(), torch.tensor([1, 2])
    vocab = Vocabulary(NAMES, descriptors=DESCRIPTORS)
    with torch.no_grad():
        out = m(video, vocab, y, label_smoothing=0.1)
        both = tiny(predict="video+motion").eval()
        both.load_state_dict(m.state_dict())
        o2 = both(video, vocab)
    assert set(out.losses) == set(MoTED.loss_weights) == {"motion", "video"}
    assert MoTED.loss_weights == {"motion": 1.0, "video": 1.0}
    torch.testing.assert_close(out.losses["motion"], F.cross_entropy(out.aux["motion_logits"], y, label_smoothing=0.1))
    torch.testing.assert_close(out.losses["video"], F.cross_entropy(out.aux["video_logits"], y, label_smoothing=0.1))
    assert not torch.allclose(out.losses["motion"], out.losses["video"])
    torch.testing.assert_close(out.logits, out.aux["video_logits"])
    torch.testing.assert_close(o2.logits, o2.aux["video_logits"] + o2.aux["motion_logits"])
    # motion logits use the motion embedding against the adapted descriptions (Eq. 3), by hand
    vf = m.encode_video(video)
    cf = m.encode_vocabulary(vocab)
    with torch.no_grad():
        e = m.text_adapter(cf["descriptions"]).mean(1)
        s = m.clip.logit_scale.exp()
        hand = s * F.normalize(vf["motion"], dim=-1) @ F.normalize(e, dim=-1).t()
    torch.testing.assert_close(out.aux["motion_logits"], hand, rtol=1e-5, atol=1e-4)


def test_token_merging_in_the_local_motion_blocks():
    """ToMe on the joint space-time tokens (no class token): fewer tokens, sizes summing to T·K."""
    m = tiny(pooling="avg", lme_merge=4).eval()
    with torch.no_grad():
        z, size = m.motion_encoder(clip_video(), [torch.zeros(2, 4, 64)] * 2)
    assert z.shape[1] == 4 * 16 - 2 * 4 and size is not None
    torch.testing.assert_close(size.sum(-1), torch.full((2,), 64.0))
    assert m(clip_video(), Vocabulary(NAMES)).logits.shape == (2, 3)


def test_temporal_positions_let_an_8_frame_model_score_32_frames():
    """Zero-shot at 32 frames with the 8-frame model: same parameter shapes, embeddings interpolated;
    at T = 8 the interpolation is the identity."""
    m8 = perturb(tiny(t=8, temporal_positions=8)).eval()
    m32 = tiny(t=32, temporal_positions=8).eval()
    m32.load_state_dict(m8.state_dict())
    vocab = Vocabulary(NAMES)
    with torch.no_grad():
        assert m32(clip_video(n=64), vocab).logits.shape == (2, 3)
        torch.testing.assert_close(m32(clip_video(n=16), vocab).logits, m8(clip_video(n=16), vocab).logits)
    assert tiny(t=4).motion_encoder.temporal_embedding.shape[0] == 4   # default: T positions


def test_gradient_checkpointing_and_bf16_autocast():
    """model.grad_checkpointing recomputes the temporal blocks too: the same gradients; a bf16
    autocast step runs and gives finite terms."""
    vocab, y = Vocabulary(NAMES, descriptors=DESCRIPTORS), torch.tensor([0, 2])
    grads = []
    for ckpt in (False, True):
        m = perturb(tiny()).train()
        m.clip.set_grad_checkpointing(ckpt)
        out = m(clip_video(), vocab, y)
        (out.losses["motion"] + out.losses["video"]).backward()
        assert m.motion_encoder.grad_checkpointing is ckpt
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-5, atol=1e-7, msg=n)
    m = perturb(tiny()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(clip_video(), vocab, y)
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()


def test_options_are_checked():
    with pytest.raises(ConfigError, match="model.options.lme_merge: merging mixes"):
        MoTED.parse_options({"lme_merge": 8})
    with pytest.raises(ConfigError, match="model.options.tap_offset"):
        MoTED.parse_options({"tap_offset": 2})
    with pytest.raises(ConfigError, match="model.options.description_template"):
        MoTED.parse_options({"description_template": "{name}"})
    with pytest.raises(ConfigError, match="model.options.motion_width: 100 is not divisible"):
        MoTED.parse_options({"motion_width": 100, "motion_heads": 3})
    assert MoTED.sampled_frames({"alpha": 3}, 8) == 24 and METHODS["moted"] is MoTED


# ------------------------------------------------------------------ DDP: the loss terms across processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _terms_and_grads(model, video, y):
    out = model(video, Vocabulary(NAMES, descriptors=DESCRIPTORS), y)
    (out.losses["motion"] + out.losses["video"]).backward()
    grads = {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return {k: float(v.detach()) for k, v in out.losses.items()}, grads


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from vclip.engine import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    D.init_distributed("cpu", timeout_s=60)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(perturb(tiny()).train())
        video, y = clip_video(b=4), torch.tensor([0, 1, 2, 1])
        terms, grads = _terms_and_grads(ddp, video[rank * 2:(rank + 1) * 2], y[rank * 2:(rank + 1) * 2])
        torch.save({"terms": terms, "grads": grads}, os.path.join(out_dir, f"r{rank}.pt"))
        del ddp  # before the process group it uses (D.cleanup)
    finally:
        D.cleanup()


def test_loss_terms_and_gradients_under_two_process_ddp_equal_one_process(tmp_path):
    """Both terms are reported by every process; their mean over 2 × 2 videos equals one process's
    terms over the 4 videos, and DDP's averaged gradients equal that process's."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_terms, ref_grads = _terms_and_grads(perturb(tiny()).train(), clip_video(b=4), torch.tensor([0, 1, 2, 1]))
    got = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    for k in ("motion", "video"):
        assert (got[0]["terms"][k] + got[1]["terms"][k]) / 2 == pytest.approx(ref_terms[k], rel=1e-5)
    assert got[0]["terms"]["motion"] != pytest.approx(got[1]["terms"]["motion"], rel=1e-3)  # halves differ
    assert set(got[0]["grads"]) == set(ref_grads) and not any(n.startswith("clip.") for n in ref_grads)
    for g in got:
        for n, ref in ref_grads.items():
            torch.testing.assert_close(g["grads"][n], ref, rtol=0, atol=1e-5 * float(ref.abs().max()) + 1e-9,
                                       msg=n)


# ------------------------------------------------------------------ descriptions and the CLI
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=8, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def _describe(server, synth, tmp_path, kind, out, *extra):
    from vclip.cli import main

    return main(["describe", "--kind", kind, "--labels", str(synth / "labels.csv"), "--out", str(out),
                 "--base-url", server.url, "--model", "m", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 "--arch", "tiny", *extra])


def test_descriptions_from_a_fake_server_cached_then_train_eval_predict(synth, tmp_path, capsys, monkeypatch):
    import yaml
    from fake_openai import FakeOpenAI

    from vclip.cli import main
    from vclip.config import load_config
    from vclip.data.annotations import read_label_csv
    from vclip.methods import make_vocabulary

    names = read_label_csv(synth / "labels.csv")
    con, dis = tmp_path / "con.json", tmp_path / "dis.json"
    with FakeOpenAI() as server:
        assert _describe(server, synth, tmp_path, "moted-conceptual", con) == 0
        assert _describe(server, synth, tmp_path, "moted-discriminative", dis, "--top-k", "2") == 0
        sent = len(server.requests)
        assert sent == len(names) * 3                      # 1 conceptual + 2 discriminative per class
        con2 = tmp_path / "con2.json"
        assert _describe(server, synth, tmp_path, "moted-conceptual", con2) == 0
        assert len(server.requests) == sent                 # the rerun is answered from the cache
        assert con2.read_text() == con.read_text()
    capsys.readouterr()
    cfg = {
        "name": "moted", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "model": {"method": "moted", "arch": "tiny", "freeze_text": True, "freeze_vision": True,
                  "options": {**TINY, "conceptual_descriptions": str(con), "discriminative_descriptions": str(dis),
                              "num_discriminative": 2}},
        "data": {"root": str(synth), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                 "labels": str(synth / "labels.csv"), "num_frames": 4, "image_size": 32, "batch_size": 6,
                 "num_workers": 0,
                 "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0,
                         "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 2, "lr": 1e-4, "warmup_epochs": 0, "precision": "fp32", "log_every": 1},
        "eval": {"confusion_png": False},
    }
    path = tmp_path / "moted.yaml"
    path.write_text(yaml.safe_dump(cfg))
    vocab = make_vocabulary(load_config([str(path)]), names)
    con_text = json.loads(con.read_text())["classes"]
    dis_text = json.loads(dis.read_text())["classes"]
    assert vocab.descriptors[0] == (con_text[names[0]][0], *dis_text[names[0]])
    assert "Speed of" in vocab.descriptors[0][1]           # the fake server's discriminative answer

    assert main(["train", "-c", str(path)]) == 0
    run = tmp_path / "runs" / "moted"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in metrics if "loss" in x]
    assert len(steps) == 2
    for x in steps:   # both terms logged, the loss their equal-weight sum
        terms = {k: v for k, v in x.items() if k.split("/")[-1] in ("motion", "video")}
        assert len(terms) == 2, x
        assert x["loss"] == pytest.approx(sum(terms.values()), rel=1e-5)
    ck = run / "checkpoints" / "last"
    capsys.readouterr()
    assert main(["eval", "-c", str(path), "--checkpoint", str(ck), "name=moted-eval"]) == 0
    res = json.loads((tmp_path / "runs" / "moted-eval" / "results_eval.json").read_text())
    assert res["num_videos"] == 12
    video = str(synth / (synth / "val.txt").read_text().splitlines()[0].split()[0])
    capsys.readouterr()
    frames = []
    real = MoTED.encode_video
    monkeypatch.setattr(MoTED, "encode_video", lambda self, v: frames.append(v.shape[1]) or real(self, v))
    assert main(["predict", video, "--checkpoint", str(ck), "--labels-file", str(synth / "labels.csv"),
                 "--json"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert len(item["top"]) == 5 and sum(t["probability"] for t in item["top"]) <= 1.0 + 1e-3
    assert frames == [8]                                   # α·T dense frames, T = data.num_frames = 4


def test_a_class_missing_from_the_description_files_is_named(tmp_path):
    from vclip.text.descriptors import DescriptorSet, write_descriptors

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_descriptors(a, DescriptorSet("moted-conceptual", ["x"], [["x concept"]]))
    write_descriptors(b, DescriptorSet("moted-conceptual", ["x", "y"], [["other"], ["y concept"]]))
    c = tmp_path / "c.json"
    write_descriptors(c, DescriptorSet("moted-conceptual", ["z"], [["z concept"]]))
    got = MoTED.vocabulary_descriptors({"conceptual_descriptions": [str(a), str(b), str(c)]}, ["x", "y", "z"])
    assert got == (("x concept",), ("y concept",), ("z concept",))   # no file has all: per class, the first
    got = MoTED.vocabulary_descriptors({"conceptual_descriptions": [str(a), str(b)]}, ["x", "y"])
    assert got == (("other",), ("y concept",))              # b covers the vocabulary
    got = MoTED.vocabulary_descriptors({"conceptual_descriptions": [str(a), str(b)]}, ["x"])
    assert got == (("x concept",),)                         # a file covering the vocabulary wins
    got = MoTED.vocabulary_descriptors({"conceptual_descriptions": [str(b), str(a)]}, ["x"])
    assert got == (("other",),)
    with pytest.raises(ConfigError, match=r"conceptual_descriptions: no moted-conceptual descriptions for class 'z'"):
        MoTED.vocabulary_descriptors({"conceptual_descriptions": str(a)}, ["x", "z"])
    with pytest.raises(ConfigError, match="holds 'moted-conceptual' descriptors, expected 'moted-discriminative'"):
        MoTED.vocabulary_descriptors({"discriminative_descriptions": str(a)}, ["x"])
    assert MoTED.vocabulary_descriptors({}, ["x"]) is None   # fallback: the class name alone


def test_shipped_configs_parse_and_pin_the_recipe():
    from vclip.config import load_config
    from vclip.methods import check_config

    root = Path(__file__).parents[2] / "configs" / "moted"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"fully_supervised_k400", "fully_supervised_ssv2", "zeroshot_k400", "fewshot",
                                       "base_to_novel"}
    for f in files:
        cfg = load_config([str(f)])
        assert check_config(cfg) is MoTED and cfg.model.freeze_text and cfg.model.freeze_vision, f
        assert cfg.data.num_frames == 8 and cfg.train.loss_weights == {"motion": 1.0, "video": 1.0}, f
    k400 = load_config([str(root / "fully_supervised_k400.yaml")])
    ssv2 = load_config([str(root / "fully_supervised_ssv2.yaml")])
    assert (k400.model.options["pooling_layers"], ssv2.model.options["pooling_layers"]) == (4, 2)
    assert (k400.eval.num_clips, k400.eval.num_crops) == (3, 1) and k400.train.lr == 3.2e-5
    assert ssv2.data.aug.flip == 0.0
    zs = load_config([str(root / "zeroshot_k400.yaml")])
    assert zs.model.options["temporal_positions"] == 8 and len(zs.model.options["conceptual_descriptions"]) == 4
