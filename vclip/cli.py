"""The ``vclip`` command.

Each area of the package contributes its sub-commands through a ``register(subparsers)`` function
(``vclip.backbone.commands``, ``vclip.data.commands``, ...). Handlers receive the parsed
``argparse.Namespace`` and return an exit code. ``VclipError`` is printed as one line, never as a
traceback. A command module that cannot be imported (a missing dependency, a broken install) is
such an error too — exit status 2, the module and the import error named — never a silently
missing command; ``-v`` adds the traceback.

Every parser of the tree prints its help through :class:`HelpFormatter` (RST literals shown
plain, each option's default shown) — command modules get it without asking, since sub-parsers
inherit the parser class of :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import re
import sys
import traceback

from vclip.errors import VclipError

# modules that define ``register(subparsers)``; imported lazily so `vclip --help` stays fast
COMMAND_MODULES = [
    "vclip.engine.commands",
    "vclip.demo",
    "vclip.data.commands",
    "vclip.backbone.commands",
    "vclip.methods.flops",
    "vclip.text.commands",
    "vclip.methods.wise",
    "vclip.protocols.commands",
    "vclip.bench.commands",
    "vclip.pretrain",
]


#: the one-line description of ``vclip --help``
DESCRIPTION = "vclip: image-text CLIP models turned into video action recognizers."

_LITERAL = re.compile(r"``(.+?)``")            # RST inline literal
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")  # RST role such as :mod:`vclip.io`


def plain_text(text: str) -> str:
    """``text`` with RST inline markup (````x````, ``:mod:`x```) reduced to plain ``x``."""
    return _ROLE.sub(r"\1", _LITERAL.sub(r"\1", text))


def _default_worth_showing(action: argparse.Action) -> bool:
    """Whether help should print ``action``'s default: options (and optional positionals) with a
    value to show; not flags (``store_true``...), not None / empty values, not ``--help``."""
    if action.nargs == 0 or action.help == argparse.SUPPRESS:
        return False
    if not action.option_strings and action.nargs not in ("?", "*"):
        return False
    d = action.default
    if d is None or d is argparse.SUPPRESS or isinstance(d, bool):
        return False
    return not (isinstance(d, (str, list, tuple, dict, set)) and len(d) == 0)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter with two changes: RST inline markup of docstrings used as
    descriptions prints as plain text, and every option with a default worth showing (see
    :func:`_default_worth_showing`) ends its help with ``(default: VALUE)`` unless its help already
    speaks of the default (``default`` in the text) — an option without help gets that line alone."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return plain_text(super()._expand_help(action))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _default_worth_showing(action) and not re.search(r"\bdefault", text, re.IGNORECASE):
            text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _default_worth_showing(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """The parser class of every ``vclip`` (sub-)command: :class:`HelpFormatter` by default.
    ``add_subparsers`` hands a parser's class down, so ``register`` functions need nothing."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


class CommandImportError(VclipError):
    """A module of :data:`COMMAND_MODULES` could not be imported or has no ``register``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``vclip`` parser with every command of :data:`COMMAND_MODULES`; raises
    :class:`CommandImportError` (the cause chained) when one of them cannot be loaded."""
    parser = ArgumentParser(prog="vclip", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # ImportError above all, but any failure while importing counts
            why = " ".join(str(e).split())  # one line
            raise CommandImportError(f"cannot load the commands of {name}: {type(e).__name__}: {why}") from e
        register = getattr(module, "register", None)
        if not callable(register):
            raise CommandImportError(f"cannot load the commands of {name}: it has no register(subparsers)")
        register(sub)
    return parser


def _is_override(arg: str) -> bool:
    key, eq, _ = arg.partition("=")
    return bool(eq) and bool(key) and not arg.startswith("-")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandImportError as e:
        if e.__cause__ is not None and {"-v", "--verbose"} & set(sys.argv[1:] if argv is None else argv):
            traceback.print_exception(e.__cause__)
        print(f"vclip: error: {e}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:
        # KEY=VALUE overrides after an option (`vclip run few-shot --data d --out o train.lr=1e-4`)
        # land here: argparse fills a `nargs="*"` positional once, from the first run of positionals
        if isinstance(getattr(args, "overrides", None), list) and all(_is_override(a) for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from vclip.errors import TrainingInterrupted

    try:
        return int(args.handler(args) or 0)
    except TrainingInterrupted as e:  # a run stopped by SIGINT/SIGTERM after saving: the shell's code
        print(f"vclip {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except VclipError as e:
        print(f"vclip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
