#!/usr/bin/env bash
# Mutation testing of vclip's core modules with mutmut 3 (a dev dependency: pip install -e '.[dev]').
# Not run in CI: a module takes minutes to an hour on a 2-core machine.
#
#   bash benchmarks/mutation.sh                          # every module below, smallest first
#   bash benchmarks/mutation.sh vclip/engine/metrics.py  # one module (or several)
#
# Each module is mutated alone, against its own test subset (the test files that cover it, `-x`,
# no slow tests, no torch.compile tests, minus the DESELECT ids: 2-process DDP tests, slow parity cases), in a
# scratch copy of the repository under .mutation/<module>/ (mutmut rewrites the code it mutates
# under mutants/; the working tree is never touched). Per module it prints and
# records (benchmarks/results/mutation/<module>.txt) the counts by status and every surviving
# mutant's name; `cd .mutation/<module> && mutmut show <name>` shows a mutant's diff.
# Environment: PYTHON (default .venv/bin/python, else python3), MUTATION_DIR (default .mutation),
# MUTATION_RESULTS (default benchmarks/results/mutation).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
PYTHON="$(command -v "$PYTHON" || echo "$PYTHON")"
case "$PYTHON" in /*) ;; *) PYTHON="$ROOT/$PYTHON" ;; esac   # mutmut runs from the scratch copy
WORK="${MUTATION_DIR:-$ROOT/.mutation}"
RESULTS="${MUTATION_RESULTS:-$ROOT/benchmarks/results/mutation}"

# module -> the test files that cover it (space separated)
declare -A TESTS=(
  [vclip/engine/metrics.py]="tests/engine/test_metrics.py"
  [vclip/data/sampling.py]="tests/data/test_sampling.py tests/data/test_activitynet.py"
  [vclip/data/transforms.py]="tests/data/test_transforms.py"
  [vclip/engine/optim.py]="tests/engine/test_optim.py"
  [vclip/methods/od_solver.py]="tests/methods/test_ost_by_hand.py tests/methods/test_ost.py"
  [vclip/backbone/hooks.py]="tests/backbone/test_hooks.py tests/backbone/test_hooks_v2.py"
  [vclip/methods/clip.py]="tests/methods/test_clip_mean.py tests/methods/test_vificlip.py"
  [vclip/methods/xclip.py]="tests/methods/test_xclip.py tests/methods/test_clip_mean.py"
  [vclip/methods/ost.py]="tests/methods/test_ost_by_hand.py tests/methods/test_ost.py"
  [vclip/engine/evaluate.py]="tests/engine/test_evaluate_units.py tests/engine/test_evaluate_views.py tests/protocols/test_metric_values.py"
  [vclip/engine/trainer.py]="tests/engine/test_trainer_units.py tests/engine/test_trainer_run_units.py tests/engine/test_gradients.py tests/engine/test_train_integration.py"
  [vclip/methods/vilt.py]="tests/methods/test_vilt.py tests/protocols/test_vilt_protocol.py"
  [vclip/methods/alt.py]="tests/methods/test_alt.py tests/text/test_alt_corpus.py"
  [vclip/methods/moted.py]="tests/methods/test_moted_units.py tests/methods/test_moted.py tests/protocols/test_moted_protocol.py"
  [vclip/data/cache.py]="tests/data/test_cache.py"
  [vclip/backbone/model.py]="tests/backbone/test_model.py tests/backbone/test_parity.py tests/backbone/test_hooks.py tests/backbone/test_hooks_v2.py tests/methods/test_token_merging.py tests/methods/test_fast_path_methods.py"
)
# tests of a subset left out (pytest --deselect): the 2-process DDP tests (mp.spawn children, which
# mutmut neither traces nor trampolines; minutes each) and the ViT-B/32 parity cases (9-18 s each,
# rerun by every surviving mutant; their tiny cases stay)
declare -A DESELECT=(
  [vclip/methods/vilt.py]="tests/methods/test_vilt.py::test_two_process_ddp_equals_one_process_for_both_loss_terms"
  [vclip/methods/moted.py]="tests/methods/test_moted.py::test_loss_terms_and_gradients_under_two_process_ddp_equal_one_process"
  [vclip/backbone/model.py]="tests/backbone/test_parity.py::test_round_trip_vclip_hf_vclip_is_exact[ViT-B-32] tests/backbone/test_parity.py::test_hf_directory_parity[ViT-B-32]"
)
# the default order: small and most valuable first
ORDER=(vclip/engine/metrics.py vclip/data/sampling.py vclip/data/transforms.py vclip/engine/optim.py
       vclip/methods/od_solver.py vclip/backbone/hooks.py vclip/methods/clip.py vclip/methods/xclip.py
       vclip/methods/ost.py vclip/engine/evaluate.py vclip/engine/trainer.py
       vclip/methods/vilt.py vclip/methods/alt.py vclip/methods/moted.py vclip/backbone/model.py
       vclip/data/cache.py)

if ! "$PYTHON" -c "import mutmut" 2>/dev/null; then
  echo "mutation.sh: mutmut is not installed for $PYTHON (pip install -e '.[dev]')" >&2; exit 2
fi
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
for m in "${modules[@]}"; do
  if [ -z "${TESTS[$m]+x}" ]; then
    echo "mutation.sh: no test subset for $m (known: ${ORDER[*]})" >&2; exit 2
  fi
done
MUTMUT="$(dirname "$PYTHON")/mutmut"
[ -x "$MUTMUT" ] || MUTMUT="mutmut"
mkdir -p "$RESULTS"

for m in "${modules[@]}"; do
  name="$(basename "$m" .py)"
  dir="$WORK/$(echo "$m" | tr / _ | sed 's/\.py$//')"
  rm -rf "$dir"; mkdir -p "$dir"
  cp -r vclip tests configs "$dir"/   # configs: tests load the shipped run configs
  find "$dir" -name __pycache__ -prune -exec rm -rf {} +
  # a scratch pyproject: mutmut's settings for this module only, pytest's markers
  {
    echo '[tool.mutmut]'
    echo 'source_paths = ["vclip"]'
    echo 'also_copy = ["configs"]'   # tests load the shipped run configs
    echo "only_mutate = [\"$m\"]"
    printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(for t in ${TESTS[$m]}; do printf '"%s", ' "$t"; done)"
    # torch.compile cannot trace mutmut's trampolines (dynamo fails in the clean run): deselected
    printf 'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-k", "not compile", %s]\n' \
      "$(for t in ${DESELECT[$m]:-}; do printf '"--deselect", "%s", ' "$t"; done)"
    echo 'use_git_change_detection = false'
    echo '[tool.pytest.ini_options]'
    echo 'markers = ["slow: longer tests"]'
  } > "$dir/pyproject.toml"
  echo "== $m  (tests: ${TESTS[$m]})"
  start=$(date +%s)
  # mutmut runs the tests in-process from mutants/: the package must not come from elsewhere
  (cd "$dir" && env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" >run.log 2>&1) \
    || { echo "mutmut run failed for $m; see $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  (cd "$dir" && env -u PYTHONPATH "$MUTMUT" results --all true >results.txt 2>&1) || true
  "$PYTHON" - "$m" "$dir/results.txt" "$secs" "$RESULTS/$name.txt" "${TESTS[$m]}" <<'PY'
import collections, datetime, os, platform, sys
module, results, secs, out, tests = sys.argv[1:6]
status = {}
for line in open(results):
    mutant, sep, st = line.strip().rpartition(": ")
    if sep and "__mutmut_" in mutant:
        status[mutant] = st
counts = collections.Counter(status.values())
survived = sorted(n for n, s in status.items() if s != "killed")
text = [f"module: {module}", f"tests: {tests}",
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.node()} "
        f"({os.cpu_count()} CPUs); {secs} s",
        f"mutants: {len(status)}; " + "; ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"not killed: {len(survived)}", *survived]
open(out, "w").write("\n".join(text) + "\n")
print("\n".join(text[:5]))
PY
done
