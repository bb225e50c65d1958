"""``vclip describe``: every argument is checked before any file is read or request sent (one
error line naming the flag, exit 2); the client refuses a base URL that is not one; "after 1
attempt" reads right."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_openai import FakeOpenAI  # noqa: E402
from vclip.cli import main  # noqa: E402
from vclip.text import commands as text_commands  # noqa: E402
from vclip.text.llm import ChatClient, LLMError  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a request was sent before the arguments were checked")

    monkeypatch.setattr("urllib.request.urlopen", refuse)


def _base(tmp_path, labels="missing-labels.csv"):
    # a label file that does not exist: an argument error must be reported before it is read
    return ["describe", "--kind", "ost-spatio", "--labels", str(tmp_path / labels), "--out", str(tmp_path / "o.json"),
            "--model", "m", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]


@pytest.mark.parametrize("extra, needle", [
    (["--base-url", "notaurl"], "--base-url: base URL 'notaurl' is not an http:// or https:// URL with a host"),
    (["--base-url", "localhost:8000/v1"], "--base-url: base URL 'localhost:8000/v1' is not an http:// or https://"),
    (["--base-url", "ftp://example.com/v1"], "is not an http:// or https:// URL"),
    (["--base-url", "http:///v1"], "is not an http:// or https:// URL with a host"),
    (["--base-url", "http://localhost:99999/v1"], "--base-url: base URL 'http://localhost:99999/v1' is not a valid URL"),
    (["--base-url", "http://local host/v1"], "contains white space"),
    (["--base-url", ""], "--base-url: no base URL"),
    (["--model", ""], "--model: no model name"),
    (["--retries", "-1"], "--retries must be >= 0, got -1"),
    (["-n", "0"], "-n/--num must be >= 1, got 0"),
    (["--top-k", "0"], "--top-k must be >= 1, got 0"),
    (["--max-units", "0"], "--max-units must be >= 1"),
    (["--max-reasks", "-2"], "--max-reasks must be >= 0"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    (["--timeout", "0"], "--timeout must be a finite number > 0, got 0.0"),
    (["--backoff", "-1"], "--backoff must be a finite number >= 0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["--kind", "alt-corpus", "--format", "official"], "--format official: OST's format holds per-class lists"),
])
def test_bad_arguments_fail_up_front(tmp_path, capsys, no_network, extra, needle):
    assert main(_base(tmp_path) + extra) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vclip describe: error: ") and needle in lines[0], err
    assert "missing-labels" not in err and not (tmp_path / "cache").exists() and not (tmp_path / "o.json").exists()


def test_top_k_beyond_the_classes_fails_before_the_clip_is_built(tmp_path, capsys, monkeypatch, no_network):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")

    def no_clip(args):
        raise AssertionError("CLIP built before --top-k was checked")

    monkeypatch.setattr(text_commands, "_similarity_clip", no_clip)
    argv = _base(tmp_path, "labels.txt") + ["--kind", "moted-discriminative", "--top-k", "3"]
    assert main(argv) == 2
    assert "--top-k 3: must be between 1 and the number of classes - 1 (2)" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["notaurl", "localhost:8000/v1", "file:///etc/passwd", "http://h:x/v1"])
def test_client_refuses_a_base_url_that_is_not_one(url):
    with pytest.raises(LLMError, match="base URL"):
        ChatClient(url, "m")


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "http://localhost:8000/v1", "http://127.0.0.1:1234",
                                 "http://[::1]:8080/v1/"])
def test_client_accepts_real_base_urls(url):
    assert ChatClient(url, "m").base_url == url.rstrip("/")


def test_client_refuses_negative_retries_and_zero_timeout():
    with pytest.raises(LLMError, match="max_retries"):
        ChatClient("http://localhost/v1", "m", max_retries=-1)
    with pytest.raises(LLMError, match="timeout"):
        ChatClient("http://localhost/v1", "m", timeout=0)


@pytest.mark.parametrize("retries, said", [(0, "giving up after 1 attempt;"), (1, "giving up after 2 attempts;")])
def test_giving_up_counts_attempts_in_good_english(tmp_path, retries, said):
    with FakeOpenAI() as server:
        server.fail_if = lambda msgs: True
        c = ChatClient(server.url, "m", max_retries=retries, backoff_base=0.0, cache_dir=tmp_path)
        with pytest.raises(LLMError) as e:
            c.chat([{"role": "user", "content": "hello"}])
    assert said in str(e.value) and len(server.requests) == retries + 1
