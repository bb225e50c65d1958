#!/usr/bin/env bash
# The GPU suite: one command, run first on any lent GPU machine (docs/performance.md, "GPU suite").
#
#   bash benchmarks/gpu_suite.sh OUTDIR              # on the GPU box: ~8 min, fail-soft
#   bash benchmarks/gpu_suite.sh OUTDIR --dry-run    # anywhere: tiny shapes on the CPU, structure only
#
# Each part is a benchmark command with its own time box; a part that fails or runs out of time is
# recorded as such and the suite goes on, so one run always returns numbers. Every part writes its
# JSON record (machine, date, exact command) to OUTDIR; benchmarks/gpu_suite_table.py then merges
# them into OUTDIR/suite.json and OUTDIR/suite.md (the table pasted into docs/performance.md).
#
# The lent machine has Python 3.12 with a CUDA torch, transformers and timm but no PyAV or ftfy and no
# package index: run benchmarks/fetch_gpu_wheels.sh beforehand where pip works, and carry .whl/.
# e2e_b16_cache is e2e_b16 read from the frame cache (vclip data prepare --cache), built first from
# the same clips (its build time is a row of the table). Both time the loader in its steady state
# (every worker busy; bench_end_to_end.py's docstring).
# Env: SUITE_BUDGET_S (total seconds, default 480), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: gpu_suite.sh OUTDIR [--dry-run]}"
DRY=0; [[ "${2:-}" == "--dry-run" ]] && DRY=1
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${SUITE_BUDGET_S:-480}"
START=$(date +%s)
LOG="$OUT/suite.log"
: > "$LOG"
: > "$OUT/parts.tsv"

if [[ -d .whl ]] && ! "$PY" -c "import av, ftfy, importlib.util as u; assert u.find_spec('torchcodec')" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vclip_site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/vclip_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
VCLIP=("$PY" -m vclip)

# LD_LIBRARY_PATH for torchcodec: FFmpeg 8 from PyAV's wheel (its av.libs files renamed by auditwheel,
# so a folder of links under the names torchcodec loads: libavcodec.so.62 ...) and the CUDA runtime
# and NVRTC of the pip-installed nvidia packages (libcudart.so.13, libnvrtc.so.13), then what was set.
torchcodec_libs() {
  local links="${TMPDIR:-/tmp}/vclip_ffmpeg_libs" avlibs f b dirs
  avlibs=$("$PY" -c "import av, os; print(os.path.join(os.path.dirname(os.path.dirname(av.__file__)), 'av.libs'))" 2>/dev/null)
  if [[ -n "$avlibs" && -d "$avlibs" ]]; then
    mkdir -p "$links"
    for f in "$avlibs"/*; do
      b=$(basename "$f"); ln -sf "$f" "$links/$b"
      [[ "$b" =~ ^(lib(av|sw)[a-z]+)-[0-9a-f]+\.so\.([0-9]+) ]] && ln -sf "$f" "$links/${BASH_REMATCH[1]}.so.${BASH_REMATCH[3]}"
    done
  else
    links=""
  fi
  dirs=$("$PY" -c "
import glob, os, site
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
found = {os.path.dirname(f) for r in roots for pat in ('libcudart.so.*', 'libnvrtc.so.*')
         for f in glob.glob(os.path.join(r, 'nvidia', '**', pat), recursive=True)}
print(':'.join(sorted(found)))" 2>/dev/null)
  echo "${links}${dirs:+:$dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# part NAME LIMIT_S CMD...  — runs CMD with a time box of min(LIMIT_S, what is left of the budget)
part() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    printf '%s\tskipped\t0\tno time left in the suite budget\n' "$name" >>"$OUT/parts.tsv"; return
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local prev="" a  # a record left in OUTDIR by an earlier run must not pass for this run's
  for a in "$@"; do [[ "$prev" == "--json" ]] && rm -f -- "$a"; prev="$a"; done
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1; rc=$?
  local took=$(( $(date +%s) - t0 )) status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed(rc=$rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$*" >>"$OUT/parts.tsv"
  echo "   -> $status in ${took}s" | tee -a "$LOG"
}

if (( DRY )); then
  # tiny shapes on the CPU: checks that every part runs and the table is written, not speed
  A16=tiny; A32=tiny; B=2; BT=2; K=16; F=4; DEV=(--device cpu); DT=fp32; MM=(--size 256); V=8; W=2; EA=tiny
  OD=(--device cpu --batch 2 --frames 8 --classes 16 --repeat 2 --skip-e2e); EXTRA=(--repeats 2 --classes 16)
  ESRC=synth; C=(); NOMFU=(--no-mfu)  # compiling tiny models on 2 cores would take minutes: structure only
else
  A16=ViT-B-16; A32=ViT-B-32; B=64; BT=16; K=400; F=8; DEV=(--device cuda); DT=bf16; MM=(); V=256; W=$(nproc); EA=ViT-B-16
  OD=(--device cuda --batch 8 --frames 8 32 --classes 101 400 --repeat 5); EXTRA=(--repeats 5)
  ESRC=clips; C=(--compile); NOMFU=()
  nvidia-smi >>"$LOG" 2>&1 || true
fi
J="$OUT"

part matmul_bf16          60 "${VCLIP[@]}" bench matmul "${DEV[@]}" --dtype "$DT" "${MM[@]}" --json "$J/matmul.json"
part xclip_vs_hf          150 "$PY" benchmarks/bench_xclip_vs_hf.py --archs $( ((DRY)) && echo tiny || echo "$A16 $A32") --batch "$B" --frames "$F" \
                              "${DEV[@]}" --dtype "$DT" "${EXTRA[@]}" --json "$J/xclip_vs_hf.json"
part infer_b16            60 "${VCLIP[@]}" bench infer --arch "$A16" --batch "$B" --frames "$F" --classes "$K" "${DEV[@]}" "${NOMFU[@]}" \
                              --dtype "$DT" --json "$J/infer_b16.json"
part train_b16_bf16       75 "${VCLIP[@]}" bench train --arch "$A16" --batch "$BT" --frames "$F" --classes "$K" "${DEV[@]}" "${NOMFU[@]}" \
                              --dtype "$DT" --json "$J/train_b16_bf16.json"
part train_b16_fp16       75 "${VCLIP[@]}" bench train --arch "$A16" --batch "$BT" --frames "$F" --classes "$K" "${DEV[@]}" \
                              --dtype "$( ((DRY)) && echo fp32 || echo fp16)" --json "$J/train_b16_fp16.json"
part infer_b16_compile    150 "${VCLIP[@]}" bench infer --arch "$A16" --batch "$B" --frames "$F" --classes "$K" "${DEV[@]}" "${NOMFU[@]}" \
                              --dtype "$DT" "${C[@]}" --json "$J/infer_b16_compile.json"
part od_solver            60 "$PY" benchmarks/bench_od_solver.py "${OD[@]}" --json "$J/od_solver.json"
part decode_1proc         60 "$PY" benchmarks/bench_data.py --backends pyav --num-videos "$( ((DRY)) && echo 2 || echo 8)" \
                              --repeats 3 --json "$J/decode_1proc.json"
# the same clips decoded on the GPU (torchcodec NVDEC, frames back in host memory); where it cannot
# run (no CUDA, no torchcodec CUDA build, no libnvcuvid) its row says why
part decode_gpu           60 env LD_LIBRARY_PATH="$(torchcodec_libs)" "$PY" benchmarks/bench_data.py --backends torchcodec-cuda \
                              --num-videos "$( ((DRY)) && echo 2 || echo 8)" --repeats 3 --json "$J/decode_gpu.json"
part e2e_b16              150 "$PY" benchmarks/bench_end_to_end.py --source "$ESRC" --videos "$V" --workers "$W" \
                              --arch "$EA" --batch "$B" --frames "$F" --dtype "$DT" "${DEV[@]}" --windows 2 \
                              --stages data,model,e2e --json "$J/e2e_b16.json"
part e2e_b16_cache        90 "$PY" benchmarks/bench_end_to_end.py --source "$ESRC" --videos "$V" --workers "$W" \
                              --arch "$EA" --batch "$B" --frames "$F" --dtype "$DT" "${DEV[@]}" --windows 2 \
                              --stages data,model,e2e --backend cache --json "$J/e2e_b16_cache.json"
part infer_b32_compile    120 "${VCLIP[@]}" bench infer --arch "$A32" --batch "$B" --frames "$F" --classes "$K" "${DEV[@]}" "${NOMFU[@]}" \
                              --dtype "$DT" "${C[@]}" --json "$J/infer_b32_compile.json"
part train_b16_compile    150 "${VCLIP[@]}" bench train --arch "$A16" --batch "$BT" --frames "$F" --classes "$K" "${DEV[@]}" "${NOMFU[@]}" \
                              --dtype "$DT" "${C[@]}" --json "$J/train_b16_bf16_compile.json"

"$PY" benchmarks/gpu_suite_table.py "$OUT" | tee -a "$LOG"
echo "suite: $(( $(date +%s) - START ))s in all; records in $OUT"
