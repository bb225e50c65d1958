"""docs/methods/ost.md "OST without an LLM service": the hand-written descriptor files shown there
load as written and score a video with OST."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vclip.config import RunConfig, from_dict
from vclip.data.annotations import write_label_csv
from vclip.methods import build_method, make_vocabulary
from vclip.text.descriptors import read_descriptors

DOC = Path(__file__).parents[2] / "docs" / "methods" / "ost.md"
NAMES = ["juggling balls", "riding a bike"]


def _json_blocks() -> list[dict]:
    section = DOC.read_text().split("## OST without an LLM service", 1)[1].split("\n## ", 1)[0]
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, flags=re.S)]


def test_the_documented_files_load_and_score(tmp_path):
    spatio, temporal, named = _json_blocks()
    for name, doc in (("spatio", spatio), ("temporal", temporal), ("named", named)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    write_label_csv(tmp_path / "labels.csv", NAMES)
    cfg = from_dict(RunConfig, {
        "model": {"method": "ost", "arch": "tiny", "options": {
            "spatial_descriptors": str(tmp_path / "spatio.json"),
            "temporal_descriptors": str(tmp_path / "temporal.json"), "num_descriptors": 2}},
        "data": {"labels": str(tmp_path / "labels.csv"), "num_frames": 2, "image_size": 32}})
    vocab = make_vocabulary(cfg, NAMES)
    assert vocab.descriptors[1] == tuple(spatio["1"] + temporal["1"])
    torch.manual_seed(0)
    m = build_method(cfg).eval()
    with torch.no_grad():
        logits = m(torch.randn(1, 2, 3, 32, 32), vocab).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    # the name-keyed vclip file equals the index-keyed one, whatever the label order
    by_name = read_descriptors(tmp_path / "named.json", NAMES[::-1], num_per_class=2)
    by_index = read_descriptors(tmp_path / "spatio.json", NAMES, num_per_class=2)
    assert by_name.texts()[::-1] == by_index.texts() and by_name.kind == "ost-spatio"
