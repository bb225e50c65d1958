"""The ``vclip`` command.

Each area of the package contributes its sub-commands through a ``register(subparsers)`` function
(``vclip.backbone.commands``, ``vclip.data.commands``, ...). Handlers receive the parsed
``argparse.Namespace`` and return an exit code. ``VclipError`` is printed as one line, never as a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vclip", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # an area not built yet
            if e.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
