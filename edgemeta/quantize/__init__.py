"""int8 conversion, bundle export and the float-vs-int8 report (host only)."""

from edgemeta.quantize.convert import convert_float, convert_int8, representative_sample
from edgemeta.quantize.export import export_bundle, make_manifest
from edgemeta.quantize.prune import kernel_sparsity, magnitude_prune
from edgemeta.quantize.report import QuantReport, compare_float_int8, int8_episode_accuracies

__all__ = [
    "QuantReport",
    "compare_float_int8",
    "convert_float",
    "convert_int8",
    "export_bundle",
    "int8_episode_accuracies",
    "kernel_sparsity",
    "magnitude_prune",
    "make_manifest",
    "representative_sample",
]
