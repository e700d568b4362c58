"""Reading tar shards: our reader (``flyt.tars.iter_tar``) against webdataset's, in this process.

    python bench/bench_tar_reader.py [--shards DIR] [--rounds 5]

Default shards: the demo pool's image shards (img2dataset layout: jpg + txt + json per sample),
built once like ``flyt-datacomp filter --demo`` does. Both readers stream raw samples (bytes, no
decoding) from every shard in sorted order; the rounds alternate the readers so machine load hits
both alike, and the best round of each is reported as samples per second. Two workloads: every
payload (what a training stream reads) and json only (the join report). The readers must yield
the same keys and payloads; the script checks that first.

webdataset is not a dependency of flyt-datacomp; run this where it is installed
(``pip install webdataset``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

from flyt_datacomp.tars import iter_tar, list_shards


def ours(urls, json_only):
    for url in urls:
        yield from iter_tar(url, extensions=("json",) if json_only else None)


def webdataset_reader(urls, json_only):
    """webdataset's own tar expansion and key grouping (what ``wds.WebDataset`` runs), minus its
    shard shuffling and worker splitting."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    select = (lambda name: name.endswith(".json")) if json_only else None
    yield from group_by_keys(tar_file_expander(url_opener({"url": u} for u in urls), select_files=select))


def webdataset_pipeline(urls, json_only):
    """The plain ``wds.WebDataset(urls)`` pipeline (no shuffle), as most training code uses it."""
    import webdataset as wds

    select = (lambda name: name.endswith(".json")) if json_only else None
    yield from wds.WebDataset(urls, shardshuffle=False, empty_check=False, select_files=select)


READERS = {"ours": ours, "webdataset tariterators": webdataset_reader, "webdataset WebDataset": webdataset_pipeline}


def digest(samples, json_only) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    for s in samples:
        n += 1
        h.update(s["__key__"].encode())
        for ext in sorted(k for k in s if not k.startswith("__")):
            if json_only and ext != "json":
                continue
            h.update(ext.encode())
            h.update(s[ext])
    return n, h.hexdigest()


def rate(reader, urls, json_only) -> float:
    t = time.perf_counter()
    n = sum(1 for _ in reader(urls, json_only))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", default=None, help="folder of tar shards (default: the demo pool's)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.shards is None:
        from flyt_datacomp.demo import build_demo_pool

        args.shards = str(build_demo_pool(progress=False).shards_dir)
    urls = list_shards(args.shards)
    import webdataset

    print(f"{len(urls)} shards in {args.shards}; webdataset {webdataset.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")
    for json_only in (False, True):
        label = "json only" if json_only else "all payloads"
        reference = digest(ours(urls, json_only), json_only)
        for name, reader in READERS.items():
            got = digest(reader(urls, json_only), json_only)
            assert got == reference, f"{name} read different samples than ours ({label})"
        best = {name: 0.0 for name in READERS}
        for _ in range(args.rounds):
            for name, reader in READERS.items():
                best[name] = max(best[name], rate(reader, urls, json_only))
        print(f"{label}: {reference[0]:,} samples, identical from every reader; best of {args.rounds} rounds:")
        for name, r in best.items():
            print(f"  {name:<26} {r:>10,.0f} samples/s   ours / this: x{best['ours'] / r:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
