"""Tests for vclip.backbone.tokenizer (CLIP's BPE tokenizer).

The parity oracle is transformers' ``CLIPTokenizer`` built *from the same merge file* that vclip
ships (written into ``tmp_path`` in the Hugging Face vocab.json / merges.txt format), never from the
hub: without hub access ``from_pretrained("openai/...")`` can silently return a 3-entry vocabulary.
The oracle is itself checked against known OpenAI ids before use.

Hugging Face's CLIPTokenizer (tokenizers backend) does not run ftfy nor the double HTML unescape of
OpenAI's tokenizer; the oracle therefore receives the text after ``ftfy.fix_text`` and
``html.unescape`` twice (written out here, independent of vclip's ``clean_text``). Further known
HF deviations (final sigma, case-insensitive contractions, upper-case special tokens) are covered
by golden ids taken from OpenAI's reference tokenizer.
"""

from __future__ import annotations

import gzip
import html
import json
import random

import ftfy
import pytest
import torch

from vclip.backbone.tokenizer import (
    DEFAULT_BPE_PATH,
    Tokenizer,
    get_tokenizer,
    tokenize,
)
from vclip.errors import VclipError

SOT, EOT = 49406, 49407
CONTEXT = 77

# Ids produced by OpenAI CLIP's SimpleTokenizer (content only, no SOS/EOT).
GOLDEN = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "A Photo Of A Cat!": [320, 1125, 539, 320, 2368, 256],
    "a video of a person playing basketball.": [320, 1455, 539, 320, 2533, 1629, 3835, 269],
    "don't we're they've I'm you'll he'd it's": [
        847, 713, 649, 982, 889, 1200, 328, 880, 592, 1342, 797, 1896, 585, 568,
    ],
    "3.14159": [274, 269, 272, 275, 272, 276, 280],
    "playing guitar 🎸 in 東京": [1629, 5084, 22122, 530, 48338, 21078, 361],
    # ftfy: curly apostrophe -> ', ligature fi -> f i, full-width digits -> ASCII; html unescape
    "it’s a CAFÉ &amp; bar": [585, 568, 320, 15304, 261, 2411],
    "ﬁne １２３": [3797, 272, 273, 274],
    "Tom&#39;s  \n  café": [2435, 568, 15304],
    "&amp;amp;": [261],  # unescaped twice
    # a literal special token in the text is the special token
    "hello <|endoftext|> x": [3306, EOT, 343],
    # ... also in upper case, since OpenAI matches special tokens after lowercasing (HF matches
    # its added tokens case-sensitively before normalising, and BPE-encodes these)
    "<|STARTOFTEXT|>upper<|ENDOFTEXT|>": [SOT, 7067, EOT],
    # str.lower() applies the Greek final-sigma rule (HF's per-character lowercase does not)
    "ΟΔΟΣ": [138, 123, 138, 112, 138, 123, 139, 480],
    # the pre-tokenisation regex is case-insensitive: "'ſ" (long s) matches the contraction 's
    "'ſ": [6, 129, 379],
    "": [],
    "   \t\n ": [],
}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def _byte_symbols() -> list[str]:
    """GPT-2 byte symbols in vocabulary order (written independently of vclip's table)."""
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    moved = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(moved))]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    lines = gzip.decompress(DEFAULT_BPE_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + 49152 - 256 - 2]]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("hf_clip_tokenizer")
    (folder / "vocab.json").write_text(
        json.dumps({s: i for i, s in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    oracle = transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    # The oracle must really hold CLIP's vocabulary (the trap: a silent 3-entry fallback vocab).
    assert len(oracle) == 49408
    assert oracle("a photo of a cat")["input_ids"] == [SOT, 320, 1125, 539, 320, 2368, EOT]
    return oracle


def _openai_clean(text: str) -> str:
    """The cleaning OpenAI applies and HF's CLIPTokenizer lacks (HF does NFC, whitespace, lower)."""
    return html.unescape(html.unescape(ftfy.fix_text(text)))


# ----------------------------------------------------------------------------- parity corpus

_HAND = [
    "a photo of a cat",
    "a photo of a {}.",
    "A PHOTO OF A DOG",
    "CamelCaseWords and MiXeD cAsE",
    "playing basketball",
    "abseiling, air drumming; answering questions: applauding!",
    "Hello, world!!! What's up??",
    "punctuation ... --- ___ /// \\\\ ((brackets)) [x] {y} <z>",
    "quotes \"double\" 'single' `back`",
    "emails a.b@c.com and urls https://example.com/path?q=1&r=2",
    "numbers 0 1 22 333 4444 3.14 1,000,000 -5 +7 1e10 2024-01-31",
    "ordinals 1st 2nd 3rd 4th 21st",
    "it's don't we're they've I'm you'll he'd",
    "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "rock'n'roll o'clock y'all ma'am 'tis",
    "dangling ' apostrophe 's 't 're 've 'm 'll 'd",
    "café naïve résumé façade coöperate jalapeño",
    "Ångström Ölfarben Übermaß Straße ĳ œuvre",
    "Ελληνικά κείμενα και ρωσικий текст",
    "中文字符测试 日本語のテキスト 한국어 텍스트",
    "mixed中文and english混合text",
    "emoji 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🎸🎹",
    "math ∑ ∫ √ ∞ ≠ ≤ ≥ → ← ±",
    "currency $5 €10 £3 ¥100 ₹50",
    "arabic مرحبا hebrew שלום hindi नमस्ते thai สวัสดี",
    "combining e\u0301 a\u0308 n\u0303",
    "   leading and trailing spaces   ",
    "multiple     spaces\tand\ttabs\nand\nnewlines\r\nand crlf",
    "non\u00a0breaking\u2003em\u2009thin\u3000ideographic spaces",
    "zero\u200bwidth\u200cjoiner\u200dhere",
    "html &amp; &lt;tag&gt; &quot;q&quot; &#39;a&#39; &#x263A; &nbsp;x &copy; &eacute;",
    "double escaped &amp;amp; &amp;lt;b&amp;gt;",
    "curly ‘quotes’ and “double” it’s",
    "ligatures ﬁ ﬂ ﬀ and full-width ＡＢＣ １２３",
    "mojibake cafÃ© â€™",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "a",
    "!",
    "x" * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "hyphen-ated words and under_scores and dot.separated",
    "a video of a person doing push ups, slowly, in the gym.",
    "a video of a person {} while smiling at the camera".format("juggling balls"),
]

_WORDS = (
    "a an the of in on at with while video photo clip person people man woman child playing "
    "riding eating dancing jumping swimming throwing catching cooking skiing surfing guitar "
    "piano ball bike horse dog cat kitchen beach snow water street gym park "
    "Quickly SLOWLY Outdoors Indoors"
).split()
_FRAGMENTS = [
    ",", ".", "!", "?", "...", "'s", "'t", "'re", "'ll", "’s", "&amp;", "&quot;", "&#39;",
    "  ", "\t", "\n", "\u00a0", "42", "3.5", "1990s", "café", "Ärger", "日本", "中文", "한국",
    "😀", "👍🏽", "🇯🇵", "€", "—", "(", ")", "#tag", "@user", "x-ray", "e-mail", "naïve",
]


def _corpus() -> list[str]:
    rng = random.Random(1234)
    texts = list(_HAND)
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 16)):
            parts.append(rng.choice(_WORDS) if rng.random() < 0.7 else rng.choice(_FRAGMENTS))
        joiner = rng.choice([" ", " ", " ", ""])
        texts.append(joiner.join(parts))
    # long texts: more than 77 tokens, truncated
    for n in (40, 76, 120, 300):
        texts.append(" ".join(rng.choice(_WORDS) for _ in range(n)))
    texts.append("日本語 " * 50)
    texts.append("😀" * 100)
    return texts


CORPUS = _corpus()


# ----------------------------------------------------------------------------- parity


def test_oracle_sanity(hf):
    # the fixture asserts the essential checks; a few more known OpenAI ids
    dog = hf("a photo of a dog", add_special_tokens=False)["input_ids"]
    assert dog == [320, 1125, 539, 320, 1929]
    assert hf.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [SOT, EOT]


def test_content_ids_match_hf(tok, hf):
    assert len(CORPUS) >= 300
    mismatches = []
    for text in CORPUS:
        expected = hf(_openai_clean(text), add_special_tokens=False)["input_ids"]
        got = tok.encode(text)
        if got != expected:
            mismatches.append((text, got, expected))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"


def test_raw_text_matches_hf_when_no_cleaning_needed(tok, hf):
    """Where ftfy/unescape change nothing, HF on the raw text is an oracle on its own."""
    checked = 0
    for text in CORPUS:
        if _openai_clean(text) != text:
            continue
        assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
        checked += 1
    assert checked > 200


def test_rows_match_hf_with_truncation(tok, hf):
    rows = tok(CORPUS)
    assert rows.shape == (len(CORPUS), CONTEXT) and rows.dtype == torch.long
    truncated = 0
    for text, row in zip(CORPUS, rows.tolist()):
        expected = hf(_openai_clean(text), truncation=True, max_length=CONTEXT)["input_ids"]
        assert expected[0] == SOT and expected[-1] == EOT
        n = len(expected)
        assert row[:n] == expected, text
        assert all(v == 0 for v in row[n:]), text  # zero padding (HF pads differently)
        truncated += n == CONTEXT and len(tok.encode(text)) > CONTEXT - 2
    assert truncated >= 4


# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("text", list(GOLDEN))
def test_golden_openai_ids(tok, text):
    assert tok.encode(text) == GOLDEN[text]
    row = tok(text)[0].tolist()
    n = len(GOLDEN[text])
    assert row[: n + 2] == [SOT, *GOLDEN[text], EOT]
    assert row[n + 2 :] == [0] * (CONTEXT - n - 2)


def test_special_ids_and_vocab(tok):
    assert tok.sot_token_id == SOT
    assert tok.eot_token_id == EOT
    assert tok.vocab_size == 49408
    assert tok.decode([0]) == "!"
    assert tok.decode([SOT, EOT]) == "<|startoftext|><|endoftext|>"


# ----------------------------------------------------------------------------- batch / truncation


def test_call_shapes_and_padding(tok):
    single = tok("a photo of a cat")
    assert single.shape == (1, CONTEXT) and single.dtype == torch.long
    batch = tok(["a photo of a cat", "a dog", ""])
    assert batch.shape == (3, CONTEXT) and batch.dtype == torch.long
    assert batch[2, :3].tolist() == [SOT, EOT, 0]
    assert torch.equal(batch[0], single[0])
    assert tok([]).shape == (0, CONTEXT)
    assert tok(("a", "b"), context_length=5).tolist() == [
        [SOT, 320, EOT, 0, 0],
        [SOT, 321, EOT, 0, 0],
    ]
    assert torch.equal(tok(iter(["a dog"])), tok(["a dog"]))
    batch[0, 0] = 1  # the result is an ordinary writable tensor
    with pytest.raises(VclipError):
        tok("a", context_length=1)


def test_truncation_keeps_eot(tok):
    text = " ".join(["playing"] * 100)
    content = tok.encode(text)
    assert len(content) == 100
    row = tok(text)[0].tolist()
    assert row == [SOT, *content[:75], EOT]
    short = tok(text, context_length=10)[0].tolist()
    assert short == [SOT, *content[:8], EOT]


def test_truncate_false_raises_with_text_and_length(tok):
    long_text = "a very long descriptor " + "word " * 100
    with pytest.raises(VclipError) as info:
        tok(["fine", long_text], truncate=False)
    message = str(info.value)
    assert "a very long descriptor" in message and "..." in message
    assert str(len(tok.encode(long_text)) + 2) in message and "77" in message
    exact = " ".join(["playing"] * 75)  # 75 + SOT + EOT = 77 fits exactly
    assert tok(exact, truncate=False)[0, -1].item() == EOT
    with pytest.raises(VclipError):
        tok(exact + " playing", truncate=False)


def test_module_level_tokenize_uses_cached_default():
    assert get_tokenizer() is get_tokenizer()
    out = tokenize(["a photo of a cat", "a dog"])
    assert out.shape == (2, CONTEXT)
    assert out[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    with pytest.raises(VclipError):
        tokenize("word " * 100, truncate=False)


# ----------------------------------------------------------------------------- decode / encode


@pytest.mark.parametrize(
    "text",
    ["a photo of a cat", "playing basketball in the park", "supercalifragilisticexpialidocious x"],
)
def test_decode_round_trip_plain_ascii(tok, text):
    decoded = tok.decode(tok.encode(text))
    assert decoded == text + " "  # OpenAI's decode turns every </w> into a space
    assert tok.decode(torch.tensor(tok.encode(text))).strip() == text


def test_decode_behaviour(tok):
    assert tok.decode(tok.encode("Hello, World!")) == "hello , world ! "
    assert tok.decode(tok.encode("café 東京 😀")) == "café 東京 😀 "
    with pytest.raises(VclipError):
        tok.decode([49408])


def test_encode_returns_fresh_list(tok):
    ids = tok.encode("a photo of a cat")
    ids.append(999)
    assert tok.encode("a photo of a cat") == GOLDEN["a photo of a cat"]
    with pytest.raises(TypeError):
        tok.encode(None)  # type: ignore[arg-type]
    assert tok.encode_batch(["a", "b"]) == [[320], [321]]


# ----------------------------------------------------------------------------- other BPE files


def test_custom_bpe_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("#version: 0.2\nc a\nca t</w>\n", encoding="utf-8")
    tiny = Tokenizer(path, num_merges=None)
    assert tiny.vocab_size == 512 + 2 + 2
    assert tiny.sot_token_id == 514 and tiny.eot_token_id == 515
    assert tiny.encode("cat") == [512 + 1]
    # "cats" -> c a t s</w> -> "ca" t s</w>; ("ca", "t</w>") does not apply to a non-final t
    assert tiny.encode("cats") == [512, ord("t") - 33, 256 + ord("s") - 33]
    assert tiny.decode(tiny.encode("cat cats")) == "cat cats "
    assert tiny("cat").tolist()[0][:3] == [514, 513, 515]


def test_bpe_file_errors(tmp_path):
    with pytest.raises(VclipError, match="cannot read"):
        Tokenizer(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    with pytest.raises(VclipError, match="merge lines"):
        Tokenizer(short)  # CLIP's default needs 48,894 merges
    assert Tokenizer(short, num_merges=1).vocab_size == 512 + 1 + 2
    broken = tmp_path / "broken.txt"
    broken.write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(VclipError, match="line 2"):
        Tokenizer(broken, num_merges=None)


# ----------------------------------------------------------------------------- caching


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(12)) + f" {i}" for i in range(n)]


def _count_bpe(tok: Tokenizer) -> list[int]:
    """Count the words ``tok`` runs BPE merges on (the per-word cache's misses)."""
    calls = [0]
    real = tok._merge_symbols

    def counted(symbols):
        calls[0] += 1
        return real(symbols)

    tok._merge_symbols = counted
    return calls


def test_cache_speed_sanity():
    """The caches, counted rather than timed: a second pass over the same texts runs no BPE merge
    and is answered by the per-text cache; with the text cache off, the word cache still spares
    every merge; ``cache_clear`` empties both."""
    tok = Tokenizer()
    bpe = _count_bpe(tok)
    texts = _sentences(3000, seed=7)
    words = {w for t in texts for w in t.split()}
    cold = tok(texts)
    assert 0 < bpe[0] <= len(words)  # each distinct word merged once at most
    info = tok._encode_cached.cache_info()
    assert (info.hits, info.misses) == (0, 3000)
    bpe[0] = 0
    warm = tok(texts)
    assert torch.equal(cold, warm)
    assert bpe[0] == 0
    info = tok._encode_cached.cache_info()
    assert (info.hits, info.misses) == (3000, 3000)
    tok.cache_clear()
    assert torch.equal(tok(texts[:10]), cold[:10])
    assert bpe[0] > 0 and tok._encode_cached.cache_info().misses == 10
    uncached = Tokenizer(text_cache_size=0)
    bpe = _count_bpe(uncached)
    assert torch.equal(uncached(texts[:200]), cold[:200])
    first = bpe[0]
    assert first > 0
    assert torch.equal(uncached(texts[:200]), cold[:200])
    assert bpe[0] == first  # the word cache answers every word of the second pass
