"""The ``vclip`` command: a command module that cannot be loaded is a clear error, never a
silently missing command."""

import pytest

from vclip import cli


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _fails_clearly(capsys, module, *needles, argv=()):
    assert cli.main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vclip: error: ") and module in lines[0]
    for n in needles:
        assert n in lines[0]
    return lines[0]


def test_every_command_module_loads():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"train", "eval", "demo", "wise"} <= set(sub.choices)


def test_missing_command_module_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["vclip.data.commands", "vclip.no_such_commands"])
    _fails_clearly(capsys, "vclip.no_such_commands", "ModuleNotFoundError")
    _fails_clearly(capsys, "vclip.no_such_commands", "ModuleNotFoundError", argv=["data", "--help"])
    with pytest.raises(cli.CommandImportError, match="vclip.no_such_commands") as info:
        cli.build_parser()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_command_module_raising_import_error(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "vclip_test_broken_cmds",
                   'raise ImportError("libavfoo.so.1: cannot open shared object file\\n(second line)")\n')
    monkeypatch.setattr(cli, "COMMAND_MODULES", [name])
    line = _fails_clearly(capsys, name, "ImportError", "libavfoo.so.1")
    assert "(second line)" in line  # the message is kept, on one line


def test_command_module_with_missing_dependency(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "vclip_test_dep_cmds", "import vclip_no_such_dependency\n")
    monkeypatch.setattr(cli, "COMMAND_MODULES", [name])
    _fails_clearly(capsys, name, "ModuleNotFoundError", "vclip_no_such_dependency")


def test_command_module_without_register(tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "vclip_test_noreg_cmds", "X = 1\n")
    monkeypatch.setattr(cli, "COMMAND_MODULES", [name])
    _fails_clearly(capsys, name, "register")


def test_verbose_adds_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["vclip.no_such_commands"])
    assert cli.main(["-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("vclip: error: ")


def test_overrides_after_options_are_overrides(monkeypatch, capsys):
    """KEY=VALUE may come after the options, as users type them; a stray word is still refused."""
    from vclip.protocols import commands

    seen = {}
    monkeypatch.setattr(commands, "_run", lambda args: seen.setdefault("o", args.overrides) and 0)
    assert cli.main(["run", "few-shot", "a.b=1", "--data", "d.yaml", "--out", "o", "--shots", "2",
                 "train.lr=1e-4", "model.method=xclip"]) == 0
    assert seen["o"] == ["a.b=1", "train.lr=1e-4", "model.method=xclip"]
    for stray in (["oops"], ["--nope=1"], ["=1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["run", "few-shot", "--data", "d.yaml", "--out", "o", *stray])
        assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides keeps refusing them
        cli.main(["pretrain", "--world", "w", "--out", "x.pt", "a.b=1"])
