"""Benchmark tooling: ``vclip bench`` (model throughput, memory, FLOPs, MFU) and the timing and
machine records the scripts in ``benchmarks/`` share. See ``docs/performance.md``."""

from vclip.bench.model import BenchConfig, bench_inference, bench_training, count_flops, matmul_ceiling
from vclip.bench.timing import MemoryMeter, Timing, machine_info, measure

__all__ = ["BenchConfig", "MemoryMeter", "Timing", "bench_inference", "bench_training", "count_flops",
           "machine_info", "matmul_ceiling", "measure"]
