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


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (CPU tests stay fast and reproducible on shared machines)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
