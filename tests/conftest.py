import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest


@pytest.fixture(scope="session")
def tiny_demo_pool(tmp_path_factory):
    """A small demo pool (600 examples), built once per test session."""
    from flyt_datacomp.demo import build_demo_pool

    cache = tmp_path_factory.mktemp("demo-cache")
    return build_demo_pool(cache, pool_size=600, num_metadata_shards=2, shard_size=100,
                           scorer_steps=5, progress=False)
