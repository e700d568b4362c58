"""The built-in demo pool: a small but complete DataComp-format pool made from real digits, offline.

``build_demo_pool()`` renders scikit-learn's bundled 8x8 digit scans into a captioned pool with a
known mix of good and bad examples, scores it with two small scorer CLIPs, and writes it exactly
like a real DataComp pool (metadata shards, img2dataset image shards) plus a labelled downstream
set; ``type_breakdown()`` reports which kinds of examples a subset kept.
"""

from .build import build_demo_pool, default_cache_dir
from .pool import DEMO_PRESETS, DEMO_SCS_ALPHA, DEMO_SCS_NUM_SAMPLES, DemoPool, TrainedModel, demo_scs_group_size
from .report import format_type_breakdown, type_breakdown

__all__ = ["DEMO_PRESETS", "DEMO_SCS_ALPHA", "DEMO_SCS_NUM_SAMPLES", "DemoPool", "TrainedModel", "build_demo_pool",
           "default_cache_dir", "demo_scs_group_size", "format_type_breakdown", "type_breakdown"]
