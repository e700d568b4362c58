"""The built-in demo pool: a small but complete DataComp-format pool made offline.

``build_demo_pool()`` renders a captioned pool with a known mix of good and bad examples (v4, the
default: scikit-learn's bundled 8x8 digit scans, the task, among rendered letters, shapes and
textures, whose captions are correct but which do little for the digit test; v3: digits only),
scores it with two small scorer CLIPs, and writes it exactly like a real DataComp pool (metadata
shards, img2dataset image shards) plus a labelled downstream set of digits;
``domain_breakdown()`` and ``type_breakdown()`` report which kinds of examples a subset kept.
"""

from .build import build_demo_pool, default_cache_dir
from .pool import (
    DEMO_PRESETS,
    DEMO_SCS_ALPHA,
    DEMO_SCS_NUM_SAMPLES,
    DEMO_VERSIONS,
    STORE_PRESETS,
    DemoPool,
    TrainedModel,
    demo_scs_group_size,
    demo_scs_num_samples,
)
from .report import domain_breakdown, format_domain_breakdown, format_type_breakdown, type_breakdown

__all__ = ["DEMO_PRESETS", "DEMO_SCS_ALPHA", "DEMO_SCS_NUM_SAMPLES", "DEMO_VERSIONS", "STORE_PRESETS", "DemoPool", "TrainedModel",
           "build_demo_pool", "default_cache_dir", "demo_scs_group_size", "demo_scs_num_samples", "domain_breakdown",
           "format_domain_breakdown", "format_type_breakdown", "type_breakdown"]
