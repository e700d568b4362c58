"""Demo training on a busy CPU: torch's OpenMP threads spinning (the default) against sleeping
(``OMP_WAIT_POLICY=PASSIVE``, what the commands ask for), with ``--busy`` competing busy-loop
processes, in the same run.

Each variant is a fresh process (OpenMP reads the policy when torch loads) that trains the
``m-flyt-demo`` preset for ``--steps`` steps on the built demo pool and reports its mean step time
(the first steps left out); the ratios are what the commands' choice is based on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    import torch
    if sys.argv[2] != "default":
        torch.set_num_threads(int(sys.argv[2]))
    from flyt_datacomp.demo import DemoPool
    from flyt_datacomp.flyt.config import build_config
    from flyt_datacomp.flyt.trainer import Trainer
    demo = DemoPool.open(sys.argv[1])
    cfg = build_config("m-flyt-demo", demo.train_paths(), {"steps": int(sys.argv[3]), "checkpoint_every": 10_000})
    with tempfile.TemporaryDirectory() as d:
        Trainer(cfg, Path(d) / "run", progress=False).run()
        times = [json.loads(line)["step_time"] for line in open(Path(d) / "run" / "metrics.jsonl")][4:]
    print(json.dumps({"step": sum(times) / len(times), "threads": torch.get_num_threads()}))
""")


def run(pool: str, policy: str | None, threads: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, pool, threads, str(steps)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=2, help="competing busy-loop processes")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--pool-dir", help="a built demo pool [default: the default one, built if needed]")
    args = ap.parse_args(argv)
    from flyt_datacomp.demo import build_demo_pool

    pool = args.pool_dir or str(build_demo_pool(progress=False).root)
    variants = [("idle, spinning (torch's default)", None, "default", 0), ("idle, passive", "PASSIVE", "default", 0),
                (f"{args.busy} busy, spinning", None, "default", args.busy),
                (f"{args.busy} busy, passive (the commands)", "PASSIVE", "default", args.busy),
                (f"{args.busy} busy, one thread", None, "1", args.busy)]
    results = {}
    for label, policy, threads, busy in variants:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            results[label] = run(pool, policy, threads, args.steps)["step"]
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        print(f"{label:40s} {results[label]:.3f} s per step")
    spin, passive = results[f"{args.busy} busy, spinning"], results[f"{args.busy} busy, passive (the commands)"]
    idle = results["idle, passive"] / results["idle, spinning (torch's default)"]
    print(f"busy machine: passive x{spin / passive:.1f} faster than spinning; idle machine: passive costs x{idle:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
