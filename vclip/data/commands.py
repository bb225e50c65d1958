"""``vclip data ...`` sub-commands. Each data module that offers a command defines
``register_cli(data_subparsers)``; this file only wires them together."""

from __future__ import annotations

import importlib

_MODULES = ["vclip.data.synthetic", "vclip.data.prepare", "vclip.data.world"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="dataset tools: synth, prepare, world")
    dsub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register_cli(dsub)
