"""benchmarks/mutation.sh (mutation testing, not run in CI): its module → test-subset map names files
that exist, every core module has a subset, and bad arguments are refused before anything runs."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mutation.sh"
CORE = ["vclip/methods/od_solver.py", "vclip/methods/ost.py", "vclip/methods/xclip.py", "vclip/methods/clip.py",
        "vclip/engine/trainer.py", "vclip/engine/evaluate.py", "vclip/engine/metrics.py", "vclip/engine/optim.py",
        "vclip/data/transforms.py", "vclip/data/sampling.py", "vclip/backbone/hooks.py"]


def subsets() -> dict[str, list[str]]:
    text = SCRIPT.read_text()
    return {m: tests.split() for m, tests in re.findall(r'^\s*\[(vclip/[\w/]+\.py)\]="([^"]*)"', text, re.M)}


def test_every_core_module_has_an_existing_test_subset():
    table = subsets()
    assert sorted(table) == sorted(CORE)
    order = re.search(r"^ORDER=\(([^)]*)\)", SCRIPT.read_text(), re.M | re.S).group(1).split()
    assert sorted(order) == sorted(CORE)
    for module, tests in table.items():
        assert (ROOT / module).is_file(), module
        assert tests and all((ROOT / t).is_file() for t in tests), (module, tests)


def test_unknown_module_is_refused(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "vclip/nope.py"], capture_output=True, text=True, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/true", "MUTATION_DIR": str(tmp_path / "m")})
    assert r.returncode == 2
    assert "no test subset for vclip/nope.py" in r.stderr
    assert not (tmp_path / "m").exists()
