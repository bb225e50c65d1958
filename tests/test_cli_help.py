"""Help text of every ``vclip`` command and sub-command, built in-process from
``vclip.cli.build_parser()``: no ``%%`` left by argparse's %-formatting, no RST markup, every
option's default shown; ``vclip run`` spells its protocols one way; pyproject's description claims
only methods that exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vclip import cli

ROOT = Path(__file__).resolve().parents[1]


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {" ".join(path): p for path, p in _walk(cli.build_parser(), ("vclip",))}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help lines of one option, as ``--help`` prints them, on one line."""
    fmt = parser._get_formatter()
    fmt.add_argument(action)
    return _one_line(fmt.format_help())


def test_the_walk_reaches_every_command_and_sub_command(parsers):
    assert {"vclip", "vclip demo", "vclip describe", "vclip wise", "vclip run", "vclip data synth",
            "vclip data prepare", "vclip bench infer", "vclip bench train", "vclip bench matmul"} <= set(parsers)
    assert len(parsers) >= 18


def test_no_percent_escapes_or_rst_markup_in_any_help(parsers):
    bad = {}
    for name, parser in parsers.items():
        text = parser.format_help()
        found = [m for m in ("%%", "``", ":mod:`", ":func:`", ":class:`") if m in text]
        if found:
            bad[name] = found
    assert bad == {}


def test_every_option_with_a_default_shows_it(parsers):
    """An option whose default is a value (not None, not a flag, not an empty list) says its
    default in its help, either argparse's "(default: X)" or in its own words."""
    missing = []
    for name, parser in parsers.items():
        for action in parser._actions:
            d = action.default
            if (not action.option_strings or action.nargs == 0 or d is None or d is argparse.SUPPRESS
                    or isinstance(d, bool) or (isinstance(d, (str, list, tuple)) and not d)):
                continue
            if "default" not in _option_help(parser, action).lower():
                missing.append(f"{name} {action.option_strings[0]}")
    assert missing == []


@pytest.mark.parametrize("command, option, shown", [
    ("vclip demo", "--steps", "(default: 4000)"),
    ("vclip demo", "--out", "(default: runs/demo)"),
    ("vclip demo", "--seed", "(default: 0)"),
    ("vclip describe", "--base-url", "https://api.openai.com/v1"),
    ("vclip describe", "--retries", "(default: 6)"),
    ("vclip describe", "--timeout", "(default: 60.0)"),
    ("vclip describe", "--num", "(default: 4)"),
    ("vclip data synth", "--videos-per-class", "(default: 24)"),
    ("vclip data synth", "--frames", "(default: 16)"),
    ("vclip data synth", "--size", "(default 96)"),
    ("vclip data synth", "--fps", "(default: 8)"),
    ("vclip data prepare", "--short-side", "default 320, 256 with --cache"),
    ("vclip bench matmul", "--repeats", "(default: 3)"),
])
def test_named_defaults(parsers, command, option, shown):
    parser = parsers[command]
    action = next(a for a in parser._actions if option in a.option_strings)
    assert shown in _option_help(parser, action)


def test_flags_do_not_print_a_false_default(parsers):
    text = _one_line(parsers["vclip data prepare"].format_help())
    assert "(default: False)" not in text and "(default: None)" not in text
    assert "no progress bar" in text


def test_wise_help_prints_a_single_percent(parsers):
    text = _one_line(parsers["vclip wise"].format_help())
    assert "20 % CLIP, 80 % fine-tuned" in text


def test_run_spells_protocols_one_way_in_help_and_errors(parsers, capsys):
    from vclip.protocols.runner import CLI_NAMES

    assert CLI_NAMES == ("fully-supervised", "few-shot", "zero-shot", "base-to-novel")
    parser = parsers["vclip run"]
    action = next(a for a in parser._actions if a.dest == "protocol")
    help_text = _option_help(parser, action)
    assert cli.main(["run", "few_shots", "--data", "nope.yaml", "--out", "nope"]) == 2
    err = capsys.readouterr().err
    for name in CLI_NAMES:
        assert name in help_text and name in err
    assert not re.search(r"fully_supervised|few_shot|zero_shot|base_to_novel", help_text + err.replace("few_shots", ""))


def test_top_level_description_is_plain(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert cli.DESCRIPTION in _one_line(out) and "``" not in out


def test_pyproject_description_names_only_implemented_methods():
    from vclip.methods import METHODS

    text = (ROOT / "pyproject.toml").read_text()
    description = re.search(r'^description = "(.*)"$', text, re.M).group(1)
    key = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    registry = {key(m) for m in METHODS}
    registered_as = {"viltclip": "vilt"}  # paper name -> registry key where they differ
    claimed = [m for m in ("X-CLIP", "OST", "ViFi-CLIP", "ViLT-CLIP", "MoTED", "ALT") if re.search(rf"\b{m}\b", description)]
    assert claimed and [m for m in claimed if registered_as.get(key(m), key(m)) not in registry] == []
