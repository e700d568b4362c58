"""Stand-in for DataComp's resharder.py: same options and outputs, run on tiny shards.

Every input sample whose json uid occurs k times in the sorted subset is written k times keyed
<uid>-0..<uid>-(k-1), into output shards of --shard-size samples with {:08d}_stats.json, plus
meta.json and sample_ids.npy. STANDIN_DROP=1 silently drops the last output sample (as a failed
worker would), with exit code 0. STANDIN_HANG=PATH writes the first shard, then its pid to PATH,
and waits until PATH.go exists (at most 60 s) before going on.
"""

import argparse
import io
import json
import os
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from standin_common import maybe_fail, record_call

p = argparse.ArgumentParser()
p.add_argument("-i", "--input-dir", type=Path, required=True)
p.add_argument("-o", "--output-dir", type=Path, required=True)
p.add_argument("-s", "--subset-file", type=Path, required=True)
p.add_argument("-n", "--num-shards", type=int)
p.add_argument("-j", "--num-workers", type=int, default=os.cpu_count())
p.add_argument("--shard-size", type=int, default=10000)
p.add_argument("--shuffle-bufsize", type=int, default=0)
p.add_argument("--overwrite", action="store_true")
p.add_argument("--dry-run", action="store_true")
p.add_argument("-v", "--verbose", action="append_const", const=1)
p.add_argument("-q", "--quiet", action="append_const", const=1)
args = p.parse_args()
record_call("resharder")
maybe_fail("resharder")

if not args.output_dir.is_dir():
    sys.exit(f"output directory {args.output_dir} does not exist")
if any(args.output_dir.iterdir()) and not args.overwrite:
    sys.exit("refusing to overwrite non-empty directory; skip this check by passing --overwrite")
subset = np.load(args.subset_file, mmap_mode="r")
assert subset.dtype == np.dtype("u8,u8"), subset.dtype
print(f"[INFO] selecting a subset of {len(subset)} examples", flush=True)

samples = []
for tar_path in sorted(args.input_dir.glob("*.tar"))[: args.num_shards]:
    if not tar_path.with_name(tar_path.stem + "_stats.json").exists():
        continue
    with tarfile.open(tar_path) as tar:
        members = {}
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    for files in members.values():
        uid = json.loads(files["json"])["uid"]
        query = np.array([(int(uid[:16], 16), int(uid[16:], 16))], dtype=subset.dtype)
        n = int(np.searchsorted(subset, query, "right")[0] - np.searchsorted(subset, query, "left")[0])
        samples.extend((f"{uid}-{k}", files) for k in range(n))
if args.shuffle_bufsize > 0:
    random.Random(0).shuffle(samples)
if os.environ.get("STANDIN_DROP"):
    samples = samples[:-1]
    print("[ERROR] 1 workers failed", flush=True)

for shard, start in enumerate(range(0, len(samples), args.shard_size)):
    chunk = samples[start:start + args.shard_size]
    with tarfile.open(args.output_dir / f"{shard:08d}.tar", "w") as tar:
        for key, files in chunk:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (args.output_dir / f"{shard:08d}_stats.json").write_text(json.dumps({"successes": len(chunk)}))
    if shard == 0 and os.environ.get("STANDIN_HANG"):
        hang = Path(os.environ["STANDIN_HANG"])
        hang.write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not hang.with_name(hang.name + ".go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
shutil.copyfile(args.subset_file, args.output_dir / "sample_ids.npy")
(args.output_dir / "meta.json").write_text(json.dumps({"output_count": len(samples)}))
print(f"[INFO] output {len(samples)} images", flush=True)
