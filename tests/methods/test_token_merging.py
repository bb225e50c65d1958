"""``model.token_merging`` on every method that has no merging of its own: r = 0 is bit-identical to
no merging, r > 0 merges in every frame's image tower (class token and X-CLIP's message tokens kept
out), through build_method, inference checkpoints and ``vclip flops``; bad specs name the key."""

from __future__ import annotations

import pytest
import torch

from vclip.backbone import TowerHook
from vclip.config import RunConfig, from_dict
from vclip.errors import ConfigError
from vclip.methods import build_method
from vclip.methods.base import Vocabulary

NAMES = ("moving left", "moving right", "rotating")


pytestmark = pytest.mark.usefixtures("one_thread")  # numerics independent of the machine's load


def cfg(method, **model):
    return from_dict(RunConfig, {"model": {"method": method, "arch": "tiny", **model},
                                 "data": {"image_size": 32, "num_frames": 4}})


def vocab(method):
    from vclip.methods import METHODS

    cls = METHODS[method]
    return cls.example_vocabulary(3) if method == "ost" else Vocabulary(NAMES, cls.default_templates)


def logits(method, token_merging=None, seed=0):
    torch.manual_seed(seed)
    m = build_method(cfg(method, **({"token_merging": token_merging} if token_merging is not None else {}))).eval()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return m, m(video, vocab(method)).logits


@pytest.mark.parametrize("method", ["clip", "vificlip", "xclip", "ost"])
def test_r0_is_bit_identical_and_r2_changes_the_logits(method):
    _, plain = logits(method)
    m0, zero = logits(method, {"r": 0})
    m2, merged = logits(method, {"r": 2})
    assert m0.token_merging is None and m2.token_merging.schedule == [2, 2]
    assert torch.equal(plain, zero)
    assert merged.shape == plain.shape and (merged - plain).abs().max() > 1e-5
    assert m2.token_merging.proportional_attention


class Sizes(TowerHook):
    """Records the token count and the sizes after every block."""

    def __init__(self):
        self.seen = []

    def after_block(self, index, x, state):
        self.seen.append((x.shape[1], state.size.clone() if state.size is not None else None))
        return x


def test_xclip_message_tokens_stay_out_of_merging():
    torch.manual_seed(0)
    m = build_method(cfg("xclip", token_merging={"r": 3})).eval()
    rec = Sizes()
    video = torch.randn(2, 4, 3, 32, 32)
    hook = m.cross_frame_hook(4)
    with torch.no_grad():
        out = m.encode_frames(video, hooks=[hook, rec], return_tokens=True)
    # 17 tokens (class + 16 patches) → 14 → 11: only the frame's own tokens merge, sizes sum to 17
    assert [n for n, _ in rec.seen] == [14, 11] and out.tokens.shape[1] == 11
    for _, size in rec.seen:
        torch.testing.assert_close(size.sum(-1), torch.full((8,), 17.0))
        assert torch.equal(size[:, 0], torch.ones(8))


def test_schedules_and_errors():
    m = build_method(cfg("clip", token_merging={"r": 4, "inflect": -1}))
    assert m.token_merging.schedule == [8, 0]
    m = build_method(cfg("clip", token_merging={"r": [3], "proportional_attention": False}))
    assert m.token_merging.schedule == [3, 0] and not m.token_merging.proportional_attention
    for spec, match in [({"rr": 8}, r"model\.token_merging\.rr: unknown key"),
                        ({"inflect": 1}, r"model\.token_merging: needs r"),
                        ({"r": -1}, r"model\.token_merging: merge schedule: r must be ≥ 0"),
                        ({"r": 8, "proportional_attention": "yes"}, r"proportional_attention: expected true")]:
        with pytest.raises(ConfigError, match=match):
            build_method(cfg("clip", token_merging=spec))


def test_flops_with_token_merging(capsys):
    import json

    from vclip.cli import main
    from vclip.methods.flops import method_flops

    plain = method_flops("clip", "ViT-B-16", 8, num_texts=0)
    merged = method_flops("clip", "ViT-B-16", 8, num_texts=0, token_merging={"r": 8})
    # the reference's image-tower figures (alt_tome.md A.8): 140.51 and 104.87
    assert plain.gflops == pytest.approx(140.51, abs=0.01) and merged.gflops == pytest.approx(104.87, abs=0.01)
    assert main(["flops", "--method", "xclip", "--token-merging", "8", "--texts", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"]["image tower"] < 0.8 * plain.gflops


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from vclip.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(size=(32, 32), frames=4, videos_per_class=4, val_fraction=0.25, seed=0))
    return out


def test_a_checkpoint_trained_with_merging_is_evaluated_with_merging(synth, tmp_path):
    """The run config's model.token_merging travels with the checkpoint: the model rebuilt for
    evaluation merges, and its logits equal the trained model's."""
    import yaml

    from vclip.config import load_config
    from vclip.engine.inference import build_for_checkpoint, inference_config, open_checkpoint
    from vclip.engine.trainer import train

    cfg = {
        "name": "tm", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "model": {"method": "clip", "arch": "tiny", "token_merging": {"r": 2}},
        "data": {"root": str(synth), "train_list": str(synth / "train.txt"), "val_list": str(synth / "val.txt"),
                 "labels": str(synth / "labels.csv"), "num_frames": 4, "image_size": 32, "batch_size": 6,
                 "num_workers": 0, "aug": {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "mixup": 0.0,
                                           "cutmix": 0.0, "label_smoothing": 0.0}},
        "train": {"epochs": 1, "max_steps": 1, "lr": 1e-4, "warmup_epochs": 0, "precision": "fp32"},
        "eval": {"confusion_png": False},
    }
    path = tmp_path / "tm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_config([str(path)]))
    ck = open_checkpoint(tmp_path / "runs/tm/checkpoints/last")
    m = build_for_checkpoint(inference_config(ck), ck)
    assert m.token_merging is not None and m.token_merging.schedule == [2, 2]
    plain = build_for_checkpoint(inference_config(ck, overrides=["model.token_merging.r=0"]), ck)
    assert plain.token_merging is None
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        a, b = m(video, Vocabulary(NAMES)).logits, plain(video, Vocabulary(NAMES)).logits
    assert (a - b).abs().max() > 1e-6
