"""Each protocol end to end on the synthetic datasets (tiny CLIP, 2 steps per training sub-run)."""

from __future__ import annotations

from pathlib import Path

import json

import yaml

import pytest
import torch

from vclip.cli import main
from vclip.data.annotations import read_label_csv
from vclip.protocols.runner import (
    ProtocolRun, load_data_spec, run_base_to_novel, run_few_shot, run_fully_supervised, run_zero_shot,
)


def _run(tmp_path, data, cfg, name, **kw) -> ProtocolRun:
    return ProtocolRun(run_dir=tmp_path / name, data=load_data_spec(data / "spec.yaml"), config_files=[str(cfg)],
                       **kw)


def test_fully_supervised(tmp_path, synth_protocol_data, tiny_config):
    run = _run(tmp_path, synth_protocol_data, tiny_config, "sup")
    res = run_fully_supervised(run, ["k400"], [(1, 1), (2, 3)])
    s = res["summary"]["k400"]
    assert set(s) == {"1x1", "2x3"}
    assert all(0 <= v["top1"] <= 1 and 0 <= v["top5"] <= 1 for v in s.values())
    assert run.sub_runs["sup_k400_2x3"]["views"]["clips"] == 2
    assert "| K400 1x1 top-1 | K400 1x1 top-5 | K400 2x3 top-1 |" in res["table"]
    assert (tmp_path / "sup" / "table.md").exists()


def _count_sub_runs(monkeypatch) -> dict[str, int]:
    """Count the training and evaluation runs the protocol runner starts (the real ones still run)."""
    import vclip.engine.evaluate as evaluate_mod
    import vclip.engine.trainer as trainer_mod

    calls = {"train": 0, "evaluate": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(trainer_mod, "train")
    counted(evaluate_mod, "evaluate")
    return calls


def test_few_shot_with_camelcase_and_resume(tmp_path, synth_protocol_data, tiny_config, monkeypatch):
    calls = _count_sub_runs(monkeypatch)
    run = _run(tmp_path, synth_protocol_data, tiny_config, "fs", label_norm=["camelcase"])
    res = run_few_shot(run, ["hmdb51", "ucf101"], shots=[1, 2], seeds=[1])
    assert set(res["summary"]) == {"hmdb51", "ucf101"}
    assert set(res["summary"]["ucf101"]) == {1, 2}
    header = res["table"].splitlines()[2]
    assert header == "| Method | HMDB-51 K=1 | HMDB-51 K=2 | UCF-101 K=1 | UCF-101 K=2 |"
    # the generated 2-shot file: 2 videos per class of split 1's training list, with a manifest
    split = tmp_path / "fs" / "splits" / "ucf101" / "train1_few_shot_2_s1.txt"
    assert len(split.read_text().splitlines()) == 12
    manifest = json.loads(split.with_name(split.name + ".manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["counts"] == {"videos": 12, "classes": 6, "shots": 2}
    assert len(manifest["request"]["sources"][0]["sha256"]) == 64
    # UCF CamelCase → words, recorded in the results
    norm = [v for k, v in res["label_normalisation"].items() if k.startswith("ucf101")][0]
    assert norm["normalisation"] == ["camelcase"] and norm["changed"] == 6
    assert read_label_csv(norm["file"])[0] == "Circle Moving Right"
    assert calls["train"] == 4  # 2 datasets x 2 shot counts x 1 seed
    base_seed = yaml.safe_load(Path(tiny_config).read_text()).get("train", {}).get("seed", 1024)
    sub_cfg = yaml.safe_load((tmp_path / "fs" / "fs_hmdb51_k2_s1" / "config.yaml").read_text())
    assert sub_cfg["train"]["seed"] == base_seed + 1  # the seed's training seed: train.seed + 1
    # rerun: every sub-run is skipped (no training nor evaluation starts, no file of a sub-run is
    # rewritten) and the results are the same
    first = dict(calls)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "fs").rglob("*")
             if p.is_file() and p.parent != tmp_path / "fs"}
    assert len(files) > 4
    again = run_few_shot(_run(tmp_path, synth_protocol_data, tiny_config, "fs", label_norm=["camelcase"]),
                         ["hmdb51", "ucf101"], shots=[1, 2], seeds=[1])
    assert calls == first
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert again["table"] == res["table"]
    assert again["sub_runs"].keys() == res["sub_runs"].keys()


def test_few_shot_official_file_and_init_checkpoint(tmp_path, synth_protocol_data, tiny_config):
    """A ViFi-CLIP few-shot file is used as it is; training can start from another run's checkpoint."""
    data = synth_protocol_data
    lines = (data / "ann" / "hmdb51_train1.txt").read_text().splitlines()
    by_class: dict = {}
    for ln in lines:
        by_class.setdefault(ln.split()[1], []).append(ln)
    official = tmp_path / "train1_few_shot_{shots}.txt"
    (tmp_path / "train1_few_shot_2.txt").write_text("".join(f"{v[0]}\n{v[1]}\n" for v in by_class.values()))
    spec = (data / "spec.yaml").read_text()
    import yaml

    s = yaml.safe_load(spec)
    s["datasets"]["hmdb51"]["few_shot"] = str(official)
    for d in s["datasets"].values():
        for k in ("labels", "train", "val"):
            if k in d:
                d[k] = str(data / d[k])
        for sp in (d.get("splits") or {}).values():
            sp.update({k: str(data / v) for k, v in sp.items()})
        for p in d.get("pools") or []:
            p["list"] = str(data / p["list"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(s))
    first = ProtocolRun(run_dir=tmp_path / "a", data=load_data_spec(tmp_path / "spec.yaml"),
                        config_files=[str(tiny_config)], overrides=["model.method=xclip"])
    run_few_shot(first, ["hmdb51"], shots=[2], seeds=[1])
    ckpt = first.checkpoint_of("fs_hmdb51_k2_s1")
    # the second run starts from the whole first model, X-CLIP's own modules included (a near-zero LR
    # keeps its 2 steps from moving the weights)
    run = ProtocolRun(run_dir=tmp_path / "b", data=load_data_spec(tmp_path / "spec.yaml"),
                      config_files=[str(tiny_config)], init_checkpoint=ckpt,
                      overrides=["model.method=xclip", "train.lr=1e-12", "train.seed=7"])
    res = run_few_shot(run, ["hmdb51"], shots=[2], seeds=[1])
    assert res["splits"]["hmdb51_k2_s1"]["origin"] == "official"
    assert res["sub_runs"]["fs_hmdb51_k2_s1"]["init"] == str(Path(ckpt).resolve())
    from safetensors.torch import load_file

    a = load_file(str(Path(ckpt) / "model.safetensors"))
    b = load_file(str(Path(run.checkpoint_of("fs_hmdb51_k2_s1")) / "model.safetensors"))
    for k in ("mit.positional_embedding", "prompts_generator.alpha", "message_fc.0.weight", "clip.visual.proj"):
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_zero_shot(tmp_path, synth_protocol_data, tiny_config):
    run = _run(tmp_path, synth_protocol_data, tiny_config, "zs")
    res = run_zero_shot(run, "k400", ["hmdb51", "ucf101", "k600"], k600_seeds=[1, 2, 3], k600_classes=3)
    s = res["summary"]
    assert set(s) == {"hmdb51", "ucf101", "k600"} and all(v["n"] == 3 for v in s.values())
    m = res["k600_matching"]
    assert m["counts"]["new"] == 4 and m["counts"]["by_tier"] == {"exact": 6, "normalised": 1, "qualifier": 1}
    assert {r["k400"] for r in m["renamed"]} == {"Triangle-Shrinking", "diamond appearing"}
    draws = [read_label_csv(tmp_path / "zs" / "splits" / "k600" / f"ZS_split{i}_K600.csv") for i in (1, 2, 3)]
    assert all(len(d) == 3 and set(d) <= {"red star", "blue star", "hexagon", "cross"} for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # seeded draws differ
    assert res["table"].splitlines()[2] == "| Method | HMDB-51 | UCF-101 | K600 |"
    assert " ± " in res["table"].splitlines()[4]


def test_base_to_novel_and_report_cli(tmp_path, synth_protocol_data, tiny_config, capsys):
    run = _run(tmp_path, synth_protocol_data, tiny_config, "b2n")
    res = run_base_to_novel(run, ["hmdb51", "ucf101"], seeds=[1, 2], shots=2)
    for ds in ("hmdb51", "ucf101"):
        v = res["summary"][ds]
        b, n = v["base"]["mean"], v["novel"]["mean"]
        assert v["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n))
        assert run.sub_runs[f"b2n_{ds}_s1_base"]["num_classes"] == 3
        assert run.sub_runs[f"b2n_{ds}_s1_novel"]["num_classes"] == 3
    # each seed trains with train.seed + seed (the tiny config's train.seed, then 1 and 2 added)
    base_seed = yaml.safe_load(Path(tiny_config).read_text()).get("train", {}).get("seed", 1024)
    for s in (1, 2):
        sub_cfg = yaml.safe_load((tmp_path / "b2n" / f"b2n_hmdb51_s{s}" / "config.yaml").read_text())
        assert sub_cfg["train"]["seed"] == base_seed + s
    split = tmp_path / "b2n" / "splits" / "hmdb51" / "base_novel"
    assert len((split / "fs_base_s1_train.txt").read_text().splitlines()) == 6  # 2 shots x 3 base classes
    assert {int(ln.split()[1]) for ln in (split / "novel_val.txt").read_text().splitlines()} == {0, 1, 2}
    # `vclip run` resumes (all sub-runs done) and `vclip report` puts runs side by side
    rc = main(["run", "base-to-novel", "--data", str(synth_protocol_data / "spec.yaml"), "--out",
               str(tmp_path / "b2n"), "-c", str(tiny_config), "--datasets", "hmdb51,ucf101", "--seeds", "1,2",
               "--shots", "2"])
    assert rc == 0
    assert main(["report", str(tmp_path / "b2n"), str(tmp_path / "b2n"), "--out", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    assert "| Method | HMDB-51 base | HMDB-51 novel | HMDB-51 HM | UCF-101 base |" in out
    assert (tmp_path / "r.md").read_text().count("| clip |") == 2
