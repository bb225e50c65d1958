"""The config system: YAML files with ``base:`` inheritance, ``key=value`` overrides, validation
errors that name the dotted key, and the resolved config saved into the run directory."""

from __future__ import annotations

import pytest
import yaml

from vclip.config import RunConfig, load_config, save_config
from vclip.errors import ConfigError
from vclip.methods import load_run_config


def write(path, text: str):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("override, match", [
    ("train.lrr=1e-3", r"unknown config key 'train\.lrr'; did you mean 'train\.lr'\?"),
    ("data.aug.mixp=0.2", r"unknown config key 'data\.aug\.mixp'; did you mean 'data\.aug\.mixup'\?"),
    ("trian.lr=1e-3", r"unknown config key 'trian'; did you mean 'train'\?"),
    ("model.optons={}", r"'model\.optons'; did you mean 'model\.options'\?"),
])
def test_unknown_key_names_it_and_suggests(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], [override])


def test_unknown_key_in_a_file(tmp_path):
    f = write(tmp_path / "c.yaml", "data:\n  num_frame: 16\n")
    with pytest.raises(ConfigError, match=r"'data\.num_frame'; did you mean 'data\.num_frames'\?"):
        load_config([f])


@pytest.mark.parametrize("override, match", [
    ("train.lr=fast", r"train\.lr: expected a number, got str 'fast'"),
    ("train.epochs=1.5", r"train\.epochs: expected an integer"),
    ("data.num_frames=eight", r"data\.num_frames: expected an integer"),
    ("model.freeze_text=maybe", r"model\.freeze_text: expected true/false"),
    ("data.sampling=random", r"data\.sampling: 'random' is not one of 'segments', 'dense'"),
    ("train.betas=0.9", r"train\.betas: expected a list"),
    ("model.templates=[1]", r"model\.templates\[0\]: expected a string"),
    ("train=5", r"train: expected a mapping"),
    ("eval.num_crops=2", r"eval\.num_crops: 2 is not one of 1, 3"),
])
def test_wrong_type_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], [override])


@pytest.mark.parametrize("overrides, match", [
    (["model.freeze_text=true", "model.freeze_vision=true"], r"model\.freeze_text and model\.freeze_vision"),
    (["train.precision=fp16", "device=cpu"], r"train\.precision: fp16 needs a CUDA device"),
    (["model.templates=['a video of']"], r"model\.templates: 'a video of' must contain exactly one '\{\}'"),
    (["model.templates=['{} {}']"], r"model\.templates"),
    (["model.method=clipp"], r"model\.method: unknown method 'clipp'; did you mean 'clip'\?"),
    (["model.method=vificlip", "model.options={freeze_token_embeding: false}"],
     r"model\.options\.freeze_token_embeding'; did you mean 'model\.options\.freeze_token_embedding'"),
    (["model.options={anything: 1}"], r"unknown config key 'model\.options\.anything'"),
    (["data.num_frames=0"], r"data\.num_frames: must be >= 1"),
    (["train.accum_steps=0"], r"train\.accum_steps: must be >= 1"),
    (["data.aug.flip=1.5"], r"data\.aug\.flip: a probability must be in \[0, 1\]"),
    (["train.betas=[0.9]"], r"train\.betas"),
    (["train.lr=0"], r"train\.lr: must be > 0"),
    (["train.max_steps=0"], r"train\.max_steps: must be >= 1 \(or null\)"),
    (["train.save_every=0"], r"train\.save_every: must be >= 1"),
    (["train.loss_weights={cee: 0.5}"], r"train\.loss_weights\.cee: method 'clip' has no such loss term; "
                                         r"did you mean 'ce'\?"),
    (["model.method=ost", "train.loss_weights={kl_v2t: -1}"], r"train\.loss_weights\.kl_v2t: expected a number >= 0"),
    (["model.method=xclip", "train.lr_mults={neww: 3}"], r"train\.lr_mults\.neww: .* did you mean 'new'\? "
                                                          r"\(its parameter groups: clip, new\)"),
])
def test_impossible_combinations(overrides, match):
    """What the commands load (``load_run_config``: the schema, then the method's own checks)."""
    with pytest.raises(ConfigError, match=match):
        load_run_config([], overrides)


def test_the_config_schema_does_not_import_the_methods():
    import subprocess
    import sys

    code = ("import sys; from vclip.config import load_config; load_config([], ['model.method=mine']); "
            "sys.exit(any(m.startswith('vclip.methods') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fp16_on_a_cpu_only_machine_is_refused_at_start(synth, make_config):
    """``device: auto`` resolves to the CPU without CUDA: the trainer refuses fp16 by name."""
    import torch

    from vclip.engine.trainer import train

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    cfg = load_config([str(make_config("fp16"))], ["device=auto", "train.precision=fp16"])
    with pytest.raises(ConfigError, match=r"train\.precision: fp16 needs a CUDA device"):
        train(cfg)


def test_warmup_longer_than_the_run_names_warmup_epochs(synth, make_config):
    from vclip.engine.trainer import train

    cfg = load_config([str(make_config("warm"))], ["train.warmup_epochs=1", "train.max_steps=3"])
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs=1\.0 is 18 optimizer steps .* 3 steps"):
        train(cfg)


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", "name: root\ntrain:\n  lr: 1.0e-4\n  epochs: 7\ndata:\n  num_frames: 16\n")
    write(tmp_path / "sub" / "mid.yaml", "base: ../root.yaml\ntrain:\n  epochs: 3\nmodel:\n  arch: tiny\n")
    # a list of bases, resolved relative to the file that names them; later bases win
    write(tmp_path / "other.yaml", "data:\n  batch_size: 4\n  num_frames: 4\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml",
                 "base: [mid.yaml, ../other.yaml]\nname: leaf\ndata:\n  image_size: 64\n")
    cfg = load_config([leaf])
    assert cfg.name == "leaf"
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 3  # root, then mid's override
    assert cfg.model.arch == "tiny"
    assert cfg.data.num_frames == 4 and cfg.data.batch_size == 4 and cfg.data.image_size == 64
    assert cfg.data.aug.mixup == RunConfig().data.aug.mixup  # untouched sections keep defaults

    # a second --config file overrides the first; key=value overrides win over both
    extra = write(tmp_path / "extra.yaml", "train:\n  epochs: 9\n")
    cfg = load_config([leaf, extra], ["train.epochs=2", "data.aug.mixup=0", "model.templates=['a {}.', '{}']",
                                      "data.eval_batch_size=null", "train.lr=3e-4"])
    assert cfg.train.epochs == 2 and cfg.data.aug.mixup == 0.0
    assert cfg.model.templates == ["a {}.", "{}"]
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # "3e-4" is a string to YAML
    assert cfg.data.eval_batch_size is None


def test_circular_base(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="circular 'base' chain"):
        load_config([a])
    s = write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config([s])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([str(tmp_path / "missing.yaml")])
    bad = write(tmp_path / "bad.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config([bad])
    lst = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config([lst])
    missing_base = write(tmp_path / "mb.yaml", "base: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config([missing_base])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config([], ["train.lr"])


def test_shipped_configs_load():
    from pathlib import Path

    from vclip.protocols.runner import load_data_spec

    root = Path(__file__).parents[2] / "configs"
    specs = sorted((root / "protocols").glob("*.yaml"))  # dataset specs for `vclip run --data`
    suites = sorted((root / "suite").glob("*.yaml"))  # `vclip suite --config` files
    runs = sorted(f for f in root.rglob("*.yaml") if f not in specs and f not in suites)
    assert runs and specs and suites
    from vclip.protocols.suite import load_suite_config

    for f in suites:
        load_suite_config(f)
    for f in runs:
        load_config([str(f)])
    for f in specs:
        assert load_data_spec(f)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config([], ["name=x", "model.arch=tiny", "train.lr=2e-5", "model.templates=['{}']"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    data = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert data["train"]["lr"] == 2e-5 and data["model"]["arch"] == "tiny"
    again = load_config([str(tmp_path / "run" / "config.yaml")])
    assert again == cfg and again.digest() == cfg.digest()


def test_resolved_config_saved_in_run_dir(synth, make_config):
    """``vclip train`` writes the resolved config (files + overrides) into the run directory."""
    from vclip.engine.trainer import train

    cfg = load_config([str(make_config("saved"))], ["train.max_steps=1", "data.val_list=null", "train.lr=5e-4"])
    train(cfg)
    saved = cfg.run_dir / "config.yaml"
    assert saved.is_file()
    assert load_config([str(saved)]) == cfg


@pytest.mark.parametrize("override, match", [
    ("eval.epoch_views=4x2", r"eval\.epoch_views: '4x2' needs clips >= 1 and crops 1 or 3"),
    ("eval.epoch_views=4by3", r"eval\.epoch_views: expected CLIPSxCROPS such as 1x1 or 4x3, got '4by3'"),
    ("train.schedule=cosine", r"train\.schedule: 'cosine' is not one of 'cosine_after_warmup', 'timm_cosine'"),
    ("data.aug.mix_partner=flip", r"data\.aug\.mix_partner: 'flip' is not one of 'permutation', 'reversed'"),
    ("data.aug.color_jitter_per_frame=1", r"data\.aug\.color_jitter_per_frame: expected true/false"),
])
def test_official_recipe_options_are_validated(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], [override])


def test_official_configs_use_the_official_schedule_and_augmentation():
    """configs/xclip and configs/ost reproduce the official recipes: timm's cosine, ColorJitter per
    frame, Mixup partners by permutation, 1×1 views per epoch; the library defaults keep vclip's
    schedule and per-clip jitter."""
    from pathlib import Path

    root = Path(__file__).parents[2] / "configs"
    official = sorted((root / "xclip").glob("*.yaml")) + sorted((root / "ost").glob("*.yaml"))
    assert len(official) > 10
    for f in official:
        cfg = load_config([str(f)])
        assert cfg.train.schedule == "timm_cosine", f
        assert cfg.data.aug.color_jitter_per_frame, f
        assert cfg.data.aug.mix_partner == "permutation" and cfg.eval.epoch_view_counts() == (1, 1), f
    default = RunConfig()
    assert default.train.schedule == "cosine_after_warmup" and not default.data.aug.color_jitter_per_frame
    assert load_config([str(root / "demo" / "clip_mean.yaml")]).train.schedule == "cosine_after_warmup"
