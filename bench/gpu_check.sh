#!/usr/bin/env bash
# GPU validation (issue 11): one script, about 8 minutes on one H100 or H200; results under $OUT.
#
# The device image has torch but not open_clip_torch, ftfy or wcwidth. Prepare here, then run there:
#   bash bench/gpu_wheels.sh                               # here: wheels into .whl/ (git-ignored)
#   device run: command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 560
# It writes $OUT/gpu_check.log (every step's output), $OUT/results.json and $OUT/RESULTS.md (the
# numbers with the device name and date, to copy into bench/RESULTS.md). A step that fails or runs
# past its limit is recorded as such and the next one still runs. Locally, without $OUT, the
# results go to /tmp/gpu-check (`GPU_CHECK_SMOKE=1` runs every step small, on the CPU, to test it).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.json "$WORK"/steps.tsv
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
LOG="$OUT/gpu_check.log"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log everything, record rc and seconds
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$WORK/steps.tsv"
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$LOG"
}

if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then  # every step, tiny and on the CPU: checks the script, not the GPU
    DEV=cpu
    BILEVEL=(--device cpu --arch tiny --batch 16 --downstream-batch 12 --classes 10 --repeats 1)
    PAPER=(--device cpu --arch tiny --batch 32 --downstream-batch 24 --classes 10 --micro-batch 8 --repeats 1)
    SCS=(--size 2000000 --group-size 10000 --devices cpu)
    DIST=(--device cpu --runs 200)
    TRAIN_EXTRA=(--reference-arch tiny-resnet --batch-size 32 --downstream-batch-size 24 --micro-batch-size 16)
    RECIPE=quick
else
    DEV=cuda
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/gpu.txt" 2>&1
    BILEVEL=(--device cuda --arch ViT-B-32 --batch 512 --downstream-batch 384 --classes 1000 --dtype bf16 --repeats 5)
    PAPER=(--device cuda --arch ViT-B-32 --batch 4096 --downstream-batch 3072 --classes 1000 --dtype bf16
           --micro-batch 512 --skip-naive --no-fp32-check --repeats 3)
    SCS=(--devices cpu cuda)
    DIST=(--device cuda --runs 2000)
    TRAIN_EXTRA=(--batch-size 512 --downstream-batch-size 384 --micro-batch-size 256)
    RECIPE=default
fi

# 1. the efficient bilevel step against the naive one (time, memory, cosines), ViT-B-32 512/384, bf16
step bilevel 110 $PY bench/bench_bilevel.py "${BILEVEL[@]}" --json "$WORK/bilevel.json"
# 2. the paper's batch, B 4096 / B' 3072, micro-batched, efficient step only
step paper_batch 110 $PY bench/bench_bilevel.py "${PAPER[@]}" --json "$WORK/paper_batch.json"
# 3. SCS at M = N = 128M, G = 100K on CUDA against the CPU path in the same run; distributions compared
step scs 90 $PY bench/bench_sampling.py "${SCS[@]}" --ref-rounds 0 --json "$WORK/scs.json"
step scs_distribution 45 $PY bench/check_scs_devices.py "${DIST[@]}" --json "$WORK/scs_distribution.json"
# 4. a small demo pool, then m-flyt-base for 10 + 10 steps under torchrun (NCCL on CUDA), resumed
rm -f "$WORK/pool.txt"
step pool 60 $PY -c "from flyt_datacomp.demo import build_demo_pool; p = build_demo_pool('$WORK/pools', pool_size=2000, \
num_metadata_shards=2, shard_size=250, scorer_steps=20, progress=False); open('$WORK/pool.txt', 'w').write(str(p.root))"
POOL=$(cat "$WORK/pool.txt" 2>/dev/null || echo "$WORK/no-pool")
step train_torchrun 120 bash bench/gpu_train_check.sh "$POOL" "$WORK/run" "$DEV" "${TRAIN_EXTRA[@]}"
# 5. one mini-benchmark training run on the GPU against the CPU, same process
step benchmark_run 75 $PY bench/bench_benchmark_run.py --devices "$DEV" cpu --recipe "$RECIPE" --pool-dir "$POOL" \
    --json "$WORK/benchmark_run.json"

$PY bench/gpu_summary.py "$WORK" --json "$OUT/results.json" > "$OUT/RESULTS.md"
cat "$OUT/RESULTS.md"
