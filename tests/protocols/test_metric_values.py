"""Protocol metric values pinned against independent computations (not only range-checked): an
evaluation sub-run's top-1 recomputed from per-video scores of the checkpoint it names, and each
dataset's mean ± std recomputed by hand from the sub-runs' values in ``results.json``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vclip.config import load_config
from vclip.engine import data as run_data
from vclip.engine.checkpoint import load_checkpoint
from vclip.engine.distributed import DistInfo
from vclip.engine.evaluate import evaluate_method
from vclip.methods import build_method, make_vocabulary
from vclip.protocols.runner import ProtocolRun, load_data_spec, run_zero_shot


def test_zero_shot_values_equal_independent_computations(tmp_path, synth_protocol_data, tiny_config):
    data = load_data_spec(synth_protocol_data / "spec.yaml")
    # a larger LR than the base config's so the 2 training steps move the model away from its init
    run = ProtocolRun(run_dir=tmp_path / "zs", data=data, config_files=[str(tiny_config)],
                      overrides=["train.lr=0.05"])
    res = run_zero_shot(run, "k400", ["hmdb51", "ucf101"])
    saved = json.loads((tmp_path / "zs" / "results.json").read_text())
    subs = saved["sub_runs"]

    # every dataset's summary: mean and population std (ddof 0) of its 3 splits' top-1, by hand
    for ds in ("hmdb51", "ucf101"):
        vals = [subs[f"zs_{ds}_split{s}"]["top1"] for s in (1, 2, 3)]
        mean = sum(vals) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3)
        got = saved["summary"][ds]
        assert got["values"] == vals
        assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["std"] == pytest.approx(std, abs=1e-12)
        assert res["summary"][ds]["mean"] == got["mean"]
    assert len({subs[f"zs_{ds}_split{s}"]["top1"] for ds in ("hmdb51", "ucf101") for s in (1, 2, 3)}) > 1

    # each evaluation sub-run's top-1: the trained checkpoint loaded by hand, its per-video scores'
    # argmax against the annotation's labels
    ckpt = run.checkpoint_of("zs_train")
    state = load_checkpoint(ckpt)[0]
    for ds in ("hmdb51", "ucf101"):
        for s in (1, 2, 3):
            sub = subs[f"zs_{ds}_split{s}"]
            assert sub["checkpoint"] == ckpt
            cfg = load_config([str(tiny_config)], [
                f"data.root={data[ds].root}", f"data.labels={sub['labels']}", f"data.val_list={sub['annotation']}"])
            names = run_data.class_names(cfg)
            method = build_method(cfg)
            method.load_state_dict(state)
            out = evaluate_method(method, run_data.eval_dataset(cfg, names), make_vocabulary(cfg, names), cfg,
                                  DistInfo(0, 1, 0, torch.device("cpu")), return_scores=True)
            lines = [ln.split() for ln in open(sub["annotation"]).read().splitlines() if ln.strip()]
            order = np.argsort(out["indices"])
            labels = np.asarray([int(ln[-1]) for ln in lines])
            predicted = out["scores"][order].argmax(1)
            assert len(predicted) == len(labels) == sub["num_videos"]
            assert sub["top1"] == pytest.approx(float(np.mean(predicted == labels)), abs=1e-12), (ds, s)
