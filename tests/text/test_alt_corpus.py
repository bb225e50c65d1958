"""ALT's global entity corpus (``vclip describe --kind alt-corpus``) against a local fake
OpenAI-compatible server: units deduplicated across classes with every class remembered, label
words and body parts added, the description chosen among three candidates, categories, resumable
through the response cache, and the corpus read back by ALT."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai import FakeOpenAI, default_answer  # noqa: E402
from vclip.cli import main  # noqa: E402
from vclip.text.corpus import BODY_PARTS, label_units, normalise_unit, read_corpus  # noqa: E402

CLASSES = ["riding a bike", "riding a horse", "Playing the cello"]


def answer(messages):
    last = messages[-1]["content"]
    if m := re.search(r"roles of an action (.+?)\? List", last):
        cls = m.group(1)
        animal = {"riding a bike": "Bicycle", "riding a horse": "horse"}.get(cls, "cello")
        # shared units ("Saddle", "hands") in two spellings; a repeated unit within one answer
        return f"1. {animal}\n2. **Saddle**\n3. saddle\n4. Hands\n5. road." if "riding" in cls else \
            "- cello\n- bow\n- stage"
    if m := re.search(r"Concisely describe what an action (.+?) looks like", last):
        return f"{m.group(1)} as it looks."
    if m := re.search(r"Concisely list potential explanations for (.+)", last):
        return f"1. {m.group(1)} sense one\n2. {m.group(1)} sense two"
    if "Answer with the number only" in last:
        return "The best is 1." if "saddle" in last.lower() else "3"
    if "an object, a body part, a scene or a motion" in last:
        unit = re.search(r"Is (.+?) \(in an action", last).group(1).lower()
        return {"road": "Scene.", "stage": "scene", "riding": "motion", "playing": "Motion"}.get(unit, "Object")
    return default_answer(messages)


def run(tmp_path, server, out, extra=()):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,name\n" + "".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    return main(["describe", "--kind", "alt-corpus", "--labels", str(labels), "--out", str(out),
                 "--base-url", server.url, "--model", "m", "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress", "--backoff", "0.01", "--retries", "0", *extra])


def test_corpus_is_deduplicated_tagged_and_resumable(tmp_path, capsys):
    out = tmp_path / "corpus.json"
    with FakeOpenAI(answer) as server:
        # first attempt dies on the cello's units: nothing is written, the answers so far are cached
        server.fail_if = lambda msgs: "cello" in msgs[-1]["content"]
        assert run(tmp_path, server, out) != 0
        assert not out.exists()
        first = len(server.requests)
        server.fail_if = None
        capsys.readouterr()
        assert run(tmp_path, server, out) == 0
        resumed = server.requests[first:]
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    doc = json.loads(out.read_text())
    ents = {normalise_unit(e["unit"]): e for e in doc["entities"]}
    # every unit once, first spelling kept, all the classes that produced it
    assert len(ents) == len(doc["entities"]) == doc["size"] == report["entities"]
    assert ents["saddle"]["unit"] == "Saddle"
    assert ents["saddle"]["classes"] == ["riding a bike", "riding a horse"]
    assert ents["riding"]["classes"] == ["riding a bike", "riding a horse"]   # a label word
    assert "a" not in ents and "the" not in ents                               # stop words dropped
    assert ents["hands"]["classes"] == ["riding a bike", "riding a horse"] and ents["hands"]["category"] == "body"
    assert all(normalise_unit(p) in ents for p in BODY_PARTS)
    expected = {"bicycle", "saddle", "hands", "road", "riding", "bike", "horse", "cello", "bow", "stage", "playing"}
    assert set(ents) == expected | {normalise_unit(p) for p in BODY_PARTS}
    # categories asked per unit (body parts are not asked)
    assert (ents["road"]["category"], ents["stage"]["category"], ents["riding"]["category"]) == \
        ("scene", "scene", "motion")
    assert ents["bow"]["category"] == "object"
    # candidate selection: the judge's number picks among the three prompts' answers
    assert ents["saddle"]["description"] == "Saddle as it looks."
    assert ents["bow"]["description"] == "bow is a thing seen in videos."
    # resumed: no request of the first attempt was sent again
    sent_before = [json.dumps(m) for m in server.requests[:first] if "cello" not in m[-1]["content"]]
    assert not set(sent_before) & {json.dumps(m) for m in resumed}
    assert read_corpus(out) == doc["entities"]
    assert doc["generator"]["select"] == "llm" and "base_url" in doc["generator"]


def test_label_units():
    assert label_units("Playing the cello (instrument)") == ["playing", "cello"]
    assert label_units("pull-ups") == ["pull", "ups"]


def test_alt_reads_the_corpus(tmp_path):
    import torch

    from vclip.backbone import CLIP, get_config
    from vclip.methods.alt import ALT
    from vclip.methods.base import Vocabulary

    out = tmp_path / "corpus.json"
    with FakeOpenAI(answer) as server:
        assert run(tmp_path, server, out, ["--select", "first"]) == 0
    doc = json.loads(out.read_text())
    torch.manual_seed(0)
    m = ALT(CLIP(get_config("tiny")), num_frames=2, options=ALT.parse_options({"r": 1, "corpus": str(out)}))
    sentences = m.entity_sentences(Vocabulary(tuple(CLASSES)))
    assert len(sentences) == doc["size"]  # the label words and body parts are already in the corpus
    assert "Saddle: Saddle is a thing seen in videos." in sentences


@pytest.mark.parametrize("content, match", [
    ({"format": "x"}, "not a corpus file"),
    ({"format": "vclip-corpus/1", "entities": []}, "missing or empty"),
    ({"format": "vclip-corpus/1", "entities": [{"unit": ""}]}, r"entities\[0\]"),
])
def test_bad_corpus_files(tmp_path, content, match):
    from vclip.errors import AnnotationError

    p = tmp_path / "c.json"
    p.write_text(json.dumps(content))
    with pytest.raises(AnnotationError, match=match):
        read_corpus(p)
