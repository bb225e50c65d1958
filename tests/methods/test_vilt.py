"""ViLT-CLIP: parameter counts of the paper's two settings, the coupling (which prompts enter which
block, gradient routing through F and F̃), CLIP-mean at zero depth, the scenario loss by hand, frame-
order invariance, 2-process DDP = 1 process for both loss terms, text-tower gradient checkpointing,
FLOPs, the configs, and ``vclip train`` / ``eval`` / ``predict`` on a synthetic set."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from vclip.backbone import CLIP, LayerTaps, get_config  # noqa: E402
from vclip.backbone.tokenizer import get_tokenizer  # noqa: E402
from vclip.engine.trainer import weighted_loss  # noqa: E402
from vclip.errors import ConfigError  # noqa: E402
from vclip.methods import METHODS  # noqa: E402
from vclip.methods.base import Vocabulary  # noqa: E402
from vclip.methods.clip import CLIPMean  # noqa: E402
from vclip.methods.vilt import ViLTCLIP, scenario_loss  # noqa: E402

ROOT = Path(__file__).parents[2]
NAMES = ("moving left", "moving right", "rotating", "growing")


pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


def deep_arch(layers: int = 4):
    """The tiny CLIP with ``layers`` blocks per tower (the coupling needs blocks on both sides of K)."""
    cfg = get_config("tiny")
    cfg.vision.layers = cfg.text.layers = layers
    return cfg


def vilt(seed: int = 0, layers: int = 4, **options) -> ViLTCLIP:
    torch.manual_seed(seed)
    return ViLTCLIP(CLIP(deep_arch(layers)), num_frames=4, options=ViLTCLIP.parse_options(options))


def batch(seed: int = 1, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 3, 32, 32, generator=g), torch.arange(b) % len(NAMES)


def vocab():
    return Vocabulary(NAMES, ViLTCLIP.default_templates)


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("options, expected, shapes", [
    ({"prompt_length": 10, "prompt_depth": 12}, 864_512, {"P": (6, 10, 512), "P_tilde": (6, 10, 768)}),
    ({"prompt_length": 16, "prompt_depth": 10}, 886_016, {"P": (6, 16, 512), "P_tilde": (4, 16, 768)}),
])
def test_trainable_parameters_of_the_papers_settings_on_vit_b16(options, expected, shapes):
    """0.865 M (few-shot: b 10, Dp 12) and 0.886 M (base-to-novel: b 16, Dp 10), built on the meta
    device (shapes only); nothing of CLIP trains, τ included."""
    with torch.device("meta"):
        m = ViLTCLIP(CLIP(get_config("ViT-B-16")), num_frames=8, options=ViLTCLIP.parse_options(options))
    trainable = {n: tuple(p.shape) for n, p in m.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected
    assert trainable == {**shapes, "F.weight": (768, 512), "F.bias": (768,),
                         "F_tilde.weight": (512, 768), "F_tilde.bias": (512,)}
    assert m.switch_layer == 6 and not m.clip.logit_scale.requires_grad


def test_options_are_checked_against_the_architecture():
    with pytest.raises(ConfigError, match=r"model\.options\.prompt_depth: 12 is not in \[0, 4\]"):
        vilt(prompt_depth=12)
    with pytest.raises(ConfigError, match=r"model\.options\.switch_layer: 3 is not in \[0, prompt_depth = 2\]"):
        vilt(prompt_depth=2, switch_layer=3)
    with pytest.raises(ConfigError, match=r"model\.options\.reference_template"):
        ViLTCLIP.parse_options({"reference_template": "a video"})
    with pytest.raises(ConfigError, match=r"model\.options\.prompt_lenght.*prompt_length"):
        ViLTCLIP.parse_options({"prompt_lenght": 3})
    m = vilt(prompt_length=73)
    with pytest.raises(ConfigError, match=r"'moving left\.' has 5 tokens; with model\.options\.prompt_length = 73"):
        m.encode_vocabulary(vocab())


# ------------------------------------------------------------------ CLIP-mean at zero depth
def test_zero_prompt_depth_is_clip_mean_with_the_same_template():
    torch.manual_seed(0)
    clip = CLIP(get_config("tiny"))
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))          # a trained CLIP's scale, not 1/0.07
    mean = CLIPMean(clip, num_frames=4).eval()
    video, _ = batch()
    voc = vocab()
    assert voc.templates == ("{}.",)
    with torch.no_grad():
        ref = mean(video, voc).logits
        same_scale = ViLTCLIP(clip, num_frames=4, options=ViLTCLIP.parse_options(
            {"prompt_depth": 0, "temperature": None})).eval()(video, voc).logits
        fixed = ViLTCLIP(clip, num_frames=4, options=ViLTCLIP.parse_options({"prompt_depth": 0})).eval()(video, voc)
    assert torch.equal(same_scale, ref)                 # CLIP's scale: bit-identical logits
    # τ = 0.07 fixed: the same cosines at scale 1/0.07
    torch.testing.assert_close(fixed.logits, ref / clip.logit_scale.exp() / 0.07, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fixed.logits, ref, atol=1e-3)
    # nothing of its own: no prompt, no mapping, and CLIP frozen
    bare = ViLTCLIP(clip, num_frames=4, options=ViLTCLIP.parse_options({"prompt_depth": 0}))
    assert (bare.P, bare.P_tilde, bare.F, bare.F_tilde) == (None, None, None, None)
    assert not any(p.requires_grad for p in bare.parameters())


# ------------------------------------------------------------------ the coupling
def _recorded_inputs(m: ViLTCLIP, video):
    """Block inputs of both towers, recorded by a tap after the method's own hooks."""
    taps = {"vision": LayerTaps(at="input"), "text": LayerTaps(at="input")}
    states = {}

    def wrap(tower, original):
        def hooks():
            return original() + [taps[tower]]
        return hooks

    m.vision_hooks, m.text_hooks = wrap("vision", m.vision_hooks), wrap("text", m.text_hooks)
    orig_visual, orig_text = m.clip.visual.forward, m.clip.text.forward

    def keep(name, fn):
        def run(*a, **k):
            out = fn(*a, **k)
            states[name] = out.state.input_taps
            return out
        return run

    m.clip.visual.forward, m.clip.text.forward = keep("vision", orig_visual), keep("text", orig_text)
    with torch.no_grad():
        m(video, Vocabulary(NAMES[:1], ("{}.",)))
    return states


def test_vision_prompts_below_k_are_f_of_p_and_text_prompts_above_k_are_f_tilde_of_p_tilde():
    """4 blocks, Dp = 4, K = 2 (paper blocks 1…K = 0-based 0, 1). What enters each block: vision
    prompts (the last b tokens) F(P_i) for i < K and P̃ for i ≥ K; text prompts (positions 1…b) P_i
    for i < K and F̃(P̃) for i ≥ K. Block 0 sees them after ln_pre (vision) or with the position
    embedding added (text); deeper blocks see the fresh prompts as they are."""
    m = vilt(prompt_length=3).eval()
    assert (m.prompt_depth, m.switch_layer) == (4, 2)
    b = 3
    with torch.no_grad():
        f_p = F.linear(m.P, m.F.weight, m.F.bias)                      # [K, b, 64]
        ft_pt = F.linear(m.P_tilde, m.F_tilde.weight, m.F_tilde.bias)  # [Dp − K, b, 32]
        video, _ = batch(b=1)
        taps = _recorded_inputs(m, video)
        vis, txt = taps["vision"], taps["text"]
        pos = m.clip.text.positional_embedding
        expected_vision = [m.clip.visual.ln_pre(f_p[0]), f_p[1], m.P_tilde[0], m.P_tilde[1]]
        expected_text = [m.P[0] + pos[1:1 + b], m.P[1], ft_pt[0], ft_pt[1]]
    for i in range(4):
        for row in vis[i][:, -b:]:                                     # every frame gets the same prompts
            torch.testing.assert_close(row, expected_vision[i], rtol=1e-5, atol=1e-6, msg=f"vision block {i}")
        torch.testing.assert_close(txt[i][0, 1:1 + b], expected_text[i], rtol=1e-5, atol=1e-6,
                                   msg=f"text block {i}")
    # the vision prompts of blocks ≥ K are not F(anything of P), nor the text ones below K F̃(...)
    assert not torch.allclose(vis[2][0, -b:], f_p[1], atol=1e-3)


def test_gradients_route_through_f_to_vision_and_through_f_tilde_to_text():
    """A function of the text features alone reaches P, P̃ (through F̃) and F̃, not F; one of the video
    feature alone reaches P (through F), F and P̃, not F̃. Nothing of CLIP gets a gradient."""
    m = vilt().train()
    video, y = batch()

    def grads(loss):
        m.zero_grad(set_to_none=True)
        loss.backward()
        return {n for n, p in m.named_parameters() if p.grad is not None and float(p.grad.abs().sum()) > 0}

    text = grads(m.encode_vocabulary(vocab())["classes"].sum(0).pow(2).sum())
    video_only = grads(m.encode_video(video).pow(2).sum())
    out = m(video, vocab(), y)
    full = grads(weighted_loss(out.losses, m.loss_weights))
    assert text == {"P", "P_tilde", "F_tilde.weight", "F_tilde.bias"}
    assert video_only == {"P", "P_tilde", "F.weight", "F.bias"}
    assert full == {"P", "P_tilde", "F.weight", "F.bias", "F_tilde.weight", "F_tilde.bias"}
    assert all(p.grad is None for p in m.clip.parameters())


def test_independent_coupling_has_no_mapping():
    """``coupling: none`` (IVLP, the paper's "Independent V-L prompting" row): Dp text and Dp vision
    prompts, no F/F̃; each tower's gradient reaches only its own prompts."""
    m = vilt(coupling="none", prompt_length=2).train()
    assert {n: tuple(p.shape) for n, p in m.named_parameters() if p.requires_grad} == \
        {"P": (4, 2, 32), "P_tilde": (4, 2, 64)}
    m.encode_video(batch()[0]).sum().backward()
    assert m.P.grad is None and m.P_tilde.grad is not None


# ------------------------------------------------------------------ the scenario loss
def test_scenario_loss_equals_a_hand_computation_and_the_reference_is_cached():
    m = vilt().train()
    video, y = batch()
    calls = []
    enc = m.encode_prompt_ensemble
    m.encode_prompt_ensemble = lambda v, **k: calls.append(v.templates) or enc(v, **k)
    out = m(video, vocab(), y)
    m(video, vocab(), y)
    # the reference is encoded once; the prompted classes at every training step
    assert calls == [("{}.",), ("a video of a person doing {}.",), ("{}.",)]
    with torch.no_grad():
        tokens = get_tokenizer()([f"a video of a person doing {n}." for n in NAMES])
        ref = F.normalize(m.clip.text(tokens).embeds, dim=-1)               # frozen CLIP, no prompts
        c = out.aux["class_features"]
        by_hand = 1.0 - (F.normalize(c, dim=-1) * ref).sum(-1).mean()
        v = F.normalize(m.encode_video(video), dim=-1)
        ce = F.cross_entropy((v @ c.t()) / 0.07, y)
    torch.testing.assert_close(out.aux["reference_features"], ref, rtol=1e-5, atol=1e-6)
    assert float(out.losses["scenario"].detach()) == pytest.approx(float(by_hand), abs=1e-6)
    assert 0.05 < float(by_hand) < 2.0                       # not trivially 0: the prompts change c
    assert float(out.losses["ce"].detach()) == pytest.approx(float(ce), abs=1e-5)
    total = weighted_loss(out.losses, m.loss_weights).detach()
    assert float(total) == pytest.approx(float(ce) + 8.0 * float(by_hand), abs=1e-4)
    assert float(scenario_loss(ref, ref)) == pytest.approx(0.0, abs=1e-6)
    # one SGD step on the scenario term alone raises the mean cosine to the reference
    m.zero_grad()
    out.losses["scenario"].backward()
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
        after = m(video, vocab(), y).losses["scenario"]
    assert float(after) < float(out.losses["scenario"].detach())
    # evaluation mode: no reference, and a loss request says why
    m.eval()
    with torch.no_grad(), pytest.raises(ValueError, match="training mode"):
        m(video, vocab(), y)


def test_a_training_step_changes_the_class_features_and_nothing_of_clip():
    m = vilt().train()
    clip_before = {k: v.clone() for k, v in m.clip.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    video, y = batch()
    m.eval()
    with torch.no_grad():
        before = m.class_features(vocab())["classes"].clone()
    m.train()
    weighted_loss(m(video, vocab(), y).losses, m.loss_weights).backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = m.class_features(vocab())["classes"]
    assert not torch.allclose(before, after, atol=1e-5)
    assert all(torch.equal(v, m.clip.state_dict()[k]) for k, v in clip_before.items())


# ------------------------------------------------------------------ frame order
def test_video_feature_is_invariant_to_frame_order():
    """Identical prompts in every frame and a mean over frames: permuting the frames gives the same
    video feature and logits (up to the rounding of the mean's summation order)."""
    m = vilt().eval()
    video, _ = batch(b=2)
    with torch.no_grad():
        a = m(video, vocab()).logits
        b = m(video[:, [3, 1, 0, 2]], vocab()).logits
        c = m(video[:, [0, 0, 1, 1]], vocab()).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)                 # the frames themselves do matter


# ------------------------------------------------------------------ text-tower checkpointing
def test_text_tower_gradient_checkpointing_gives_the_same_gradients():
    video, y = batch()
    grads = []
    for ckpt in (False, True):
        m = vilt(text_grad_checkpointing=ckpt).train()
        assert m.clip.text.transformer.grad_checkpointing is ckpt
        assert m.clip.visual.transformer.grad_checkpointing is False
        weighted_loss(m(video, vocab(), y).losses, m.loss_weights).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == 6
    with pytest.raises(ValueError, match="unknown tower"):
        CLIP(get_config("tiny")).set_grad_checkpointing(True, towers=("vision",))
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, msg=n)


# ------------------------------------------------------------------ DDP: both loss terms
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(model, video, y):
    out = model(video, vocab(), y)
    weighted_loss(out.losses, ViLTCLIP.loss_weights).backward()
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
        ddp = torch.nn.parallel.DistributedDataParallel(vilt().train())
        video, y = batch(b=4)
        losses, grads = _step(ddp, video[rank * 2:(rank + 1) * 2], y[rank * 2:(rank + 1) * 2])
        torch.save({"losses": losses, "grads": grads}, os.path.join(out_dir, f"r{rank}.pt"))
        del ddp  # before the process group it uses (D.cleanup)
    finally:
        D.cleanup()


def test_two_process_ddp_equals_one_process_for_both_loss_terms(tmp_path):
    """2 gloo processes × 2 videos = 1 process × 4 videos: the CE averaged over the ranks and the
    scenario term on each rank equal the single process's, and so do the gradients after DDP's
    all-reduce (of the total ce + 8 · scenario)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    video, y = batch(b=4)
    ref_losses, ref = _step(vilt().train(), video, y)
    got = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    assert set(ref) == {"P", "P_tilde", "F.weight", "F.bias", "F_tilde.weight", "F_tilde.bias"}
    assert (got[0]["losses"]["ce"] + got[1]["losses"]["ce"]) / 2 == pytest.approx(ref_losses["ce"], abs=1e-5)
    assert got[0]["losses"]["ce"] != pytest.approx(ref_losses["ce"], abs=1e-3)
    for g in got:
        assert g["losses"]["scenario"] == pytest.approx(ref_losses["scenario"], abs=1e-6)
        assert set(g["grads"]) == set(ref)
        for n in ref:
            torch.testing.assert_close(g["grads"][n], ref[n], rtol=0, atol=1e-5 * float(ref[n].abs().max()), msg=n)
    # the scenario term is in those gradients: the CE alone gives others
    m = vilt().train()
    m(video, vocab(), y).losses["ce"].backward()
    assert not torch.allclose(m.P.grad, ref["P"], atol=1e-6)


# ------------------------------------------------------------------ FLOPs
def test_flops_of_vit_b16_within_ten_percent_of_the_reference_and_text_cost_per_step(capsys):
    from vclip.cli import main
    from vclip.methods.flops import method_flops

    from vclip.methods.flops import build_for_count

    # counted on the meta device (deep text prompts need no token values there), not on CPU weights
    meta = build_for_count("vilt", "tiny", 4, options={"prompt_depth": 2})
    with torch.no_grad():
        assert meta.encode_vocabulary(ViLTCLIP.example_vocabulary(3))["classes"].is_meta
    r = method_flops("vilt", "ViT-B-16", 16, num_texts=1)
    clip = method_flops("clip", "ViT-B-16", 16, num_texts=1)
    # the reference's estimate (vilt_clip.md §6: 298.8 at 16 frames, b 10), and the paper's 287
    assert r.gflops == pytest.approx(298.8, rel=0.10) and r.gflops == pytest.approx(298.8, abs=0.5)
    assert abs(r.gflops - 287) / 287 < 0.10
    # prompts add 10 tokens to each frame's 197; the text side is unchanged (prompts replace padding)
    assert r.parts["image tower"] > clip.parts["image tower"] + 10
    assert r.parts["text tower"] == pytest.approx(clip.parts["text tower"], rel=1e-12)
    assert r.text_gflops_per_class == pytest.approx(r.parts["text tower"], rel=1e-12)
    step = method_flops("vilt", "ViT-B-16", 8, num_texts=0, train_classes=400)
    assert step.text_gflops_per_train_step == pytest.approx(400 * r.text_gflops_per_class, rel=1e-9)
    assert clip.text_gflops_per_class is None           # CLIP-mean declares no text-side modules
    assert main(["flops", "--method", "vilt", "--arch", "tiny", "--frames", "4", "--train-classes", "12",
                 "--option", "prompt_depth=2"]) == 0
    line = capsys.readouterr().out
    assert "training re-encodes every class at every step" in line and "per step for 12 classes" in line


# ------------------------------------------------------------------ configs
def test_configs_of_every_protocol_carry_the_papers_settings():
    from vclip.methods import load_run_config

    expect = {  # file: (b, Dp, K, frames, views, lr, epochs)
        "fewshot.yaml": (10, 12, 6, 32, (1, 1), 8e-3, 30),
        "base2novel.yaml": (16, 10, 6, 32, (1, 1), 4e-2, 12),
        "fully_supervised_k400.yaml": (10, 12, 6, 16, (4, 3), 8e-3, 30),
        "zeroshot_k400.yaml": (10, 12, 6, 32, (1, 1), 8e-3, 30),
    }
    for name, (b, dp, k, frames, views, lr, epochs) in expect.items():
        cfg = load_run_config([str(ROOT / "configs" / "vilt" / name)])
        o = ViLTCLIP.parse_options(cfg.model.options)
        assert cfg.model.method == "vilt" and METHODS["vilt"] is ViLTCLIP, name
        assert (o.prompt_length, o.prompt_depth, o.switch_layer) == (b, dp, k), name
        assert (cfg.data.num_frames, (cfg.eval.num_clips, cfg.eval.num_crops)) == (frames, views), name
        assert (cfg.train.lr, cfg.train.epochs, cfg.train.weight_decay) == (lr, epochs, 0.001), name
        assert cfg.train.loss_weights == {"ce": 1.0, "scenario": 8.0} and o.temperature == 0.07, name
        assert cfg.model.freeze_text and cfg.model.freeze_vision and cfg.model.templates == ["{}."], name
        assert cfg.data.batch_size * 8 * cfg.train.accum_steps == 64, name
        assert o.reference_template == "a video of a person doing {}.", name


# ------------------------------------------------------------------ vclip train / eval / predict
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=4, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def test_vclip_train_eval_predict_with_vilt(synth, tmp_path, capsys):
    import yaml

    from vclip.backbone.weights import load_clip, save_clip
    from vclip.cli import main
    from vclip.engine.checkpoint import load_checkpoint

    torch.manual_seed(3)
    save_clip(CLIP(get_config("tiny")), tmp_path / "clip")
    cfg = {
        "name": "vilt", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "model": {"method": "vilt", "arch": "tiny", "pretrained": str(tmp_path / "clip"),
                  "freeze_text": True, "freeze_vision": True, "options": {"prompt_length": 4}},
        "data": {"root": str(synth), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                 "labels": str(synth / "labels.csv"), "num_frames": 4, "image_size": 32, "batch_size": 6,
                 "num_workers": 0,
                 "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0, "cutmix": 0.0,
                         "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 3, "lr": 1e-2, "warmup_epochs": 0, "precision": "fp32",
                  "log_every": 1},
        "eval": {"confusion_png": False},
    }
    path = tmp_path / "vilt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "-c", str(path)]) == 0
    run = tmp_path / "runs" / "vilt"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 3
    # both named terms are logged and the loss is ce + 8 · scenario
    for m in steps:
        terms = {k.split("/")[-1]: v for k, v in m.items() if k.endswith(("ce", "scenario"))}
        assert set(terms) == {"ce", "scenario"}, m
        assert m["loss"] == pytest.approx(terms["ce"] + 8.0 * terms["scenario"], rel=1e-5)
    assert steps[-1]["loss"] < steps[0]["loss"]             # the prompts learn (fixed seeds)
    state, _, meta = load_checkpoint(run / "checkpoints" / "last")
    init = load_clip(str(tmp_path / "clip"))
    assert {k for k in state if not k.startswith("clip.")} == {"P", "P_tilde", "F.weight", "F.bias",
                                                                "F_tilde.weight", "F_tilde.bias"}
    for k, v in init.state_dict().items():                 # CLIP (τ included) untouched
        assert torch.equal(state[f"clip.{k}"], v), k
    trained = json.loads((run / "results.json").read_text())
    assert main(["eval", "-c", str(path), "--checkpoint", str(run / "checkpoints" / "last")]) == 0
    again = json.loads((run / "results_eval.json").read_text())
    assert again["num_videos"] == 12 and again["top1"] == pytest.approx(trained["top1"], abs=1e-9)
    capsys.readouterr()
    video = str(synth / (synth / "val.txt").read_text().splitlines()[0].split()[0])
    assert main(["predict", video, "--checkpoint", str(run / "checkpoints" / "last"), "--json", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    (item,) = out
    probs = [t["probability"] for t in item["top"]]
    assert len(probs) == 2 and probs[0] >= probs[1] > 0
    names = (synth / "labels.csv").read_text()
    assert all(t["class"] in names for t in item["top"])


# ------------------------------------------------------------------ values a broken module changes
def test_per_layer_mapping_applies_block_js_own_linear():
    """``mapping: per_layer``: one Linear per block (MaPLe's), V_i = F_i(P_i) for i < K and
    U_i = F̃_j(P̃_j) above K — not the shared one, not another block's."""
    m = vilt(prompt_length=2, mapping="per_layer").eval()
    assert isinstance(m.F, torch.nn.ModuleList) and len(m.F) == 2 and len(m.F_tilde) == 2
    assert (m.F[0].in_features, m.F[0].out_features) == (32, 64)
    assert (m.F_tilde[1].in_features, m.F_tilde[1].out_features) == (64, 32)
    with torch.no_grad():
        vision, text = m.prompts()
        for i in range(2):
            torch.testing.assert_close(vision[i], m.F[i](m.P[i]))
            torch.testing.assert_close(text[2 + i], m.F_tilde[i](m.P_tilde[i]))
        assert not torch.allclose(vision[1], m.F[0](m.P[1]), atol=1e-4)
    assert [t.shape for t in vision] == [(2, 64)] * 4 and [t.shape for t in text] == [(2, 32)] * 4


def test_prompts_start_normal_with_the_configured_std_and_coupling_none_has_no_switch():
    m = vilt(prompt_length=16)
    for p in (m.P, m.P_tilde):
        assert float(p.detach().std()) == pytest.approx(0.02, rel=0.1)
        assert float(p.detach().abs().max()) < 0.02 * 6
    assert float(vilt(prompt_init_std=0.5).P.detach().std()) == pytest.approx(0.5, rel=0.15)
    assert vilt(coupling="none").switch_layer == 0
    # a depth below N // 2 moves the default switch down to it; an explicit K is kept
    assert (vilt(prompt_depth=1).switch_layer, vilt(prompt_depth=3, switch_layer=3).switch_layer) == (1, 3)


def test_zero_depth_has_no_hooks_and_never_checks_the_prompt_length():
    m = vilt(prompt_depth=0, prompt_length=200)
    assert m.vision_hooks() == [] and m.text_hooks() == []
    assert m.encode_vocabulary(vocab())["classes"].shape == (4, 32)   # no prompt tokens: no length error


def test_the_length_check_allows_exactly_the_context_and_runs_once_per_vocabulary(monkeypatch):
    """'moving left.' is 5 tokens with SOS/EOT: b = 72 fills the 77-token context exactly (allowed),
    b = 73 does not (the options test). The check tokenizes once per vocabulary and prompt length."""
    import vclip.backbone.tokenizer as tokenizer

    m = vilt(prompt_length=72)
    calls = []
    real = tokenizer.get_tokenizer
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda: calls.append(1) or real())
    with torch.no_grad():
        m.encode_vocabulary(vocab())
        m.encode_vocabulary(vocab())
    assert len(calls) == 1
    m.encode_vocabulary(Vocabulary(NAMES[:2], ("{}.",)))
    assert len(calls) == 2


def test_logits_accept_a_tensor_and_cast_the_class_features_to_the_video_dtype():
    m = vilt().eval()
    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, 32, generator=g, dtype=torch.float64)
    c = F.normalize(torch.randn(4, 32, generator=g), dim=-1)
    out = m.logits(v, c)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.normalize(v, dim=-1) @ c.double().t() / 0.07)
    torch.testing.assert_close(m.logits(v, {"classes": c}), out)


def test_label_smoothing_reaches_ce_and_the_missing_reference_message():
    m = vilt().train()
    video, y = batch()
    out = m(video, vocab(), y, label_smoothing=0.2)
    ce = F.cross_entropy(out.logits, y, label_smoothing=0.2)
    assert float(out.losses["ce"]) == pytest.approx(float(ce), abs=1e-6)
    assert float(out.losses["ce"]) != pytest.approx(float(F.cross_entropy(out.logits, y)), abs=1e-4)
    # called directly, without label_smoothing: none (the default 0)
    assert float(m.losses(out, y)["ce"]) == pytest.approx(float(F.cross_entropy(out.logits, y)), abs=1e-6)
    m.eval()
    with torch.no_grad():
        ev = m(video, vocab())
    with pytest.raises(ValueError, match=r"^ViLT-CLIP's scenario loss needs the reference class features, which "
                                         r"the method attaches in training mode \(call \.train\(\) before a "
                                         r"forward with targets\)$"):
        m.losses(ev, y)


def test_reference_follows_the_class_names_and_unfrozen_clip_trains():
    m = vilt().train()
    a = m.reference_features(NAMES[:2])
    b = m.reference_features(NAMES[2:])
    assert not torch.allclose(a, b, atol=1e-3)
    torch.testing.assert_close(m.reference_features(NAMES[:2]), a)
    free = vilt(freeze_clip=False).train()
    assert free.clip.logit_scale.requires_grad and free.clip.text.token_embedding.weight.requires_grad
    video, y = batch()
    out = free(video, vocab(), y)
    weighted_loss(out.losses, free.loss_weights).backward()
    assert free.clip.visual.conv1.weight.grad is not None


def test_option_errors_name_the_option_and_the_bounds():
    for opts, match in [({"prompt_length": 0}, r"^model\.options\.prompt_length: must be >= 1, got 0$"),
                        ({"prompt_depth": -1}, r"^model\.options\.prompt_depth: must be >= 0 \(or null\), got -1$"),
                        ({"switch_layer": -2}, r"^model\.options\.switch_layer: must be >= 0 \(or null\), got -2$"),
                        ({"temperature": 0.0}, r"^model\.options\.temperature: must be > 0 \(or null for CLIP's "
                                               r"scale\), got 0\.0$"),
                        ({"reference_template": "{} {}"}, r"^model\.options\.reference_template: '\{\} \{\}' must "
                                                          r"contain one \{\} \(the class name\)$"),
                        ({"prompt_init_std": -0.1}, r"^model\.options\.prompt_init_std: must be >= 0, got -0\.1$")]:
        with pytest.raises(ConfigError, match=match):
            ViLTCLIP.parse_options(opts)
    for good in ({"prompt_length": 1}, {"prompt_init_std": 0.0}, {"prompt_depth": 0, "switch_layer": 0}):
        ViLTCLIP.parse_options(good)
