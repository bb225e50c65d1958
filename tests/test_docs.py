"""The documentation is tested: every fenced code block and every command of README.md, docs/*.md
and docs/methods/*.md is run or checked here, so the docs cannot drift from the code.

Blocks (a fence may be indented, e.g. inside a list item; the body is dedented):

* ``python`` -- run, each block in a fresh namespace, in a temporary working directory, offline
  (``VCLIP_OFFLINE=1``, ``VCLIP_CACHE`` in the temporary directory), with one torch thread. Inputs
  that cannot exist here (pretrained weights, official checkpoints, videos, dataset annotations) are
  written by the block's entry of :data:`PYTHON_SETUP` as tiny stand-ins in the real formats, with
  vclip's own writers; names in the block are replaced only through that entry's explicit mapping
  (e.g. ``"openai/ViT-B-16"`` -> a tiny CLIP directory), and the entry may check what the block
  computed. An entry that matches no block fails the test (the doc changed: update the entry).
* ``<!-- doctest: sketch -->`` on the line right before a fence marks a sketch that cannot run on
  its own: it is only compiled, and a class it derives from a ``vclip.backbone`` class must override
  existing methods with the same number of parameters. Keep sketches few. Any other marker fails.
* The "Adding a method" blocks of docs/architecture.md (python + yaml) are run by
  tests/methods/test_adding_a_method.py; here they are only parsed.
* ``yaml`` -- parsed; a block whose first line is ``# <path>.yaml`` is that config file: written at
  that path into a copy of ``configs/`` and loaded (and validated) by vclip's config loader.
* ``json`` -- parsed; a descriptor file (vclip's ``"format": "vclip-descriptors/..."`` or the
  official OST ``{"0": [...], ...}``) is read and checked by ``vclip.text.descriptors``.
* ``bash``/``sh``, ``text``/``console`` and unlabelled blocks -- split into commands: ``\\`` line
  continuations joined, ``#`` comments dropped, a ``$ `` prompt stripped. A block that uses ``$ ``
  prompts has commands only on those lines (the others are their output); otherwise every line of
  a bash block is a command, and in the other blocks only lines starting with a command word
  (``vclip``, ``torchrun``, ``python``, ``make``) but not with vclip's message prefix
  (``vclip train: ...``): the rest is output, layout or pseudo-code.
* Any other language fails the test (teach it the new kind). So do indented (unfenced) code blocks.

Commands:

* ``vclip ...`` -- also after ``torchrun [its options] -m vclip.cli`` (torchrun's options parsed by
  torch's own parser), ``srun``, or ``$(which vclip)``. The sub-command chain is resolved in
  ``vclip.cli.build_parser()`` (argparse sub-parsers); every ``-o``/``--option`` written must be an
  option of that (sub-)command, spelled in full, and a literal value of an option with ``choices``
  must be one of them. A *synopsis* -- a line with ``[...]``, ``(a | b)``, ``|`` alternatives,
  ``...`` or an UPPER_CASE placeholder (``CONFIG``, ``KEY=VALUE``, ``N``) outside quotes -- is checked
  that far, and in its ``[--opt VALUE]`` brackets a literal VALUE must be the option's default. Any
  other line is parsed completely (``parse_args``, nothing runs), and for ``train``, ``eval``,
  ``predict`` and ``run`` its ``-c`` files and ``KEY=VALUE`` overrides are loaded and validated as the
  command does (``vclip.methods.load_run_config``; ``run`` also checks its protocol). A ``-c`` file
  must exist, unless it is the ``<run dir>/config.yaml`` that an earlier ``vclip train`` of the same
  block writes, or the command is in :data:`HYPOTHETICAL_CONFIGS`. In a block that trains, a later
  ``--checkpoint runs/...`` must lie in one of its run dirs.
* A documented error -- a ``$ vclip ...`` line followed by one ``vclip CMD: error: ...`` line -- is
  run (in a temporary directory that holds ``configs/``) and must print exactly that line (``...``
  in the doc matches anything) with exit status 2 -- unless it is in :data:`ERRORS_NOT_RUN` (errors
  that need an earlier run or training steps; those are parsed only).
* A few commands run for real as tiny variants (:data:`RUN`: documented command -> option values
  replaced or added); an entry that matches no documented command fails the test.
* ``python benchmarks/NAME.py ...`` -- the script exists and its own argparse parses the line
  (in-process: the script's ``main`` is stopped right after ``parse_args``).
* ``make TARGET [VAR=value]`` -- the target and the variables exist in the Makefile.
* :data:`EXTERNAL` commands (``curl``, ``mkdir``, ``#SBATCH`` lines, shell assignments, ...) are
  recognised and not run. Anything else fails the test: teach it the new kind.
* Inline code spans starting with ``vclip``, ``torchrun``, ``python benchmarks/`` or ``make`` get the
  checks of a synopsis (chain, options, choices), since prose may quote part of a command; a bare
  ``torchrun --opt ...`` in prose has its options checked against torch's parser.
* Every exemption table of this file must still match something in the docs.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import inspect
import io
import json
import re
import runpy
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "methods").glob("*.md"))]

MARKER = re.compile(r"^\s*<!--\s*doctest:\s*([\w-]+)\s*-->\s*$")
MARKERS = {"sketch"}
COMMAND_LANGS = {"bash", "sh", "shell"}
TEXT_LANGS = {"", "text", "console"}
COMMAND_WORDS = {"vclip", "torchrun", "python", "make"}
#: commands the docs may show that this test does not run (tools outside vclip, shell built-ins)
EXTERNAL = {"curl", "mkdir", "cp", "export", "set", "pip", "tensorboard", "apt-get", "scontrol", "cd", "ls"}
#: sections whose blocks another test runs: (file, heading) -> that test
COVERED_ELSEWHERE = {("docs/architecture.md", "## Adding a method"): "tests/methods/test_adding_a_method.py"}
#: documented errors (`$ vclip ...` + `vclip CMD: error: ...`) that need more than the repository to
#: happen, so are only parsed here: command -> why (and which test produces the error)
ERRORS_NOT_RUN = {
    "vclip train -c configs/demo/clip_mean.yaml name=diverged train.lr=1e8 train.clip_grad=null":
        "needs the synthetic set and 3 training steps (tests/engine)",
    "vclip train -c runs/long/config.yaml train.lr=2e-3 --resume auto": "needs a run with a checkpoint (tests/engine)",
    "vclip train -c configs/demo/clip_mean.yaml train.epochs=2 name=quick": "needs an earlier run in runs/quick "
                                                                            "(tests/engine)",
}
#: `-c` files a documented command names that do not exist: command -> why
HYPOTHETICAL_CONFIGS = {
    "vclip train -c base.yaml -c k400.yaml": "docs/training.md: the order of several -c files, in general",
    "vclip train -c fs1000/runs/xclip__fully_supervised/sup_k400_train/config.yaml output_dir=diag "
    "data.val_list=w48k/k400/val.txt name=x3000 model.method=xclip data.aug.crop=center train.max_steps=3000 "
    "train.log_every=100 train.eval_every=4": "docs/suite.md: the run config the `vclip suite` line above it writes",
}


# ------------------------------------------------------------------------------- markdown


@dataclass
class Block:
    file: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None = None
    section: str = ""  # the last "## " heading above

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^`\s]*)[^`]*$")


def read_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``path`` and the problems found on the way (unclosed fence, unknown or
    orphan marker, indented code block)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks, problems = [], []
    section = ""
    i = 0
    pending_marker: tuple[int, str] | None = None
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line.strip()
        m = MARKER.match(line)
        if m:
            if m.group(1) not in MARKERS:
                problems.append(f"{rel}:{i + 1}: unknown doctest marker {m.group(1)!r} (known: {sorted(MARKERS)})")
            pending_marker = (i, m.group(1))
            i += 1
            continue
        f = FENCE.match(line)
        if f:
            indent, fence = len(f.group("indent")), f.group("fence")
            j = i + 1
            while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
                j += 1
            if j == len(lines):
                problems.append(f"{rel}:{i + 1}: unclosed code fence")
                break
            body = [ln[indent:] if ln[:indent].strip() == "" else ln.lstrip() for ln in lines[i + 1 : j]]
            marker = None
            if pending_marker and pending_marker[0] == i - 1:
                marker = pending_marker[1]
            elif pending_marker:
                problems.append(f"{rel}:{pending_marker[0] + 1}: doctest marker not right before a code fence")
            blocks.append(Block(rel, i + 1, f.group("lang").lower(), "\n".join(body) + "\n", marker, section))
            pending_marker = None
            i = j + 1
            continue
        if pending_marker and line.strip():
            problems.append(f"{rel}:{pending_marker[0] + 1}: doctest marker not right before a code fence")
            pending_marker = None
        i += 1
    problems += [f"{rel}:{n}: indented code block; use a fenced block (```bash, ```text, ...)"
                 for n in indented_code_blocks(lines)]
    return blocks, problems


LIST_ITEM = re.compile(r"^\s*([*+-]|\d+[.)])\s")


def indented_code_blocks(lines: list[str]) -> list[int]:
    """1-based first lines of indented code blocks: a line indented by 4+ spaces after a blank
    line whose paragraph before is neither indented nor part of a list (so not a list item's
    continuation)."""
    found, in_fence, fence = [], False, ""
    last_para_start = ""  # first line of the last paragraph seen
    prev_blank, in_list = True, False
    for n, line in enumerate(lines, 1):
        f = FENCE.match(line)
        if f and (not in_fence or line.strip().startswith(fence)):
            in_fence, fence = (not in_fence), f.group("fence")
            prev_blank = False
            continue
        if in_fence:
            continue
        if not line.strip():
            prev_blank = True
            continue
        if prev_blank:
            if line.startswith("    ") and not in_list and not last_para_start.startswith(" "):
                found.append(n)
            last_para_start = line
            in_list = bool(LIST_ITEM.match(line)) or (in_list and line.startswith(" "))
        elif LIST_ITEM.match(line):
            in_list = True
        prev_blank = False
    return found


def inline_spans(path: Path) -> list[tuple[str, str]]:
    """``(where, code)`` of single-backtick code spans outside fences (paragraphs joined, so a span
    may wrap a line)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    spans, para, start, in_fence, fence = [], [], 0, False, ""

    def flush():
        text = " ".join(s.strip() for s in para)
        spans.extend((f"{rel}:{start}", m.group(1)) for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text))
        para.clear()

    for n, line in enumerate(lines, 1):
        f = FENCE.match(line)
        if f and (not in_fence or line.strip().startswith(fence)):
            flush()
            in_fence, fence = (not in_fence), f.group("fence")
            continue
        if in_fence:
            continue
        if not line.strip() or line.lstrip().startswith("|"):  # table rows: one paragraph each
            flush()
            if line.strip():
                start = n
                para.append(line)
                flush()
            continue
        if not para:
            start = n
        para.append(line)
    flush()
    return spans


_parsed = {p: read_blocks(p) for p in DOCS}
BLOCKS = [b for p in DOCS for b in _parsed[p][0]]
PARSE_PROBLEMS = [msg for p in DOCS for msg in _parsed[p][1]]


def covered_elsewhere(b: Block) -> str | None:
    return COVERED_ELSEWHERE.get((b.file, b.section))


# ------------------------------------------------------------------------------- commands


@dataclass
class Command:
    where: str
    text: str  # comment removed, continuations joined, prompt stripped
    output: list[str] = field(default_factory=list)  # lines after a `$ ` command in a text block
    prompt: bool = False


def strip_comment(line: str) -> str:
    """``line`` without a shell comment (``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line.rstrip()


def block_commands(b: Block) -> list[Command]:
    """The commands of a bash/text block (see the module docstring); ``#!`` and ``#SBATCH`` lines
    come back as commands of their own so that they are classified (as external), not ignored."""
    cmds: list[Command] = []
    lines = b.text.splitlines()
    k = 0
    is_shell = b.lang in COMMAND_LANGS
    prompts = any(ln.strip().startswith("$ ") for ln in lines)  # then only `$ ` lines are commands
    while k < len(lines):
        n, line = b.line + 1 + k, lines[k]
        k += 1
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(("#!", "#SBATCH")):
            cmds.append(Command(f"{b.file}:{n}", stripped))
            continue
        prompt = stripped.startswith("$ ")
        if prompt:
            stripped = stripped[2:]
        first = stripped.split()[0]
        message = re.match(r"vclip( [\w-]+)*: ", stripped) and not is_shell  # vclip's own output line
        if message or not (prompt or (is_shell and not prompts) or (first in COMMAND_WORDS and not prompts)):
            if cmds and cmds[-1].prompt:
                cmds[-1].output.append(line.rstrip())
            continue
        text = strip_comment(stripped)
        while text.endswith("\\") and k < len(lines):
            text = text[:-1].rstrip() + " " + strip_comment(lines[k].strip())
            k += 1
        if text:
            cmds.append(Command(f"{b.file}:{n}", " ".join(text.split()), prompt=prompt))
    return cmds


@dataclass
class Token:
    raw: str  # as written, quotes kept
    value: str  # as the shell passes it
    bare: str  # raw with quoted parts removed (for synopsis markers)


def tokens(text: str) -> list[Token]:
    out = []
    for raw in re.findall(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""", text):
        try:
            (value,) = shlex.split(raw) or [""]
        except ValueError:
            value = raw
        out.append(Token(raw, value, re.sub(r"'[^']*'|\"[^\"]*\"", "", raw)))
    return out


WORD = re.compile(r"[A-Za-z0-9_]+")


def is_placeholder(bare: str) -> bool:
    """``CONFIG``, ``KEY=VALUE``, ``RUN_DIR``, ``SPEC.yaml``, ``N``, ``...``: an UPPER_CASE word of
    two or more characters, a lone capital, or an ellipsis."""
    if "..." in bare or "…" in bare:
        return True
    s = bare.strip("[]()|")
    if re.fullmatch(r"[A-Z]", s):
        return True
    return any(len(w) >= 2 and re.fullmatch(r"[A-Z][A-Z0-9_]*", w) and not w.isdigit() for w in WORD.findall(s))


def is_synopsis(toks: list[Token]) -> bool:
    return any(re.search(r"[\[\]()|]", t.bare) or is_placeholder(t.bare) for t in toks)


def alternatives(t: Token) -> list[str]:
    """The values a synopsis token stands for: brackets/parentheses removed, split on ``|``."""
    s = t.value if not re.search(r"[\[\]()|]", t.bare) else t.bare
    return [a for a in (x.strip("[]()") for x in s.split("|")) if a]


def is_option(s: str) -> bool:
    return s.startswith("-") and len(s) > 1 and not re.fullmatch(r"-\d+(\.\d*)?", s)


# ------------------------------------------------------------------------------- the vclip parser

@pytest.fixture(scope="module")
def parser():
    from vclip.cli import build_parser

    return build_parser()


def subparsers_of(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return None


def options_of(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings}


def _close(name: str, choices) -> str:
    near = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


class DocError(AssertionError):
    pass


def resolve_chain(parser, toks: list[Token], where: str) -> tuple[list[str], list[argparse.ArgumentParser], int]:
    """Walk the sub-command tokens: ``(chain, parsers at the end (several for a|b), index of the
    first token after the chain)``."""
    chain, ps, i = [], [parser], 0
    while i < len(toks):
        subs = subparsers_of(ps[0])
        if subs is None:
            break
        t = toks[i]
        if is_option(t.value):  # options of the parent (vclip -v train ...)
            if t.value.split("=")[0] not in options_of(ps[0]):
                raise DocError(f"{where}: vclip {' '.join(chain)}: unknown option {t.value!r} before the sub-command")
            i += 1
            continue
        alts = alternatives(t)
        if any(is_placeholder(a) for a in alts):  # vclip COMMAND ...
            break
        for a in alts:
            if a not in subs:
                raise DocError(f"{where}: 'vclip {' '.join(chain + [a])}' is not a command"
                               f" (choices: {', '.join(subs)}){_close(a, subs)}")
        ps = [subs[a] for a in alts]
        chain.append("|".join(alts))
        i += 1
    return chain, ps, i


def check_vclip(parser, toks: list[Token], where: str, *, synopsis: bool) -> argparse.Namespace | None:
    """Check one ``vclip`` invocation (tokens after ``vclip``); returns the parsed namespace when it
    was parsed completely."""
    chain, ps, i = resolve_chain(parser, toks, where)
    name = "vclip " + " ".join(chain)
    depth = 0
    rest = toks[i:]
    for k, t in enumerate(rest):
        opens = t.bare.count("[")
        depth += opens
        for alt in alternatives(t):
            if not is_option(alt):
                continue
            opt, _, inline_value = alt.partition("=")
            for p in ps:
                known = options_of(p)
                if opt not in known:
                    raise DocError(f"{where}: {name}: no option {opt!r}{_close(opt, known)}")
                action = known[opt]
                takes_value = action.nargs != 0
                value_tok = None
                if inline_value:
                    value_tok = Token(inline_value, inline_value, inline_value)
                elif takes_value and k + 1 < len(rest) and not is_option(rest[k + 1].value):
                    value_tok = rest[k + 1]
                if value_tok is None:
                    continue
                values = alternatives(value_tok) if synopsis else [value_tok.value]
                literal = [v for v in values if not is_placeholder(v)]
                if action.choices is not None:
                    for v in literal:
                        conv = action.type(v) if callable(action.type) else v
                        if conv not in action.choices:
                            raise DocError(f"{where}: {name} {opt}: {v!r} is not one of {list(action.choices)}")
                if synopsis and depth > 0 and len(values) == 1 and literal and action.default is not None:
                    v = literal[0]
                    conv = action.type(v) if callable(action.type) else v
                    if conv != action.default:
                        raise DocError(f"{where}: {name} [{opt} {v}]: a literal in a synopsis' brackets must be "
                                       f"the default, which is {action.default!r} (write a placeholder, or fix it)")
        depth -= t.bare.count("]")
    if synopsis:
        return None
    argv = [t.value for t in toks]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit:
        raise DocError(f"{where}: 'vclip {' '.join(argv)}' does not parse: {err.getvalue().strip().splitlines()[-1]}") from None


def load_command_config(args: argparse.Namespace, text: str, where: str, run_dirs=()):
    """Load the run config of a parsed train/eval/predict/run command as the command would; None
    when the command takes none (e.g. predict without -c) or its config is one that an earlier
    ``vclip train`` of the block writes (``<run dir>/config.yaml``)."""
    from vclip.methods import load_run_config

    files = list(getattr(args, "config", None) or [])
    if args.command == "predict" and not files:
        return None
    missing = [f for f in files if not (ROOT / f).is_file()]
    if missing:
        if text in HYPOTHETICAL_CONFIGS:
            return None
        if all(Path(f) in [Path(d) / "config.yaml" for d in run_dirs] for f in missing):
            return None
        raise DocError(f"{where}: config file(s) {missing} do not exist (in {text!r})")
    if args.command == "run":
        from vclip.protocols.runner import protocol_name

        protocol_name(args.protocol)
    overrides = getattr(args, "overrides", None)
    if overrides is None:  # predict: VIDEO... and KEY=VALUE in one positional list
        overrides = [v for v in getattr(args, "inputs", []) if re.fullmatch(r"[\w.]+=.*", v)]
    return load_run_config([str(ROOT / f) for f in files], list(overrides))


# ------------------------------------------------------------------------------- classification


def vclip_argv(toks: list[Token], where: str, synopsis: bool) -> list[Token] | None:
    """The tokens after ``vclip`` (or ``torchrun ... -m vclip.cli``); None for a bare ``torchrun``
    in prose."""
    if toks[0].value == "vclip":
        return toks[1:]
    if toks[0].value == "torchrun":
        names = [t.value for t in toks]
        if synopsis:  # torchrun ... vclip train ...
            for k, v in enumerate(names):
                if v in ("vclip", "vclip.cli"):
                    return toks[k + 1 :]
            from torch.distributed.run import get_args_parser

            known = options_of(get_args_parser())
            for t in toks[1:]:  # prose quoting torchrun's own options: `torchrun --nproc_per_node 8`
                if is_option(t.value) and t.value.split("=")[0] not in known:
                    raise DocError(f"{where}: torchrun has no option {t.value!r}{_close(t.value, known)}")
            return None
        from torch.distributed.run import get_args_parser

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                a = get_args_parser().parse_args(names[1:])
        except SystemExit:
            raise DocError(f"{where}: torchrun options do not parse: {err.getvalue().strip()}") from None
        if not ((a.module and a.training_script == "vclip.cli") or a.training_script == "vclip"):
            raise DocError(f"{where}: torchrun must start '-m vclip.cli' (or vclip): {' '.join(names)}")
        return toks[len(toks) - len(a.training_script_args):]
    return None


def make_targets() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)) - {".PHONY"}  # rules only
    variables = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[?:+]?=", text, flags=re.M))
    return targets, variables


def classify(text: str, where: str) -> tuple[str, list[Token]]:
    """``(kind, tokens)``: kind is ``vclip``, ``benchmark``, ``make``, ``external`` or ``directive``;
    an unknown command raises."""
    text = text.replace("$(which vclip)", "vclip")
    if text.startswith(("#!", "#SBATCH")):
        return "directive", []
    toks = tokens(text)
    if toks and toks[0].value == "srun":  # a launcher prefix: check what it launches
        toks = toks[1:]
    if not toks:
        return "external", []
    first = toks[0].value
    if first in ("vclip", "torchrun"):
        return "vclip", toks
    if first == "python":
        if len(toks) > 1 and toks[1].value.startswith("benchmarks/"):
            return "benchmark", toks
        raise DocError(f"{where}: python command of unknown kind: {text!r} (teach tests/test_docs.py)")
    if first == "make":
        return "make", toks
    if first == "bash" and len(toks) > 1 and toks[1].value.startswith("benchmarks/"):
        if not (ROOT / toks[1].value).is_file():
            raise DocError(f"{where}: {toks[1].value} does not exist")
        return "external", toks  # the script itself is run by its own test (tests/bench/test_gpu_suite.py)
    if first in EXTERNAL or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", first):
        return "external", toks
    raise DocError(f"{where}: command of unknown kind: {text!r} (add it to EXTERNAL in tests/test_docs.py "
                   "if it is a tool outside vclip, or teach the test to check it)")


_bench_cache: dict[str, dict] = {}


class _Parsed(Exception):
    pass


def check_benchmark(toks: list[Token], where: str, *, synopsis: bool) -> None:
    script = ROOT / toks[1].value
    if not script.is_file():
        raise DocError(f"{where}: {toks[1].value} does not exist")
    if synopsis:
        return
    if script.name not in _bench_cache:
        _bench_cache[script.name] = runpy.run_path(str(script), run_name="vclip_docs_benchmark")
    main = _bench_cache[script.name]["main"]
    original = argparse.ArgumentParser.parse_args
    err = io.StringIO()

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main([t.value for t in toks[2:]])
    except _Parsed:
        return
    except SystemExit:
        raise DocError(f"{where}: {toks[1].value} rejects its documented arguments: "
                       f"{err.getvalue().strip().splitlines()[-1]}") from None
    finally:
        argparse.ArgumentParser.parse_args = original
    raise DocError(f"{where}: {toks[1].value}: main() never called parse_args")


def check_make(toks: list[Token], where: str) -> None:
    targets, variables = make_targets()
    for t in toks[1:]:
        if "=" in t.value:
            var = t.value.split("=", 1)[0]
            if var not in variables:
                raise DocError(f"{where}: make variable {var} is not in the Makefile ({sorted(variables)})")
        elif not is_option(t.value) and t.value not in targets:
            raise DocError(f"{where}: make target {t.value!r} is not in the Makefile ({sorted(targets)})")


# ------------------------------------------------------------------------------- tiny runs

#: documented commands (as written, comment removed, blanks collapsed) that run for real, each as a
#: tiny variant: option -> new value ({tmp} = a temporary folder; True = add the flag)
RUN: dict[str, dict[str, object]] = {
    "vclip selfcheck": {},
    "vclip flops --method xclip --arch ViT-B-16 --frames 8 --views 4x3": {"--arch": "tiny"},
    "vclip data synth --out data/synth --videos-per-class 16 --size 64": {
        "--out": "{tmp}/synth", "--videos-per-class": "2", "--frames": "4", "--size": "32", "--workers": "1",
        "--quiet": True},
}


def run_check(command: str, out: str, tmp: Path) -> None:
    """What a tiny run of a RUN entry must have produced."""
    if command.startswith("vclip selfcheck"):
        assert "self-check passed" in out, out
    elif command.startswith("vclip flops"):
        assert re.search(r"xclip tiny, 8 frames .* GFLOPs per view.*4×3 views: [0-9.]+ GFLOPs per video", out), out
    elif command.startswith("vclip data synth"):
        meta = json.loads((tmp / "synth" / "meta.json").read_text())
        assert len(meta["videos"]) == 24 and meta["config"]["frames"] == 4
        assert len((tmp / "synth" / "train.txt").read_text().splitlines()) == 12
        assert (tmp / "synth" / "labels.csv").read_text().startswith("id,name")
    else:
        raise AssertionError(f"no check for {command!r}")


def variant(argv: list[str], subs: dict[str, object], tmp: Path) -> list[str]:
    argv = list(argv)
    for opt, val in subs.items():
        if val is True:
            if opt not in argv:
                argv.append(opt)
            continue
        val = str(val).format(tmp=tmp)
        if opt in argv:
            argv[argv.index(opt) + 1] = val
        else:
            argv += [opt, val]
    return argv


def run_vclip(argv: list[str]) -> tuple[int, str, str]:
    from vclip.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


def documented_error(cmd: Command) -> str | None:
    out = [line for line in cmd.output if line.strip()]
    if cmd.prompt and len(out) == 1 and re.match(r"vclip [\w-]+: error: ", out[0]):
        return out[0]
    return None


def pattern_of(doc_line: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in doc_line.split("...")))


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A temporary working directory, offline, one torch thread."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VCLIP_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VCLIP_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- structure


def test_docs_are_found_and_well_formed():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/training.md", "docs/methods/xclip.md"} <= names
    assert len(BLOCKS) > 30
    assert not PARSE_PROBLEMS, "\n".join(PARSE_PROBLEMS)
    unknown = [f"{b.where}: code block in language {b.lang!r}" for b in BLOCKS
               if b.lang not in COMMAND_LANGS | TEXT_LANGS | {"python", "yaml", "json"}]
    assert not unknown, "\n".join(unknown) + "\n(teach tests/test_docs.py the new kind)"
    bad = [b.where for b in BLOCKS if b.marker == "sketch" and b.lang != "python"]
    assert not bad, f"sketch markers on non-python blocks: {bad}"


def test_the_marker_and_block_parser():
    """The parsing rules this file relies on, on a made-up page."""
    page = ROOT / "docs" / ".doctest_selftest.md"
    try:
        page.write_text("# t\n\n* item\n\n  ```python\n  x = 1\n  ```\n\n<!-- doctest: sketch -->\n```python\n"
                        "self.y\n```\n\n~~~text\n$ vclip eval -c A.yaml\nout\n~~~\n\npara `vclip train` and\n"
                        "`make\ntest` end\n\n    indented code\n")
        blocks, problems = read_blocks(page)
        spans = [s for _, s in inline_spans(page)]
    finally:
        page.unlink()
    assert [(b.lang, b.text, b.marker) for b in blocks] == [
        ("python", "x = 1\n", None), ("python", "self.y\n", "sketch"), ("text", "$ vclip eval -c A.yaml\nout\n", None)]
    assert problems == ["docs/.doctest_selftest.md:23: indented code block; use a fenced block (```bash, ```text, ...)"]
    assert spans == ["vclip train", "make test"]
    (cmd,) = block_commands(blocks[2])
    assert cmd.prompt and cmd.text == "vclip eval -c A.yaml" and cmd.output == ["out"]
    toks = tokens('vclip predict V.mp4 (--labels "A,B" | --labels-file FILE) [--top-k 5]')
    assert is_synopsis(toks) and not is_synopsis(tokens("vclip train -c x.yaml 'model.templates=[\"{}\"]'"))
    assert [is_placeholder(s) for s in ("KEY=VALUE", "N", "SPEC.yaml", "ViT-B-16", "data.root=...", "bf16")] == [
        True, True, True, False, True, False]
    assert block_commands(Block("f", 1, "bash", "vclip a \\\n  --b c   # note\n#SBATCH --x\n# comment\n"))[0].text \
        == "vclip a --b c"


# ------------------------------------------------------------------------------- python blocks


def tiny_clip_dir(path: Path) -> str:
    from vclip.backbone import CLIP, get_config
    from vclip.backbone.weights import save_clip

    torch.manual_seed(0)
    save_clip(CLIP(get_config("tiny")), path)
    return str(path)


def tiny_xclip(num_frames: int):
    """An X-CLIP on a tiny CLIP whose widths are multiples of 64 (official files carry no config:
    heads = width / 64 is inferred from the shapes)."""
    from vclip.backbone import CLIP, CLIPConfig, TextConfig, VisionConfig
    from vclip.methods.xclip import XCLIP

    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=64, vision=VisionConfig(image_size=32, patch_size=8, width=128, layers=2, heads=2),
                     text=TextConfig(width=64, heads=1, layers=2))
    return XCLIP(CLIP(cfg), num_frames=num_frames).eval()


def write_video(path: Path, frames: int = 16, fps: int = 8, size: int = 32) -> None:
    """A small real video at ``path``: H.264 mp4 (vclip's writer), or MPEG-4 part 2 in AVI."""
    from tests.data.videos import make_video

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".avi":
        make_video(path, frames=frames, size=(size, size), fps=fps, codec="mpeg4", container_format="avi")
    else:
        make_video(path, frames=frames, size=(size, size), fps=fps, gop=fps)


def setup_readme_clip(tmp: Path) -> dict:
    return {"replace": {'"openai/ViT-B-16"': repr(tiny_clip_dir(tmp / "tiny_clip"))}}


def check_readme_clip(ns: dict) -> None:
    assert ns["img"].shape == (ns["frames"].shape[0], ns["clip"].config.embed_dim)
    assert torch.allclose(ns["img"].norm(dim=-1), torch.ones(len(ns["img"])), atol=1e-5)
    assert ns["txt"].shape == (1, ns["clip"].config.embed_dim)


def setup_decode(tmp: Path) -> dict:
    write_video(tmp / "clip.mp4", frames=40, fps=10, size=32)
    return {}


def check_decode(ns: dict) -> None:
    assert ns["frames"].shape == (4, 32, 32, 3) and str(ns["frames"].dtype) == "uint8"
    assert (ns["frames"][1] == ns["frames"][2]).all()  # the repeated index


def setup_hmdb(tmp: Path) -> dict:
    names = ["brush_hair", "cartwheel"]
    videos = ["April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi"]
    (tmp / "splits" / "hmdb").mkdir(parents=True)
    (tmp / "splits" / "hmdb" / "val1.txt").write_text("".join(f"{v} {k}\n" for k, v in enumerate(videos)))
    (tmp / "labels").mkdir()
    (tmp / "labels" / "hmdb_51_labels.csv").write_text("id,name\n" + "".join(f"{k},{n}\n" for k, n in enumerate(names)))
    for v in videos:
        write_video(tmp / "data" / "hmdb51" / v)
    return {}


def check_hmdb(ns: dict) -> None:
    ds = ns["ds"]
    assert len(ds) == 2 and ds.class_names == ["brush_hair", "cartwheel"]
    sample = ds[1]
    assert sample["valid"] and sample["label"] == 1 and tuple(sample["video"].shape) == (8, 3, 224, 224)


def setup_kinetics(tmp: Path) -> dict:
    (tmp / "labels").mkdir()
    (tmp / "labels" / "kinetics_400_labels.csv").write_text("id,name\n0,abseiling\n1,air drumming\n")
    (tmp / "kinetics400" / "annotations").mkdir(parents=True)
    (tmp / "kinetics400" / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "air drumming,-0ABC123,10,20,val\nabseiling,xyz_987,0,10,val\n")
    write_video(tmp / "kinetics400" / "val" / "-0ABC123_000010_000020.mp4")
    return {}


def check_kinetics(ns: dict) -> None:
    ds = ns["ds"]
    assert [(r.path, r.label) for r in ds.records] == [("-0ABC123_000010_000020.mp4", 1), ("xyz_987_000000_000010.mp4", 0)]
    assert ds[0]["valid"] and not ds[1]["valid"]  # the second clip is missing: a failed video, not a crash


def setup_activitynet(tmp: Path) -> dict:
    db = {
        "vid_a": {"subset": "training", "duration": 4.0, "annotations": [
            {"label": "Playing polo", "segment": [0.5, 2.5]}, {"label": "Rock climbing", "segment": [2.5, 3.9]}]},
        "vid_b": {"subset": "validation", "duration": 4.0, "annotations": [
            {"label": "Rock climbing", "segment": [1.0, 3.0]}]},
    }
    (tmp / "activitynet").mkdir()
    (tmp / "activitynet" / "activity_net.v1-3.min.json").write_text(json.dumps({"version": "VERSION 1.3", "database": db}))
    for vid in db:
        write_video(tmp / "activitynet" / "videos" / f"v_{vid}.mp4", frames=32, fps=8)
    return {}


def check_activitynet(ns: dict) -> None:
    assert len(ns["train"]) == 2 and ns["train"].records[0].segment == (0.5, 2.5)
    assert len(ns["val"]) == 1 and ns["val"].class_names == ["Playing polo", "Rock climbing"]
    assert ns["val"][0]["valid"] and ns["val"][0]["label"] == 1


def setup_xclip(tmp: Path) -> dict:
    from vclip.methods.xclip_convert import save_xclip_hf, save_xclip_official

    save_xclip_official(tiny_xclip(8), tmp / "k400_32_8.pth")
    save_xclip_hf(tiny_xclip(8), tmp / "xclip-base-patch32")
    return {}


def check_xclip(ns: dict) -> None:
    m = ns["m"]
    assert m.num_frames == 16  # interpolated from the directory's 8
    for saved in ("out", "x.pth"):  # both exports load back to the same weights
        again = ns["load_xclip"](saved)
        assert again.num_frames == 16
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in m.state_dict().items())


def setup_hooks(tmp: Path) -> dict:
    """A CLIP with 12 small vision blocks at 224 px / patch 16 (197 tokens, as ViT-B/16) and a
    batch of 2 frames: what the architecture sketches of MoTED and ALT assume."""
    from vclip.backbone import CLIP, CLIPConfig, TextConfig, VisionConfig

    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(embed_dim=32, vision=VisionConfig(image_size=224, patch_size=16, width=32, layers=12, heads=1),
                           text=TextConfig(width=32, heads=1, layers=1))).eval()
    return {"namespace": {"clip": clip, "frames": torch.randn(2, 3, 224, 224)}}


def check_taps(ns: dict) -> None:
    assert len(ns["taps"]) == 12 and tuple(ns["taps"][11].shape) == (2, 32)


def check_merging(ns: dict) -> None:
    assert tuple(ns["regions"].shape) == (2, 197 - 12 * 8, 32)
    assert torch.equal(ns["sizes"].sum(-1), torch.full((2,), 197.0))


#: (file, a snippet the block contains) -> (setup(tmp) -> {"replace": {old: new}, "namespace": {...}},
#: check(namespace)); blocks without an entry run as they are
PYTHON_SETUP = {
    ("README.md", "load_clip("): (setup_readme_clip, check_readme_clip),
    ("docs/data.md", 'open_video("clip.mp4")'): (setup_decode, check_decode),
    ("docs/datasets.md", '"splits/hmdb/val1.txt"'): (setup_hmdb, check_hmdb),
    ("docs/datasets.md", "read_kinetics_csv("): (setup_kinetics, check_kinetics),
    ("docs/datasets.md", "activitynet_class_names("): (setup_activitynet, check_activitynet),
    ("docs/methods/xclip.md", 'load_xclip("k400_32_8.pth"'): (setup_xclip, check_xclip),
    ("docs/architecture.md", 'LayerTaps(at="input", class_token=True)'): (setup_hooks, check_taps),
    ("docs/architecture.md", "TokenMerging(r=8, layers=12)"): (setup_hooks, check_merging),
}

PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


def setup_entry(b: Block):
    hits = [k for k in PYTHON_SETUP if k[0] == b.file and k[1] in b.text]
    assert len(hits) <= 1, f"{b.where}: several PYTHON_SETUP entries match: {hits}"
    return PYTHON_SETUP[hits[0]] if hits else (None, None)


def test_every_python_setup_matches_one_block():
    for key in PYTHON_SETUP:
        n = sum(b.file == key[0] and key[1] in b.text for b in PYTHON_BLOCKS)
        assert n == 1, f"PYTHON_SETUP entry {key} matches {n} python blocks: update it to the doc"


def sketch_overrides_exist(b: Block) -> None:
    """Classes a sketch derives from a vclip.backbone class override methods that exist there,
    with as many parameters."""
    import vclip.backbone as backbone

    for node in ast.walk(ast.parse(b.text)):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            cls = getattr(backbone, base.id, None) if isinstance(base, ast.Name) else None
            if cls is None:
                continue
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
                    assert hasattr(cls, fn.name), f"{b.where}: {base.id} has no method {fn.name}"
                    want = len(inspect.signature(getattr(cls, fn.name)).parameters)
                    assert len(fn.args.args) == want, f"{b.where}: {node.name}.{fn.name} takes {len(fn.args.args)} " \
                                                      f"parameters, {base.id}.{fn.name} {want}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where for b in PYTHON_BLOCKS])
def test_python_block(block, offline):
    code = block.text
    if block.marker == "sketch":
        compile(code, block.where, "exec")
        sketch_overrides_exist(block)
        return
    if covered_elsewhere(block):
        compile(code, block.where, "exec")  # run by the test named in COVERED_ELSEWHERE
        return
    setup, check = setup_entry(block)
    env = setup(offline) if setup else {}
    for old, new in env.get("replace", {}).items():
        assert old in code, f"{block.where}: the stand-in mapping names {old}, which the block no longer has"
        code = code.replace(old, new)
    ns = {"__name__": "__doc_block__", **env.get("namespace", {})}
    exec(compile(code, block.where, "exec"), ns)
    if check:
        check(ns)


# ------------------------------------------------------------------------------- yaml blocks


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "yaml"],
                         ids=[b.where for b in BLOCKS if b.lang == "yaml"])
def test_yaml_block(block, offline):
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), f"{block.where}: not a mapping"
    m = re.match(r"#\s*(\S+\.ya?ml)\s*$", block.text.splitlines()[0])
    if covered_elsewhere(block) or not m:
        return
    from vclip.methods import load_run_config

    shutil.copytree(ROOT / "configs", offline / "configs")
    path = offline / m.group(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)
    cfg = load_run_config([str(path)])
    for section, values in data.items():  # what the file sets is what the config holds
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert getattr(getattr(cfg, section), key) == value, f"{block.where}: {section}.{key}"


def test_exemptions_are_current():
    """Every exemption of this file still names something in the docs."""
    documented = {cmd.text for _, cmds in all_commands() for cmd in cmds}
    stale = [c for c in (*HYPOTHETICAL_CONFIGS, *ERRORS_NOT_RUN) if c not in documented]
    stale += [k for k in COVERED_ELSEWHERE if not any((b.file, b.section) == k for b in BLOCKS)]
    assert not stale, f"exemptions that match nothing in the docs any more: {stale}"
    for (file, heading), test in COVERED_ELSEWHERE.items():
        assert (ROOT / test).is_file() and heading in (ROOT / test).read_text(), (file, heading, test)


def test_yaml_blocks_without_a_path_are_covered():
    """A yaml block either names its file (and is loaded above) or is run by another test."""
    loose = [b.where for b in BLOCKS if b.lang == "yaml" and not covered_elsewhere(b)
             and not re.match(r"#\s*\S+\.ya?ml\s*$", b.text.splitlines()[0])]
    assert not loose, f"yaml blocks that no test loads: {loose} (start them with '# path/to/file.yaml')"


# ------------------------------------------------------------------------------- json blocks


def is_descriptor_file(data) -> bool:
    """vclip's descriptor format, or the official OST one (class index -> list of strings)."""
    if isinstance(data, dict) and str(data.get("format", "")).startswith("vclip-descriptors/"):
        return True
    return isinstance(data, dict) and bool(data) and all(
        k.isdigit() and isinstance(v, list) and all(isinstance(x, str) for x in v) for k, v in data.items())


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "json"],
                         ids=[b.where for b in BLOCKS if b.lang == "json"])
def test_json_block(block, offline):
    data = json.loads(block.text)
    if not is_descriptor_file(data):
        return
    from vclip.text.descriptors import read_descriptors

    path = offline / "descriptors.json"
    path.write_text(block.text)
    if "classes" in data:
        names, lists = list(data["classes"]), list(data["classes"].values())
    else:
        names, lists = [f"class {k}" for k in sorted(data, key=int)], list(data.values())
    read_descriptors(path, names, num_per_class=len(lists[0]), kind=data.get("kind"))


# ------------------------------------------------------------------------------- commands


def all_commands() -> list[tuple[Block, list[Command]]]:
    return [(b, block_commands(b)) for b in BLOCKS if b.lang in COMMAND_LANGS | TEXT_LANGS]


def check_command(parser, cmd: Command, *, inline: bool = False):
    """Check one command; returns ``(kind, parsed namespace or None)``."""
    kind, toks = classify(cmd.text, cmd.where)
    synopsis = inline or is_synopsis(toks)
    if kind == "vclip":
        argv = vclip_argv(toks, cmd.where, synopsis)
        return kind, None if argv is None else check_vclip(parser, argv, cmd.where, synopsis=synopsis)
    if kind == "benchmark":
        check_benchmark(toks, cmd.where, synopsis=synopsis)
    elif kind == "make":
        check_make(toks, cmd.where)
    return kind, None


def test_every_command_in_blocks(parser, monkeypatch):
    monkeypatch.chdir(ROOT)
    failures, kinds = [], {}
    for block, cmds in all_commands():
        run_dirs = []
        for cmd in cmds:
            try:
                kind, args = check_command(parser, cmd)
                kinds[kind] = kinds.get(kind, 0) + 1
                if args is None or documented_error(cmd) or args.command not in ("train", "eval", "predict", "run"):
                    continue
                cfg = load_command_config(args, cmd.text, cmd.where, run_dirs)
                if args.command == "train" and cfg is not None:
                    run_dirs.append(Path(cfg.run_dir).relative_to(ROOT) if Path(cfg.run_dir).is_absolute()
                                    else Path(cfg.run_dir))
                ckpt = getattr(args, "checkpoint", None)
                if run_dirs and ckpt and ckpt.startswith("runs/"):
                    if not any(Path(ckpt).is_relative_to(d) for d in run_dirs):
                        raise DocError(f"{cmd.where}: --checkpoint {ckpt} is not in a run dir this block trains "
                                       f"({[str(d) for d in run_dirs]})")
            except DocError as e:
                failures.append(str(e))
            except Exception as e:  # a config error, ...: name the command
                failures.append(f"{cmd.where}: {cmd.text!r}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)
    assert kinds.get("vclip", 0) > 40 and kinds.get("benchmark", 0) >= 3 and kinds.get("make") and \
        kinds.get("external") and kinds.get("directive"), kinds


def test_every_command_in_inline_code(parser):
    failures, checked = [], 0
    for path in DOCS:
        for where, code in inline_spans(path):
            text = " ".join(code.split())
            if not re.match(r"(vclip|torchrun|make)( |$)|python benchmarks/", text):
                continue
            try:
                check_command(parser, Command(where, text), inline=True)
                checked += 1
            except DocError as e:
                failures.append(str(e))
    assert not failures, "\n".join(failures)
    assert checked > 30


def test_documented_errors_are_printed_as_documented(offline):
    (offline / "configs").symlink_to(ROOT / "configs")
    examples = [(cmd, documented_error(cmd)) for _, cmds in all_commands() for cmd in cmds
                if documented_error(cmd) and cmd.text not in ERRORS_NOT_RUN]
    assert len(examples) >= 3
    for cmd, expected in examples:
        code, out, err = run_vclip([t.value for t in tokens(cmd.text)[1:]])
        lines = err.strip().splitlines()
        assert code == 2 and lines and pattern_of(expected).fullmatch(lines[-1]), \
            f"{cmd.where}: {cmd.text!r} printed (exit {code}):\n{err}\nthe doc says:\n{expected}"


def test_tiny_runs_of_documented_commands(offline):
    documented = {cmd.text for _, cmds in all_commands() for cmd in cmds}
    for command, subs in RUN.items():
        assert command in documented, f"RUN entry {command!r} is no longer in the docs: update RUN"
        argv = variant([t.value for t in tokens(command)[1:]], subs, offline)
        code, out, err = run_vclip(argv)
        assert code == 0, f"{command!r} as {argv}: exit {code}\n{err}"
        run_check(command, out, offline)
