"""ViLT-CLIP through ``vclip run``: base-to-novel on the synthetic protocol data (tiny CLIP, 2
steps), the learned prompts scoring the novel classes' names."""

from __future__ import annotations

import json

from vclip.cli import main


def test_vilt_base_to_novel_through_vclip_run(tmp_path, synth_protocol_data, tiny_config):
    out = tmp_path / "b2n"
    rc = main(["run", "base-to-novel", "model.method=vilt", "model.options.prompt_length=2",
               "--data", str(synth_protocol_data / "spec.yaml"), "--out", str(out), "-c", str(tiny_config),
               "--datasets", "hmdb51", "--seeds", "1", "--shots", "2"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    subs = res["sub_runs"]
    base, novel = subs["b2n_hmdb51_s1_base"], subs["b2n_hmdb51_s1_novel"]
    assert base["num_classes"] == novel["num_classes"] == 3
    v = res["summary"]["hmdb51"]
    b, n = v["base"]["mean"], v["novel"]["mean"]
    assert 0 <= b <= 1 and 0 <= n <= 1
    assert "| vilt |" in (out / "table.md").read_text()
    # the trained run is ViLT-CLIP: both loss terms logged, loss = ce + 8 · scenario
    steps = [json.loads(x) for x in (out / "b2n_hmdb51_s1" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps and all(abs(s["loss"] - (s["ce"] + 8.0 * s["scenario"])) < 1e-4 * s["loss"] for s in steps)
