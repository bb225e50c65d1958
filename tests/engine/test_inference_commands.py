"""``vclip eval`` / ``vclip predict`` / ``vclip export`` with checkpoints: the config compared with
the checkpoint's, strict loads that name the tensors, KEY=VALUE overrides anywhere on predict's
line, arguments checked up front, inference without ``train_state.pt``, exported checkpoints, and
runs trained from ``model.pretrained`` (issue 12, items 4, 8, 9). In-process (``vclip.cli.main``)
on tiny runs of one optimizer step."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from engine_utils import base_config, deep_update
from vclip.cli import main
from vclip.config import load_config
from vclip.engine.checkpoint import CheckpointManager, load_checkpoint, load_model_state
from vclip.engine.trainer import train
from vclip.errors import CheckpointError

LABELS = "red star,blue star,hexagon,cross"


def _train(synth: Path, out: Path, name: str, **over) -> Path:
    """One optimizer step of a tiny run (evaluated on the 48 validation videos); its run dir."""
    cfg = deep_update(base_config(synth, out / "runs", name), {"train": {"max_steps": 1}})
    cfg = deep_update(cfg, over)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_config([str(path)]))
    return out / "runs" / name


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory) -> dict[str, Path]:
    """A CLIP-mean and an X-CLIP run, both of arch ``tiny`` (not the default) at 4 frames of 32 px."""
    out = tmp_path_factory.mktemp("inference")
    torch.set_num_threads(1)
    return {"clip": _train(synth, out, "clip"), "xclip": _train(synth, out, "xclip", model={"method": "xclip"})}


def _video(synth: Path, i: int = 0) -> str:
    return str(synth / (synth / "val.txt").read_text().splitlines()[i].split()[0])


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _predict_json(capsys, *argv) -> list[dict]:
    code, out, err = _cli(capsys, "predict", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# ---------------------------------------------------------------------- item 4: wrong config


def test_eval_with_another_methods_config_names_the_method(runs, capsys):
    code, _, err = _cli(capsys, "eval", "-c", runs["clip"] / "config.yaml",
                        "--checkpoint", runs["xclip"] / "checkpoints" / "last", "name=wrong")
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("vclip eval: error: --checkpoint ")
    assert "holds a 'xclip' model, but the config's model.method is 'clip'" in line


def test_eval_with_other_arch_and_frames_names_differences_and_tensors(runs, capsys):
    code, _, err = _cli(capsys, "eval", "-c", runs["xclip"] / "config.yaml", "--checkpoint",
                        runs["xclip"] / "checkpoints" / "last", "model.arch=small", "data.num_frames=8",
                        "name=wrong")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert 3 <= len(lines) <= 4, err  # a few lines, not the 78 of a RuntimeError
    assert ("it was trained with model.arch='tiny', data.num_frames=4; "
            "this config has model.arch='small', data.num_frames=8") in lines[0]
    missing = next(x for x in lines[1:] if "missing from the checkpoint" in x)
    shaped = next(x for x in lines[1:] if "of another shape" in x)
    # tiny has 2 vision blocks, small 4: blocks 2 and 3 (of vision and text) are missing
    assert missing.strip().startswith("64 tensor(s)") and "clip.visual.transformer.resblocks.2." in missing
    assert missing.count(", ") + 1 == 5 and missing.endswith("and 59 more")  # at most 5 names
    assert "clip.visual.conv1.weight (64, 3, 8, 8) vs (192, 3, 8, 8)" in shaped


def test_load_model_state_lists_missing_unexpected_and_misshaped():
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    del state["0.weight"]
    state["1.weight"] = torch.zeros(3, 2)
    for i in range(7):
        state[f"extra.{i}"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state, "CK", context=" (why)")
    lines = str(info.value).splitlines()
    assert lines[0] == "CK: the checkpoint's weights do not fit the model (why)"
    assert lines[1].strip() == "1 tensor(s) of the model missing from the checkpoint: 0.weight"
    assert lines[2].strip() == ("7 tensor(s) of the checkpoint not in the model: "
                                "extra.0, extra.1, extra.2, extra.3, extra.4 and 2 more")
    assert lines[3].strip() == "1 tensor(s) of another shape (checkpoint vs model): 1.weight (3, 2) vs (2, 2)"
    before = model[2].weight.clone()
    good = {k: v + 1 for k, v in model.state_dict().items()}
    load_model_state(model, good, "CK")
    assert torch.equal(model[2].weight, before + 1)


def test_resume_from_a_checkpoint_with_a_misshaped_tensor_is_a_checkpoint_error(runs, tmp_path):
    """The trainer's restore goes through load_model_state: wrong shape and extra key are named."""
    src = runs["clip"] / "checkpoints" / "last"
    model_state, train_state, meta = load_checkpoint(src)
    model_state["clip.visual.proj"] = torch.zeros(3, 3)
    model_state["not.a.weight"] = torch.zeros(1)
    bad = CheckpointManager(tmp_path / "src").save("last", model_state=model_state, train_state=train_state,
                                                  meta={k: v for k, v in meta.items() if k not in ("files", "tag")})
    cfg = load_config([str(runs["clip"] / "config.yaml")], ["name=resumed", f"output_dir={tmp_path}"])
    with pytest.raises(CheckpointError) as info:
        train(cfg, resume=str(bad))
    msg = str(info.value)
    assert msg.startswith(f"--resume {bad}: the checkpoint's weights do not fit the model")
    assert "1 tensor(s) of the checkpoint not in the model: not.a.weight" in msg
    assert "clip.visual.proj (3, 3) vs (64, 32)" in msg
    assert len(msg.splitlines()) == 3


# ----------------------------------------------------------------- item 8: predict arguments


def test_predict_overrides_anywhere_on_the_line(synth, runs, capsys, caplog):
    ck = runs["clip"] / "checkpoints" / "last"
    video = _video(synth)
    plain = _predict_json(capsys, video, "--checkpoint", ck, "--labels", LABELS)
    with caplog.at_level(logging.WARNING, logger="vclip"):
        after = _predict_json(capsys, video, "--checkpoint", ck, "--labels", LABELS, "data.num_frames=8")
        before = _predict_json(capsys, "data.num_frames=8", video, "--checkpoint", ck, "--labels", LABELS)
    assert after == before and [i["video"] for i in after] == [video]
    assert after != plain  # 8 frames were sampled: other probabilities
    warned = [r.getMessage() for r in caplog.records if "this config has data.num_frames=8" in r.getMessage()]
    assert len(warned) == 2 and "trained with data.num_frames=4" in warned[0]
    # an override is parsed as one (a typo is a config error, not a missing video)
    code, _, err = _cli(capsys, "predict", video, "--checkpoint", ck, "--labels", LABELS, "data.num_frame=8")
    assert code == 2 and "unknown config key 'data.num_frame'; did you mean 'data.num_frames'?" in err


def test_predict_video_named_like_an_override_and_missing_video(synth, runs, capsys, tmp_path, monkeypatch):
    ck = runs["clip"] / "checkpoints" / "last"
    shutil.copyfile(_video(synth), tmp_path / "x=1.mp4")
    monkeypatch.chdir(tmp_path)
    (item,) = _predict_json(capsys, "x=1.mp4", "--checkpoint", ck, "--labels", LABELS)
    assert item["video"] == "x=1.mp4" and len(item["top"]) == 4
    code, out, err = _cli(capsys, "predict", "x=1.mp4", "nope.mp4", "--checkpoint", ck, "--labels", LABELS)
    assert code == 2 and out == ""
    assert err.strip() == "vclip predict: error: VIDEO nope.mp4: no such file or directory"


@pytest.mark.parametrize("args, message", [
    (["--labels", "a,b", "--top-k", "0"], "--top-k: must be >= 1, got 0"),
    (["--labels", "a,b", "--top-k", "-3"], "--top-k: must be >= 1, got -3"),
    (["--labels", "a,b,a"], "--labels: the class 'a' is given twice (class names must be distinct)"),
])
def test_predict_rejects_bad_arguments_before_any_work(synth, capsys, tmp_path, args, message):
    """Checked before the checkpoint is read: a checkpoint that does not exist is not reached."""
    code, _, err = _cli(capsys, "predict", _video(synth), "--checkpoint", tmp_path / "nothing", *args)
    assert code == 2 and err.strip() == f"vclip predict: error: {message}"


def test_predict_duplicate_in_labels_file(synth, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\ncat\n")
    code, _, err = _cli(capsys, "predict", _video(synth), "--labels-file", labels)
    assert code == 2 and f"--labels-file {labels}: the class 'cat' is given twice" in err


def test_predict_checkpoint_path_errors(synth, runs, capsys):
    code, _, err = _cli(capsys, "predict", _video(synth), "--labels", "a,b",
                        "--checkpoint", runs["clip"] / "checkpoints" / "lsat")
    assert code == 2
    assert err.strip() == (f"vclip predict: error: --checkpoint {runs['clip'] / 'checkpoints' / 'lsat'}: "
                           "no such file or directory")
    code, _, err = _cli(capsys, "eval", "--checkpoint", runs["clip"])
    assert code == 2 and "a run directory, not a checkpoint" in err
    assert str(runs["clip"] / "checkpoints" / "last") in err


# -------------------------------------------------- item 9: no train state, export, pretrained


def test_eval_and_predict_without_train_state(synth, runs, capsys, tmp_path):
    """A checkpoint folder holding only model.safetensors and meta.json (no train_state.pt, no run
    directory around it) evaluates with its stored config and predicts as the original does."""
    src = runs["clip"] / "checkpoints" / "last"
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.safetensors", "meta.json"):
        shutil.copyfile(src / name, lone / name)
    video = _video(synth)
    assert _predict_json(capsys, video, "--checkpoint", lone, "--labels", LABELS) == \
        _predict_json(capsys, video, "--checkpoint", src, "--labels", LABELS)
    code, out, err = _cli(capsys, "eval", "--checkpoint", lone, f"output_dir={tmp_path}", "name=lone-eval")
    assert code == 0, err
    got = json.loads((tmp_path / "lone-eval" / "results_eval.json").read_text())
    expected = json.loads((runs["clip"] / "results.json").read_text())
    assert got["num_videos"] == 48 and got["top1"] == expected["top1"] and got["confusion"] == expected["confusion"]


def test_export_writes_an_inference_checkpoint_that_eval_and_predict_accept(synth, runs, capsys, tmp_path):
    src = runs["xclip"] / "checkpoints" / "last"
    out = tmp_path / "shared" / "xclip-tiny"
    code, stdout, err = _cli(capsys, "export", src, out)
    assert code == 0, err
    assert stdout.startswith(f"exported {src} to {out}: model.safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["xclip-tiny"]  # no temporary folder left
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["architecture"]["clip"]["vision"]["width"] == 64 and meta["architecture"]["num_frames"] == 4
    assert meta["method"] == "xclip" and meta["step"] == 1 and meta["exported_from"] == str(src)
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["method"] == "xclip"

    video = _video(synth, 5)
    assert _predict_json(capsys, video, "--checkpoint", out, "--labels", LABELS) == \
        _predict_json(capsys, video, "--checkpoint", src, "--labels", LABELS)
    code, _, err = _cli(capsys, "eval", "--checkpoint", out, f"output_dir={tmp_path}", "name=exported-eval")
    assert code == 0, err
    got = json.loads((tmp_path / "exported-eval" / "results_eval.json").read_text())
    expected = json.loads((runs["xclip"] / "results.json").read_text())
    assert got["top1"] == expected["top1"] and got["confusion"] == expected["confusion"]

    # nothing written over; an export cannot be resumed
    code, _, err = _cli(capsys, "export", src, out)
    assert code == 2 and "exists and is not an empty folder" in err
    cfg = load_config([str(out / "config.yaml")], ["name=from-export", f"output_dir={tmp_path}"])
    with pytest.raises(CheckpointError, match="holds no training state"):
        train(cfg, resume=str(out))


def test_predict_run_trained_from_pretrained_weights(synth, capsys, tmp_path):
    """model.pretrained = a local tiny CLIP, model.arch left at its default (ViT-B-16): predict
    rebuilds the tiny architecture; once the weights are gone, the run's checkpoint says so and
    its export still works."""
    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import save_clip

    torch.manual_seed(1)
    save_clip(CLIP(get_config("tiny")), tmp_path / "tiny-clip")
    run = _train(synth, tmp_path, "pre", model={"pretrained": str(tmp_path / "tiny-clip"), "arch": "ViT-B-16"},
                 data={"val_list": None})
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["arch"] == "ViT-B-16"
    ck = run / "checkpoints" / "last"
    video = _video(synth, 9)
    direct = _predict_json(capsys, video, "--checkpoint", ck, "--labels", LABELS)
    code, _, err = _cli(capsys, "export", ck, tmp_path / "exported")
    assert code == 0, err

    shutil.rmtree(tmp_path / "tiny-clip")
    assert _predict_json(capsys, video, "--checkpoint", tmp_path / "exported", "--labels", LABELS) == direct
    code, _, err = _cli(capsys, "predict", video, "--checkpoint", ck, "--labels", LABELS)
    assert code == 2 and "Traceback" not in err
    assert f"model.pretrained={tmp_path / 'tiny-clip'}, which cannot be read here" in err
    assert f"vclip export {ck} OUT" in err


# ------------------------------------------ issue 13, item 4: predict names the right class


def _known_answer_checkpoint(runs, out: Path, names: list[str], target: int, scale: float) -> list[float]:
    """A CLIP-mean checkpoint whose every video scores ``names[target]`` highest, saved with
    ``save_checkpoint`` plus its config: the image tower's final LayerNorm outputs a constant
    (weight 0, bias e_0) and row 0 of the projection is the normalised text embedding of the
    target class, so the video embedding IS that text embedding whatever the frames. Returns the
    class probabilities, computed here from the text tower alone: softmax(scale · cos(t_target, t_c))."""
    import torch.nn.functional as F

    from vclip.engine.checkpoint import save_checkpoint
    from vclip.engine.inference import open_checkpoint
    from vclip.methods import build_method

    src = open_checkpoint(runs["clip"] / "checkpoints" / "last")
    cfg = load_config([str(runs["clip"] / "config.yaml")])
    method = build_method(cfg)
    load_model_state(method, src.state, "test")
    method.eval()
    with torch.no_grad():
        text = F.normalize(method.encode_texts(names).float(), dim=-1)  # templates ["{}"]: the bare name
    state = {k: v.clone() for k, v in src.state.items()}
    state["clip.visual.ln_post.weight"].zero_()
    state["clip.visual.ln_post.bias"].zero_()
    state["clip.visual.ln_post.bias"][0] = 1.0
    state["clip.visual.proj"][0] = text[target]
    state["clip.logit_scale"].fill_(float(torch.tensor(scale).log()))
    save_checkpoint(out, state, meta={k: v for k, v in src.meta.items() if k not in ("tag",)})
    shutil.copyfile(runs["clip"] / "config.yaml", out / "config.yaml")
    return (scale * text[target] @ text.t()).double().softmax(-1).tolist()


@pytest.mark.parametrize("target", [2, 0])
def test_predict_names_the_class_the_checkpoint_scores_highest(synth, runs, capsys, tmp_path, target):
    """On a checkpoint built to give a known answer, predict names that class first, with the
    probability computed independently; every ranked class carries its own probability. A
    predict that ignores --checkpoint, or names classes off by one, fails."""
    names = LABELS.split(",")
    expected = _known_answer_checkpoint(runs, tmp_path / "known", names, target, scale=30.0)
    assert max(range(len(names)), key=expected.__getitem__) == target and expected[target] > 0.5
    items = _predict_json(capsys, _video(synth, 0), _video(synth, 7), "--checkpoint", tmp_path / "known",
                          "--labels", LABELS, "--top-k", "4")
    assert len(items) == 2
    for item in items:
        top = item["top"]
        assert top[0]["class"] == names[target]
        assert sorted(t["class"] for t in top) == sorted(names)
        for t in top:
            assert t["probability"] == pytest.approx(expected[names.index(t["class"])], abs=2e-4), t


def test_predict_refuses_non_finite_weights(synth, runs, capsys, tmp_path):
    """NaN weights give NaN scores, and argmax of NaN scores still names a class: refused instead."""
    from safetensors.torch import load_file, save_file

    from vclip.io import sha256_file

    bad = tmp_path / "nan"
    shutil.copytree(runs["clip"] / "checkpoints" / "last", bad)
    state = load_file(bad / "model.safetensors")
    key = sorted(k for k in state if k.endswith("proj.weight"))[0]
    state[key][0, 0] = float("nan")
    save_file(state, bad / "model.safetensors")
    meta = json.loads((bad / "meta.json").read_text())  # a consistent checkpoint, written by another tool
    meta["files"]["model.safetensors"] = {"bytes": (bad / "model.safetensors").stat().st_size,
                                          "sha256": sha256_file(bad / "model.safetensors")}
    (bad / "meta.json").write_text(json.dumps(meta))
    code, out, err = _cli(capsys, "predict", _video(synth), "--labels", LABELS, "--checkpoint", bad)
    assert code == 2 and out == ""
    assert "refusing to predict with non-finite weights" in err and key.split(".")[-2] in err
