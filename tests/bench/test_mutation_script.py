"""benchmarks/mutation.sh (mutation testing, not run in CI): its module → test-subset map names files
that exist, every core module has a subset, and bad arguments are refused before anything runs."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mutation.sh"
CORE = ["vclip/methods/od_solver.py", "vclip/methods/ost.py", "vclip/methods/xclip.py", "vclip/methods/clip.py",
        "vclip/engine/trainer.py", "vclip/engine/evaluate.py", "vclip/engine/metrics.py", "vclip/engine/optim.py",
        "vclip/data/transforms.py", "vclip/data/sampling.py", "vclip/backbone/hooks.py",
        "vclip/methods/vilt.py", "vclip/methods/alt.py", "vclip/methods/moted.py", "vclip/backbone/model.py",
        "vclip/data/cache.py"]


def subsets(table: str = "TESTS") -> dict[str, list[str]]:
    block = re.search(rf"^declare -A {table}=\((.*?)^\)", SCRIPT.read_text(), re.M | re.S).group(1)
    return {m: tests.split() for m, tests in re.findall(r'^\s*\[(vclip/[\w/]+\.py)\]="([^"]*)"', block, re.M)}


def test_every_core_module_has_an_existing_test_subset():
    table = subsets()
    assert sorted(table) == sorted(CORE)
    order = re.search(r"^ORDER=\(([^)]*)\)", SCRIPT.read_text(), re.M | re.S).group(1).split()
    assert sorted(order) == sorted(CORE)
    for module, tests in table.items():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), (module, tests)


def test_deselected_tests_exist_in_their_modules_subset():
    """A renamed test would silently stop being deselected (and run, slowly, under mutmut)."""
    table, deselect = subsets(), subsets("DESELECT")
    assert set(deselect) == {"vclip/methods/vilt.py", "vclip/methods/moted.py", "vclip/backbone/model.py"}
    for module, ids in deselect.items():
        for node in ids:
            path, name = node.split("::")
            name, _, param = name.partition("[")  # a parametrised case: its function and its id
            assert param.rstrip("]") in (ROOT / path).read_text(), node
            assert path in table[module], (module, node)
            assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), node


def test_unknown_module_is_refused(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "vclip/nope.py"], capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/true", "MUTATION_DIR": str(tmp_path / "m")})
    assert r.returncode == 2
    assert "no test subset for vclip/nope.py" in r.stderr
    assert not (tmp_path / "m").exists()


def test_a_relative_python_path_reaches_mutmut_from_the_scratch_copy(tmp_path):
    """PYTHON given relative to the repository (as the default .venv/bin/python is): mutmut runs from
    inside the scratch copy, so the script must resolve both before changing directory."""
    import os
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_python = bin_dir / "python"  # the mutmut check passes; the summary runs on the real Python
    fake_python.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exit 0\nexec {sys.executable} "$@"\n')
    fake_mutmut = bin_dir / "mutmut"  # `run` does nothing, `results` reports one killed mutant
    fake_mutmut.write_text('#!/bin/sh\n[ "$1" = "results" ] && echo "vclip.engine.metrics.x__mutmut_1: killed"\nexit 0\n')
    for f in (fake_python, fake_mutmut):
        f.chmod(0o755)
    rel = os.path.relpath(fake_python, ROOT)
    assert not rel.startswith("/")
    r = subprocess.run(["bash", str(SCRIPT), "vclip/engine/metrics.py"], capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": rel, "MUTATION_DIR": str(tmp_path / "m"),
                            "MUTATION_RESULTS": str(tmp_path / "results")})
    assert r.returncode == 0, r.stderr
    record = (tmp_path / "results" / "metrics.txt").read_text()
    assert "mutants: 1; killed: 1" in record and "not killed: 0" in record
