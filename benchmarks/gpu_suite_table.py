"""Merge the GPU suite's records (benchmarks/gpu_suite.sh) into OUTDIR/suite.json and OUTDIR/suite.md.

    python benchmarks/gpu_suite_table.py OUTDIR

Reads OUTDIR/parts.tsv (name, status, seconds, command per part) and each part's JSON record; a part
that failed, timed out or was skipped keeps its row with that status, so the table is always
written. Figures are medians of the record's timed runs (min–max beside them where the record has
them); MFU is the record's achieved TFLOP/s over the matmul ceiling it measured in the same process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vclip.io import atomic_write_text

# part name -> record file written by that part (gpu_suite.sh)
RECORDS = {
    "matmul_bf16": "matmul.json",
    "xclip_vs_hf": "xclip_vs_hf.json",
    "infer_b16": "infer_b16.json",
    "train_b16_bf16": "train_b16_bf16.json",
    "train_b16_fp16": "train_b16_fp16.json",
    "infer_b16_compile": "infer_b16_compile.json",
    "od_solver": "od_solver.json",
    "decode_1proc": "decode_1proc.json",
    "decode_gpu": "decode_gpu.json",
    "e2e_b16": "e2e_b16.json",
    "e2e_b16_cache": "e2e_b16_cache.json",
    "infer_b32_compile": "infer_b32_compile.json",
    "train_b16_compile": "train_b16_bf16_compile.json",
}


def _rate(d: dict | None) -> str:
    if not d:
        return "–"
    return f"{d['median']:,.0f} ({d['min']:,.0f}–{d['max']:,.0f})"


def _mem(m: dict | None) -> str:
    if not m:
        return "–"
    if "peak_allocated_gib" in m:
        return f"{m['peak_allocated_gib']:.1f} GiB peak allocated"
    return f"{m.get('peak_rss_gib', 0):.2f} GiB RSS (CPU)"


def _cfg(r: dict) -> str:
    c = r.get("config", {})
    bits = [c.get("method", ""), c.get("arch", ""), f"b{c.get('batch')}", f"{c.get('frames')}f", c.get("dtype", "")]
    if c.get("compile"):
        bits.append("compiled" + (f" ({c['compile_mode']})" if c.get("compile_mode") else ""))
    return " ".join(str(b) for b in bits if b)


def rows_for(name: str, r: dict) -> list[list[str]]:
    """Table rows (part, what, result, detail) for one record."""
    kind = r.get("kind")
    if kind == "matmul":
        c = r["ceiling"]
        return [[name, f"{c['n']}³ matmul {c['dtype']}", f"{c['tflops']:.3g} TFLOP/s", f"best {c['tflops_best']:.3g}"]]
    if kind in ("infer", "train"):
        unit = "views/s" if kind == "infer" else "clips/s"
        rate = r["views_per_s"] if kind == "infer" else r["clips_per_s"]
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
        return [[name, f"{kind} {_cfg(r)}", f"{_rate(rate)} {unit}", f"{_mem(r.get('memory'))}{mfu}"]]
    if kind == "xclip_vs_transformers":
        s = r["settings"]
        out = []
        for x in r["results"]:
            what = f"X-CLIP {x['arch']} b{s['batch']} {s['frames']}f {s['dtype']}{' compiled' if s['compile'] else ''}"
            out.append([name, what + " — vclip", f"{_rate(x['vclip'].get('views_per_s'))} views/s",
                        f"fp32 logits vs transformers: rel err {x['check']['rel_err_vclip_vs_hf_fp32']:.1e}"])
            out.append([name, what + " — transformers", f"{_rate(x['transformers'].get('views_per_s'))} views/s",
                        f"vclip / transformers = {x['ratio_vclip_over_hf']:.2f}×"])
        return out
    if kind == "end_to_end":
        s, res = r["settings"], r["results"]
        out = []
        st = res.get("stream")  # steady state (records before 2026-12-02 timed whole passes)
        how = (f"; steady state: {st['windows']} windows of {st['per_window']} batches after {st['warm']}"
               if st else "; whole passes")
        for stage in ("decode", "data", "model", "e2e"):
            if stage in res:
                backend = "" if s.get("backend", "pyav") == "pyav" else f", {s['backend']}"
                out.append([name, f"file → logits, {stage} stage ({s['arch']}, {s['frames']}f, {s['workers']} workers{backend})",
                            f"{_rate(res[stage].get('videos_per_s'))} videos/s",
                            r.get("source", "") + (how if stage != "model" else "")])
        if "bound" in res:
            out.append([name, "end to end bound by", str(res["bound"]), f"e2e / slowest stage = {res.get('e2e_over_min_stage', 0):.2f}"])
        if "cache_build_s" in res:
            out.append([name, "frame cache build (once)", f"{res['cache_build_s']:.1f} s", f"{s['workers']} processes"])
        return out
    if kind == "decode":  # bench_data.py: one process, no DataLoader
        out = []
        for x in r["results"]:
            detail = f"T = 32: {x['clips_per_s_T32']:.1f} clips/s"
            if "max_abs_diff_vs_pyav" in x:
                detail += f"; vs PyAV max |Δ| {x['max_abs_diff_vs_pyav']} (mean {x['mean_abs_diff_vs_pyav']}); {x.get('cpu_fallback')}"
            out.append([name, f"decode, one process, {x['backend']} ({r['source'].split(' (')[0]})",
                        f"{x['clips_per_s_T8']:.1f} clips/s (T = 8)", detail])
        for x in r.get("unavailable", []):
            out.append([name, f"decode, one process, {x['backend']}", "unavailable", x["reason"].replace("|", "/")])
        return out
    if "head" in r:  # bench_od_solver
        return [[name, f"OST OD solver B={h['B']} T={h['T']} K={h['K']} N={h['N']}",
                 f"{h['od_ms_per_video']:.3f} ms/video", f"names-only head {h['names_ms_per_video']:.3f} ms/video"]
                for h in r["head"]]
    return [[name, "record", "?", f"unknown record kind {kind!r}"]]


def _partial_record(path: Path) -> dict | None:
    """A record its benchmark saved part-way (``results.partial``: bench_end_to_end.py writes one after
    each stage), or None."""
    try:
        r = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return r if isinstance(r, dict) and isinstance(r.get("results"), dict) and r["results"].get("partial") else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: gpu_suite_table.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    parts_file = out / "parts.tsv"
    if not parts_file.exists():
        print(f"gpu_suite_table.py: {parts_file} does not exist (run benchmarks/gpu_suite.sh first)", file=sys.stderr)
        return 2
    parts, rows, records, machine = [], [], {}, None
    for line in parts_file.read_text().splitlines():
        name, status, took, cmd = (line.split("\t") + ["", "", "", ""])[:4]
        parts.append({"part": name, "status": status, "seconds": int(took or 0), "command": cmd})
        rec_file = out / RECORDS.get(name, f"{name}.json")
        if status == "ok" and rec_file.exists():
            try:
                r = json.loads(rec_file.read_text())
            except json.JSONDecodeError as e:
                rows.append([name, "record", "unreadable", f"{rec_file.name}: {e}"])
                continue
            records[name] = r
            machine = machine or r.get("machine") or r.get("info")
            rows.extend(rows_for(name, r))
        else:
            rows.append([name, "–", status if status != "ok" else "no record", cmd[:80]])
            partial = _partial_record(rec_file) if status != "ok" else None
            if partial is not None:  # a part stopped by its time box, with the stages it had timed
                records[name] = partial
                rows.extend([r[0], r[1] + " (partial)", *r[2:]] for r in rows_for(name, partial))
    m = machine or {}
    gpu = m.get("gpu")
    if isinstance(gpu, dict):
        gpu = f"{gpu.get('name')} ({gpu.get('memory_gib')} GiB)"
    where = f"{gpu or 'no GPU'}, {m.get('cpu_count', m.get('cores', '?'))} CPU cores"
    md = [f"Machine: {where}; torch {m.get('torch', '?')}, Python {m.get('python', '?')}. Parts: "
          + ", ".join(f"{p['part']} {p['status']} ({p['seconds']} s)" for p in parts) + ".", "",
          "| part | what | median (min–max) | detail |", "| --- | --- | --- | --- |"]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    atomic_write_text(out / "suite.md", "\n".join(md) + "\n")
    atomic_write_text(out / "suite.json", json.dumps({"machine": machine, "parts": parts, "records": records}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
