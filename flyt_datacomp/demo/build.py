"""Building the demo pool: a small but complete DataComp-format pool, offline.

Two versions can be built (``version``): ``v4``, the default, mixes the target domain (real
digits) with letters, shapes and textures whose captions are just as correct but which do little
for the digit test, and its scorer CLIPs are trained on a broad held-out mix of all domains
(:mod:`flyt_datacomp.demo.domains`); ``v3``, the previous version, holds digits only and its
scorer CLIPs saw clean digits only. A v3 build with this code is byte-identical to what the v3
code built.

:func:`build_demo_pool` writes, once per (version, seed, size and options), into the cache folder::

    demo-v4-seed0-n20000/
      metadata/<32-hex>.parquet + .npz   DataComp metadata shards (SPEC §1), plus ``noise_score``;
                                         ``dedup`` is all False (no pool image duplicates a test one)
      shards/{:08d}.tar + .parquet + _stats.json   img2dataset layout, ~10% "failed downloads"
      downstream/{:08d}.tar              labelled webdataset (jpg + cls) of the downstream-train digits
      downstream_test/{:08d}.tar         the same for the test digits
      classes.json                       classnames + zero-shot templates of the digits task
      truth.parquet                      each uid's true domain and type (tests and reports only; no
                                         other file exposes domains, types or duplicate flags)
      splits.json                        the scan indices of the three disjoint digit splits
      scorers/{b32,l14}.pt               the two scorer CLIPs (b32: the FLYT demo presets' reference)
      build.json                         completion marker: provenance + parameters (+ version tag)

The pool is built in a temporary folder beside the final one and renamed into place only when
complete, so an interrupted build leaves no partial pool visible; the folder of a build that was
killed (``kill -9``) is removed by the next build. The same seed and options give
byte-identical parquet, npz and tar contents on the same machine (fixed seeds everywhere; the
scorer training runs on the CPU with a fixed thread count).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..errors import FlytInputError
from ..io import provenance, remove_dead_temp_folders, temp_folder, write_json
from ..process import torch_threads
from . import digits as D
from . import domains as M
from .pool import DEMO_VERSIONS, DemoPool

# torch, open_clip and the scorers are imported only when a pool is actually built, so that
# returning an already built pool from the cache stays fast.

# v3: the npz ``dedup`` key no longer leaks the near-duplicate type; v4: digits among other domains
VERSIONS = DEMO_VERSIONS
DEFAULT_VERSION = "v4"
DEFAULT_POOL_SIZE = 20000
DEFAULT_METADATA_SHARDS = 4
DEFAULT_SHARD_SIZE = 1000
# b32, l14 training steps (batch 256): informative but imperfect scorers (docs/benchmark.md)
DEFAULT_SCORER_STEPS = {"v3": (50, 50), "v4": (90, 90)}
DOWNSTREAM_SHARD_SIZE = 100
DROP_FRACTION = 0.1
URL_PREFIX = "https://demo.flyt-datacomp.invalid/img/"
FAILED_MESSAGE = "HTTP Error 404: Not Found"
JPEG_QUALITY = 95


def default_cache_dir() -> Path:
    """``$FLYT_DATACOMP_CACHE`` if set, else ``~/.cache/flyt-datacomp``."""
    env = os.environ.get("FLYT_DATACOMP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flyt-datacomp"


def _scorer_steps(scorer_steps: int | Sequence[int] | None, version: str) -> tuple[int, int]:
    if scorer_steps is None:
        return DEFAULT_SCORER_STEPS[version]
    if isinstance(scorer_steps, (int, np.integer)):
        steps = (int(scorer_steps), int(scorer_steps))
    else:
        steps = tuple(int(s) for s in scorer_steps)
    if len(steps) != 2 or min(steps) < 1:
        raise FlytInputError(f"scorer_steps must be a positive int or a pair (b32, l14), got {scorer_steps!r}")
    return steps  # type: ignore[return-value]


def version_tag(version: str) -> str:
    return f"demo-{version}"


def check_version(version: str) -> str:
    if version not in VERSIONS:
        raise FlytInputError(f"unknown demo pool `version` {version!r}; choose one of {', '.join(VERSIONS)}",
                             params=["version"])
    return version


def pool_dir_name(seed: int, pool_size: int, params: dict, version: str = DEFAULT_VERSION) -> str:
    """``demo-v4-seed0-n20000``; non-default options add a short hash so builds never collide."""
    name = f"{version_tag(version)}-seed{seed}-n{pool_size}"
    extra = {k: params[k] for k in ("num_metadata_shards", "shard_size", "scorer_steps")}
    defaults = {
        "num_metadata_shards": DEFAULT_METADATA_SHARDS,
        "shard_size": DEFAULT_SHARD_SIZE,
        "scorer_steps": list(DEFAULT_SCORER_STEPS[version]),
    }
    if extra != defaults:
        name += "-" + hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return name


def build_demo_pool(
    cache_dir: str | os.PathLike | None = None,
    *,
    version: str | None = None,
    seed: int = 0,
    pool_size: int = DEFAULT_POOL_SIZE,
    num_metadata_shards: int = DEFAULT_METADATA_SHARDS,
    shard_size: int = DEFAULT_SHARD_SIZE,
    scorer_steps: int | Sequence[int] | None = None,
    progress: bool = True,
    force: bool = False,
    announce: Callable[[str], None] | None = None,
) -> DemoPool:
    """Build (once) and return the demo pool; see the module docstring for the layout.

    ``version`` is ``v4`` (the default, also for None: digits among letters, shapes and textures) or ``v3`` (digits
    only, byte-identical to the previous version's builds). ``scorer_steps`` is the number of
    training steps (batch 256) of the two scorer CLIPs, one int for both or a pair ``(b32, l14)``
    (default: the version's). A pool already complete in the cache (its ``build.json``
    exists) is returned at once unless ``force``. ``announce`` is told, in a sentence, when a build
    starts.
    """
    version = version or DEFAULT_VERSION
    check_version(version)
    if pool_size < 20:
        raise FlytInputError(f"pool_size must be at least 20, got {pool_size}")
    if not 1 <= num_metadata_shards <= pool_size:
        raise FlytInputError(f"num_metadata_shards must be in [1, pool_size], got {num_metadata_shards}")
    if shard_size < 1:
        raise FlytInputError(f"shard_size must be positive, got {shard_size}")
    steps = _scorer_steps(scorer_steps, version)
    params = {
        "seed": int(seed),
        "pool_size": int(pool_size),
        "num_metadata_shards": int(num_metadata_shards),
        "shard_size": int(shard_size),
        "scorer_steps": list(steps),
    }
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / pool_dir_name(seed, pool_size, params, version)
    pool = DemoPool.at(final, pool_size, version)
    if (final / "build.json").exists() and not force:
        return pool
    if announce is not None:
        announce(f"building the digits demo pool ({version}) in {final} (once, a few minutes on a laptop CPU: "
                 "the images, two small scorer CLIPs, the DataComp-format files)")

    cache.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_folders(final)  # builds killed before they finished
    tmp = temp_folder(final)
    try:
        import torch

        started = time.perf_counter()
        with torch_threads(min(torch.get_num_threads(), 8)):
            _build(tmp, {**params, "version": version}, progress)
        write_json(
            tmp / "build.json",
            provenance(
                kind="demo-pool", version_tag=version_tag(version), parameters=params,
                build_seconds=round(time.perf_counter() - started, 1),
                torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
            ),
        )
        if final.exists():
            if (final / "build.json").exists() and not force:  # a concurrent build won
                shutil.rmtree(tmp)
                return pool
            shutil.rmtree(final)  # a stale or forced-out folder
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return pool


def _salt(version: str) -> list[int]:
    """Seed salt per version: v3 keeps its own streams; v4's differ (other splits, images and uids,
    so that no v3 subset is mistaken for a v4 one)."""
    return [] if version == "v3" else [int(version[1:])]


def _rngs(seed: int, names: Sequence[str], version: str = "v3") -> dict[str, np.random.Generator]:
    seqs = np.random.SeedSequence([int(seed), 0x5EED, *_salt(version)]).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, seqs)}


def _scorer_seed(seed: int, offset: int, version: str = "v3") -> int:
    return int(np.random.SeedSequence([int(seed), offset, *_salt(version)]).generate_state(1)[0])


def _random_hex(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct random 32-char lowercase hex strings."""
    raw = rng.bytes(16 * n)
    out = [raw[16 * i : 16 * (i + 1)].hex() for i in range(n)]
    if len(set(out)) != n:  # 128-bit collisions: practically impossible
        raise RuntimeError("uid collision")
    return out


def _jpeg(grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB").save(
        buf, format="JPEG", quality=JPEG_QUALITY
    )
    return buf.getvalue()


def _decode_grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)


def _build(root: Path, params: dict, progress: bool) -> None:
    import torch

    from ..progress import progress_bar
    from . import scorers as S

    seed, n, version = params["seed"], params["pool_size"], params.get("version", "v3")
    rngs = _rngs(seed, ["splits", "pool", "uids", "drop", "noise", "stems", "downstream", "test"], version)

    # 1. Splits and digit banks.
    splits = D.split_digits(rngs["splits"])
    pool_bank = D.DigitBank(splits.images, splits.pool_source, splits.targets)
    down_bank = D.DigitBank(splits.images, splits.downstream_train, splits.targets)
    test_bank = D.DigitBank(splits.images, splits.test, splits.targets)
    (root / "splits.json").write_text(json.dumps(splits.as_dict()) + "\n")

    # 2. Pool examples, their JPEG bytes, and the images as "downloaded" (decoded JPEG).
    if version == "v3":
        ex = D.make_pool(rngs["pool"], pool_bank, n, progress=progress)
    else:
        ex = M.make_pool(rngs["pool"], M.Renderer(pool_bank), n, progress=progress)
    captions = ex.captions
    uids = _random_hex(rngs["uids"], n)
    jpegs, decoded = [], np.empty_like(ex.images)
    for i in progress_bar(range(n), desc="demo: encode jpeg", disable=not progress, leave=False):
        jpegs.append(_jpeg(ex.images[i]))
        decoded[i] = _decode_grey(jpegs[-1])
    sha = [hashlib.sha256(b).hexdigest() for b in jpegs]
    urls = [f"{URL_PREFIX}{u}.jpg" for u in uids]

    # 3. Scorer CLIPs -> embeddings and scores. v3: trained on clean renders of the
    # downstream-train digits only; v4: on clean renders of every domain (digits from the
    # downstream-train scans), a broad task-agnostic mix. Neither ever sees the pool.
    emb: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for spec, spec_steps in zip(S.SCORERS, params["scorer_steps"]):
        scorer_seed = _scorer_seed(seed, spec.seed_offset, version)
        if version == "v3":
            model = S.train_scorer(spec.config, down_bank, steps=spec_steps, seed=scorer_seed,
                                   progress=progress, desc=spec.name)
        else:
            model = S.train_mixed_scorer(spec.config, M.Renderer(down_bank), steps=spec_steps, seed=scorer_seed,
                                         progress=progress, desc=spec.name)
        img = S.embed_images(model, decoded)
        txt = S.embed_texts(model, spec.config, captions)
        scores[spec.name] = (img.astype(np.float64) * txt.astype(np.float64)).sum(1)
        # kept as a reference-model initialisation for FLYT on the demo (the analogue of
        # starting from a CLIP trained on other, clean data, like OpenAI's)
        (root / "scorers").mkdir(exist_ok=True)
        torch.save(model.state_dict(), root / "scorers" / f"{spec.name}.pt")
        emb[f"{spec.name}_img"] = img.astype(np.float16)
        emb[f"{spec.name}_txt"] = txt.astype(np.float16)
        del model
    noise = rngs["noise"].standard_normal(n)
    # DataComp's ``dedup`` flags pool images that near-duplicate an *evaluation* image. The
    # demo's test digits come from scans disjoint from the pool's source scans, so no pool image
    # duplicates one: the honest flag is all False. (The pool's own near-duplicates, copies of
    # other pool examples, are ground truth and live in truth.parquet alone; exposing them here
    # would let a filter read the answer.)
    dedup = np.zeros(n, dtype=np.uint8)

    # 4. Metadata shards: <32-hex>.parquet + .npz, rows aligned.
    meta_dir = root / "metadata"
    meta_dir.mkdir()
    stems = _random_hex(rngs["stems"], params["num_metadata_shards"])
    bounds = np.linspace(0, n, params["num_metadata_shards"] + 1).round().astype(int)
    schema = pa.schema([
        ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
        ("original_width", pa.int64()), ("original_height", pa.int64()),
        ("clip_b32_similarity_score", pa.float64()), ("clip_l14_similarity_score", pa.float64()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string()),
        ("noise_score", pa.float64()),
    ])
    for stem, lo, hi in zip(stems, bounds[:-1], bounds[1:]):
        table = pa.table({
            "uid": uids[lo:hi], "url": urls[lo:hi], "text": captions[lo:hi],
            "original_width": np.full(hi - lo, D.CANVAS, dtype=np.int64),
            "original_height": np.full(hi - lo, D.CANVAS, dtype=np.int64),
            "clip_b32_similarity_score": scores["b32"][lo:hi],
            "clip_l14_similarity_score": scores["l14"][lo:hi],
            "face_bboxes": [[] for _ in range(hi - lo)], "sha256": sha[lo:hi],
            "noise_score": noise[lo:hi],
        }, schema=schema)
        pq.write_table(table, meta_dir / f"{stem}.parquet")
        _savez(meta_dir / f"{stem}.npz", {**{k: v[lo:hi] for k, v in emb.items()}, "dedup": dedup[lo:hi]})

    # 5. Image shards in img2dataset layout; ~10% of the pool "failed to download".
    downloaded = rngs["drop"].random(n) >= DROP_FRACTION
    _write_image_shards(root / "shards", uids, captions, urls, sha, jpegs, downloaded,
                        params["shard_size"], progress)

    # 6. Downstream train/test sets as labelled webdataset shards, and the class names.
    for name, bank, rng in (("downstream", down_bank, rngs["downstream"]),
                            ("downstream_test", test_bank, rngs["test"])):
        canvases = D.to_uint8(D.render_digits(bank, np.arange(len(bank)), D.draw_placement(rng, len(bank))))
        _write_labelled_shards(root / name, [_jpeg(c) for c in canvases], bank.labels)
    write_json(root / "classes.json",
               {"classnames": list(D.DIGIT_WORDS), "templates": list(D.CLASS_TEMPLATES)})

    # 7. Ground truth (tests and reports only).
    src = ex.source
    source_uid = [uids[j] if j >= 0 else None for j in src]
    if version == "v3":
        truth = {
            "uid": uids,
            "type": ex.types.astype(str).tolist(),
            "digit": ex.digit,
            "caption_digit": ex.caption_digit,
            "scan_index": ex.scan_index,
            "source_uid": source_uid,
            "downloaded": downloaded,
        }
    else:
        is_digit, caption_is_digit = ex.domain == M.TARGET_DOMAIN, ex.caption_domain == M.TARGET_DOMAIN
        truth = {
            "uid": uids,
            "domain": ex.domain.astype(str).tolist(),  # digits, letters, shapes, textures or clutter
            "type": ex.types.astype(str).tolist(),
            "label": ex.names(ex.domain, ex.label),  # what the image shows (None for clutter)
            "caption_domain": ex.caption_domain.astype(str).tolist(),
            "caption_label": ex.names(ex.caption_domain, ex.caption_label),  # what the caption names
            "digit": np.where(is_digit, ex.label, -1).astype(np.int64),
            "caption_digit": np.where(caption_is_digit, ex.caption_label, -1).astype(np.int64),
            "scan_index": ex.scan_index,
            "source_uid": source_uid,
            "downloaded": downloaded,
        }
    pq.write_table(pa.table(truth), root / "truth.parquet")


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` (uncompressed) but byte-reproducible: fixed zip timestamps."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_image_shards(out: Path, uids, captions, urls, sha, jpegs, downloaded, shard_size, progress):
    from ..progress import progress_bar

    out.mkdir()
    n = len(uids)
    n_shards = (n + shard_size - 1) // shard_size
    for s in progress_bar(range(n_shards), desc="demo: image shards", disable=not progress, leave=False):
        rows = []
        with tarfile.open(out / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * shard_size, min(n, (s + 1) * shard_size)):
                key = f"{i:09d}"
                ok = bool(downloaded[i])
                row = {
                    "key": key, "uid": uids[i], "caption": captions[i], "url": urls[i],
                    "status": "success" if ok else "failed_to_download",
                    "error_message": None if ok else FAILED_MESSAGE,
                    "width": D.CANVAS if ok else None, "height": D.CANVAS if ok else None,
                    "original_width": D.CANVAS if ok else None,
                    "original_height": D.CANVAS if ok else None,
                    "sha256": sha[i] if ok else None,
                }
                rows.append(row)
                if not ok:
                    continue
                sample_json = dict(row, exif="{}")
                _tar_add(tar, f"{key}.jpg", jpegs[i])
                _tar_add(tar, f"{key}.txt", captions[i].encode())
                _tar_add(tar, f"{key}.json", json.dumps(sample_json).encode())
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("key", pa.string()), ("uid", pa.string()), ("caption", pa.string()), ("url", pa.string()),
            ("status", pa.string()), ("error_message", pa.string()),
            ("width", pa.int64()), ("height", pa.int64()),
            ("original_width", pa.int64()), ("original_height", pa.int64()), ("sha256", pa.string()),
        ]))
        pq.write_table(table, out / f"{s:08d}.parquet")
        successes = sum(r["status"] == "success" for r in rows)
        failed = len(rows) - successes
        stats = {
            "count": len(rows), "successes": successes, "failed_to_download": failed,
            "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
            "status_dict": {"success": successes, **({FAILED_MESSAGE: failed} if failed else {})},
        }
        (out / f"{s:08d}_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def _write_labelled_shards(out: Path, jpegs: list[bytes], labels: np.ndarray) -> None:
    out.mkdir()
    for s, lo in enumerate(range(0, len(jpegs), DOWNSTREAM_SHARD_SIZE)):
        with tarfile.open(out / f"{s:08d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(lo, min(len(jpegs), lo + DOWNSTREAM_SHARD_SIZE)):
                _tar_add(tar, f"{i:09d}.jpg", jpegs[i])
                _tar_add(tar, f"{i:09d}.cls", str(int(labels[i])).encode())
