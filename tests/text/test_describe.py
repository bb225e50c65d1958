"""``vclip describe`` against a fake OpenAI-compatible server: parsing, retries, cache/resume,
key hygiene, every kind."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai import FakeOpenAI  # noqa: E402
from vclip.cli import main  # noqa: E402
from vclip.text.describe import DescribeError, describe, parse_items, parse_single  # noqa: E402
from vclip.text.descriptors import read_descriptors  # noqa: E402
from vclip.text.llm import ChatClient, LLMError  # noqa: E402

SECRET = "sk-test-SECRET-0123456789abcdef"
CLASSES = ["abseiling", "archery", "juggling balls", "surfing water", "playing cello"]


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def client(server, tmp_path, **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 5.0)
    return ChatClient(server.url, "fake-model", SECRET, params={"temperature": 0.7},
                      cache_dir=tmp_path / "cache", **kw)


def labels(tmp_path, names=CLASSES) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    return p


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, expected", [
    ("1. climber\n2. rope\n3. harness\n4. mountain", ["climber", "rope", "harness", "mountain"]),
    ("Here are 3 descriptors for archery:\n1) \"bow\"\n2) 'arrow'\n3) “target”.\nHope this helps!",
     ["bow", "arrow", "target"]),
    ("- **Bow**\n* arrow\n• target", ["Bow", "arrow", "target"]),
    ("bow, arrow, target", ["bow", "arrow", "target"]),
    ("Descriptors:\nbow\narrow\ntarget", ["bow", "arrow", "target"]),
    ("1. Step 1: Strap on the harness securely.\n2. Step 2: Land safely on the ground.",
     ["Strap on the harness securely", "Land safely on the ground"]),
    ("(1) bow\n(2) arrow", ["bow", "arrow"]),
])
def test_parse_items(text, expected):
    assert parse_items(text) == expected


def test_parse_single():
    assert parse_single("A: a quick hand movement.\n") == "a quick hand movement."
    assert parse_single("- Direction of motion\n- Hand position") == "Direction of motion; Hand position"


# ------------------------------------------------------------------------------------ client
@pytest.mark.parametrize("failure", [("429", 0), ("500",), ("malformed",), ("slow", 1.5)])
def test_client_retries(server, tmp_path, failure):
    server.script = [failure, failure]
    c = client(server, tmp_path, timeout=0.5)
    out = c.chat([{"role": "user", "content": "Please give me a long list of descriptors for action: x, 2 descriptors in total."}])
    assert parse_items(out) == ["x thing 1", "x thing 2"]
    assert len(server.requests) == 3 and c.requests == 3


def test_retry_after_is_honoured(server, tmp_path):
    server.script = [("429", 0.4)]
    c = client(server, tmp_path, backoff_base=0.0)
    t0 = time.monotonic()
    c.chat([{"role": "user", "content": "hello"}])
    assert time.monotonic() - t0 >= 0.39
    assert len(server.requests) == 2


def test_client_gives_up_and_never_shows_the_key(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.fail_if = lambda msgs: True
    c = client(server, tmp_path, max_retries=2)
    with pytest.raises(LLMError, match="giving up after 3 attempts") as e:
        c.chat([{"role": "user", "content": "hello"}])
    assert SECRET not in str(e.value) and SECRET not in caplog.text and SECRET not in repr(c)
    server.fail_if = None
    server.script = [("echo400",)]  # a server echoing the key in its error body
    with pytest.raises(LLMError) as e:
        c.chat([{"role": "user", "content": "other"}])
    assert "HTTP 400" in str(e.value) and SECRET not in str(e.value)
    assert server.auth[-1] == f"Bearer {SECRET}"


def test_cache_makes_reruns_free(server, tmp_path):
    c = client(server, tmp_path)
    a = describe("ost-spatio", CLASSES, c, n=4, progress=False)
    n_req = len(server.requests)
    assert n_req == len(CLASSES)
    c2 = client(server, tmp_path)
    b = describe("ost-spatio", CLASSES, c2, n=4, progress=False)
    assert len(server.requests) == n_req and c2.requests == 0 and c2.cache_hits == len(CLASSES)
    assert a.items == b.items
    assert a.items[0] == ["abseiling thing 1", "abseiling thing 2", "abseiling thing 3", "abseiling thing 4"]
    # a different model or parameter is a different request
    c3 = ChatClient(server.url, "fake-model", SECRET, params={"temperature": 0.2}, cache_dir=tmp_path / "cache")
    describe("ost-spatio", CLASSES[:1], c3, n=4, progress=False)
    assert len(server.requests) == n_req + 1


def test_wrong_count_is_reasked_then_reported(server, tmp_path):
    server.script = [("answer", "1. bow\n2. arrow")]  # too few: the corrective follow-up fixes it
    c = client(server, tmp_path)
    ds = describe("ost-spatio", ["archery"], c, n=4, progress=False)
    assert ds.items == [["archery part 1", "archery part 2", "archery part 3", "archery part 4"]]
    assert len(server.requests) == 2 and "exactly 4" in server.requests[1][-1]["content"]
    assert server.requests[1][-2] == {"role": "assistant", "content": "1. bow\n2. arrow"}
    too_many = "\n".join(f"{i}. x{i}" for i in range(1, 8))
    server.script = [("answer", too_many)] * 3
    with pytest.raises(DescribeError, match="class 'surfing water': the model returned 7 items, exactly 4"):
        describe("ost-spatio", ["surfing water"], c, n=4, progress=False, max_reasks=2)


def test_kinds(server, tmp_path):
    import torch

    from vclip.backbone import CLIP, get_config

    c = client(server, tmp_path)
    t = describe("ost-temporal", CLASSES, c, n=3, progress=False)
    assert t.items[1] == ["do archery stage 1", "do archery stage 2", "do archery stage 3"]
    m = describe("moted-conceptual", CLASSES, c, progress=False)
    assert m.items[2] == ["a motion typical of juggling balls."]
    first = next(r for r in server.requests if "juggling balls" in r[-1]["content"] and "concept" in r[-1]["content"])
    assert len(first) == 5 and "slapping" in first[0]["content"]          # two-shot
    torch.manual_seed(0)
    clip = CLIP(get_config("tiny")).eval()
    d = describe("moted-discriminative", CLASSES, c, top_k=2, clip=clip, progress=False)
    assert all(len(x) == 2 for x in d.items) and all(len(d.extra[n]["similar"]) == 2 for n in CLASSES)
    assert all(n not in d.extra[n]["similar"] for n in CLASSES)
    assert d.items[0][0].startswith("Speed of abseiling; Shape of ")
    a = describe("alt-entities", CLASSES[:2], c, progress=False)
    assert [e["unit"] for e in a.items[0]] == ["hands", "abseiling tool", "arena"]
    assert a.items[0][0]["description"] == "hands is a thing seen in videos."


def test_cli_key_never_written_or_logged(server, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    server.script = [("429", 0), ("500",), ("malformed",)]
    out = tmp_path / "out" / "spatio.json"
    args = ["describe", "--kind", "ost-spatio", "--labels", str(labels(tmp_path)), "--out", str(out),
            "--base-url", server.url, "--model", "fake-model", "--api-key-env", "MY_LLM_KEY",
            "--cache-dir", str(tmp_path / "cache"), "--backoff", "0.01", "--no-progress", "-n", "4"]
    assert main(args) == 0
    assert all(a == f"Bearer {SECRET}" for a in server.auth)              # the key was sent ...
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > len(CLASSES)
    for p in written:                                                     # ... and is nowhere else
        assert SECRET not in p.read_text(errors="replace"), p
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    ds = read_descriptors(out, CLASSES, num_per_class=4)
    doc = json.loads(out.read_text())
    assert doc["generator"]["model"] == "fake-model" and doc["generator"]["params"] == {"temperature": 0.7}
    assert "descriptors for action: {cls}" in doc["generator"]["prompts"]["user"]
    assert ds.items[3][0] == "surfing water thing 1"
    # the official format, readable by index
    off = tmp_path / "official.json"
    assert main(args[:6] + [str(off)] + args[7:] + ["--format", "official"]) == 0
    assert json.loads(off.read_text())["0"] == ds.items[0]


def test_cli_resume_after_failure(server, tmp_path):
    """Later classes fail for good: the run fails naming the error; the rerun against a healthy
    server repeats no finished request and writes what an uninterrupted run writes."""
    lab = labels(tmp_path)
    common = ["--labels", str(lab), "--base-url", server.url, "--model", "fake-model", "--backoff", "0.001",
              "--retries", "1", "--no-progress", "--kind", "ost-temporal", "-n", "3"]
    server.fail_if = lambda msgs: any(c in msgs[-1]["content"] for c in CLASSES[2:])
    out = tmp_path / "resumed.json"
    assert main(["describe", "--out", str(out), "--cache-dir", str(tmp_path / "c1")] + common) == 2
    assert not out.exists()
    first = [r[-1]["content"] for r in server.requests]
    server.fail_if = None
    server.requests.clear()
    assert main(["describe", "--out", str(out), "--cache-dir", str(tmp_path / "c1")] + common) == 0
    assert server.requests_for("abseiling") == 0 and server.requests_for("archery") == 0
    assert all(server.requests_for(c) == 1 for c in CLASSES[2:])
    assert len(first) == 2 + 2  # two finished classes, then the failing one tried twice
    ref = tmp_path / "uninterrupted.json"
    assert main(["describe", "--out", str(ref), "--cache-dir", str(tmp_path / "c2")] + common) == 0
    assert out.read_bytes() == ref.read_bytes()
