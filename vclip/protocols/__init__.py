"""The four evaluation protocols of the CLIP-for-video papers (fully-supervised, few-shot,
zero-shot, base-to-novel): split files, runners, aggregation and tables. See docs/protocols.md."""

from vclip.protocols.aggregate import harmonic_mean, markdown_table, mean_std
from vclip.protocols.labels import match_kinetics, normalise_name, normalise_names
from vclip.protocols.runner import (
    ProtocolRun, load_data_spec, run_base_to_novel, run_few_shot, run_fully_supervised, run_zero_shot,
)

__all__ = ["ProtocolRun", "harmonic_mean", "load_data_spec", "markdown_table", "match_kinetics", "mean_std",
           "normalise_name", "normalise_names", "run_base_to_novel", "run_few_shot", "run_fully_supervised",
           "run_zero_shot"]
