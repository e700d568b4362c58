"""Test-only input providers (registered by the tests that use them, and removed afterwards).

* ``sleepy:SECONDS`` -- the pool's clip_b32_similarity_score, after sleeping SECONDS in ``fit`` (a
  writer that holds the store's lock for a while);
* ``slow:READY`` -- the pool's clip_b32_similarity_score, after touching READY and sleeping 60 s in
  ``compute`` (a long shard task, in a worker process with ``--workers`` 2 or more);
* ``killer:TRIGGER`` -- the pool's clip_l14_similarity_score; logs every shard it computes to
  ``TRIGGER.log`` and, while the file TRIGGER exists, the task of the pool's last shard waits until
  the other shards are in the store and then kills its own worker process with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from flyt_datacomp.inputs.providers.base import PROVIDERS, Provider
from flyt_datacomp.store import shard_stem


class SleepyInput(Provider):
    kind = "sleepy"
    help = "test only: a pool column, after a sleep"
    positional = ("seconds",)
    columns = ("clip_b32_similarity_score",)

    def fit(self, ctx):
        time.sleep(float(self.args["seconds"]))
        return None

    def compute(self, data, state, shard_name):
        return data.columns["clip_b32_similarity_score"].astype(np.float32)


class SlowInput(Provider):
    kind = "slow"
    help = "test only: a pool column, after a long sleep in each shard task"
    positional = ("ready",)
    columns = ("clip_b32_similarity_score",)

    def compute(self, data, state, shard_name):
        Path(self.args["ready"]).touch()
        time.sleep(60)
        return data.columns["clip_b32_similarity_score"].astype(np.float32)


class KillerInput(Provider):
    kind = "killer"
    help = "test only: kills its worker on the last shard while a trigger file exists"
    positional = ("trigger",)
    columns = ("clip_l14_similarity_score",)

    def fit(self, ctx):
        stems = [shard_stem(s.parquet) for s in ctx.pool.shards]
        store = Path(ctx.work_dir).parent
        return {"last": stems[-1], "others": [str(store / f"{s}.parquet") for s in stems[:-1]]}

    def compute(self, data, state, shard_name):
        trigger = self.args["trigger"]
        with open(trigger + ".log", "a") as fh:
            fh.write(shard_name + "\n")
        if shard_name == state["last"] and os.path.exists(trigger):
            deadline = time.time() + 60
            while not all(os.path.exists(p) for p in state["others"]) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return data.columns["clip_l14_similarity_score"].astype(np.float32)


TEST_PROVIDERS = (SleepyInput, SlowInput, KillerInput)


def register() -> None:
    for cls in TEST_PROVIDERS:
        PROVIDERS.setdefault(cls.kind, cls)


def unregister() -> None:
    for cls in TEST_PROVIDERS:
        if PROVIDERS.get(cls.kind) is cls:
            del PROVIDERS[cls.kind]
