"""The ``vclip`` command.

Each area of the package contributes its sub-commands through a ``register(subparsers)`` function
(``vclip.backbone.commands``, ``vclip.data.commands``, ...). Handlers receive the parsed
``argparse.Namespace`` and return an exit code. ``VclipError`` is printed as one line, never as a
traceback. A command module that cannot be imported (a missing dependency, a broken install) is
such an error too — exit status 2, the module and the import error named — never a silently
missing command; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
]


class CommandImportError(VclipError):
    """A module of :data:`COMMAND_MODULES` could not be imported or has no ``register``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``vclip`` parser with every command of :data:`COMMAND_MODULES`; raises
    :class:`CommandImportError` (the cause chained) when one of them cannot be loaded."""
    parser = argparse.ArgumentParser(prog="vclip", description=__doc__.splitlines()[0])
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


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandImportError as e:
        if e.__cause__ is not None and {"-v", "--verbose"} & set(sys.argv[1:] if argv is None else argv):
            traceback.print_exception(e.__cause__)
        print(f"vclip: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except VclipError as e:
        print(f"vclip {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
