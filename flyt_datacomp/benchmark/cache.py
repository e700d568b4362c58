"""Benchmark results cached per (pool, subset file, seed, recipe), one small JSON file each.

A result's key is the pool's image-shard fingerprint, the subset file's sha256, the seed and the
recipe hash; its file name is a hash of that key and the file repeats the key, so a lookup never
returns another run's result. Files are written atomically (temp file + rename): an interrupted
run leaves either the complete result or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..io import provenance, write_json


def result_key(pool_fingerprint: str, subset_sha256: str, seed: int, recipe_hash: str) -> dict[str, Any]:
    return {"pool": pool_fingerprint, "subset_sha256": subset_sha256, "seed": int(seed), "recipe": recipe_hash}


class ResultCache:
    """A folder of per-run results; ``get`` returns None on a miss (or an unreadable file)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / key["recipe"][:12] / f"{digest[:24]}.json"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or "result" not in stored:
            return None
        return stored["result"]

    def put(self, key: dict[str, Any], result: dict[str, Any]) -> Path:
        path = self.path(key)
        write_json(path, provenance(kind="benchmark-result", key=key, result=result))
        return path
