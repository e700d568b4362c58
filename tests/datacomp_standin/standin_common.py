"""Shared by the stand-in scripts: call records and failure injection, driven by env variables.

STANDIN_CALLS   append {"script", "argv", "rank", "world_size"} here for each call
STANDIN_FAIL    a script name: that script prints a few lines and exits with code 7
"""

import json
import os
import sys


def record_call(script):
    path = os.environ.get("STANDIN_CALLS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"script": script, "argv": sys.argv[1:], "rank": int(os.environ.get("RANK", 0)),
                                 "world_size": int(os.environ.get("WORLD_SIZE", 1))}) + "\n")


def maybe_fail(script, stage=""):
    if os.environ.get("STANDIN_FAIL") == script:
        print(f"{script}: working{stage}", flush=True)
        print(f"{script}: RuntimeError: simulated failure", file=sys.stderr, flush=True)
        sys.exit(7)
