#!/usr/bin/env bash
# GPU validation: one script, under 5 minutes on one H100 or H200 (the per-step time limits below sum
# to 280 s); results in OUT_DIR (default /tmp/gpu-check).
#
#   bash bench/gpu_check.sh [OUT_DIR]
#
# On a GPU machine without open_clip, first fetch wheels with bench/gpu_wheels.sh (on a machine with
# network access) and copy .whl/ along with the repository: the script installs them. It measures,
# each against its target:
#   bilevel512   ViT-B-32, B 512 / B' 384, bf16: the efficient step's time and memory, and the cosine
#                of its meta-gradient to float32 (>= 0.999)
#   bilevel256   the same at 256/192 with the naive step too: time (<= 0.7x) and memory (<= 0.5x) of
#                efficient / naive, cosines of both bf16 meta-gradients to float32 (>= 0.999)
#   paper_batch  B 4096 / B' 3072, bf16 (<= 3.5 s per step), one row per speed option: micro-batch 512
#                or 1024, each over the full text context (the step as it was: class prompts encoded
#                twice) and with texts trimmed after their end token (the default: prompts once)
#   tf32         float32 at 128/96 with and without TF32 in the encoders (precision tf32): time, cosine
#   scs          SCS at M = N = 128M, G = 100K on CUDA (<= 5 s), the torch path before its threshold
#                selection in the same process (old / new time)
#   scs_distribution  the CUDA path's distribution against the CPU path, threshold selection forced
# GPU_CHECK_TRAIN=1 adds m-flyt-base under torchrun (interrupted and resumed) and one mini-benchmark
# training run on the GPU against the CPU (about 3 more minutes). It writes OUT_DIR/gpu_check.log
# (every step's output), OUT_DIR/results.json and OUT_DIR/RESULTS.md (the numbers with the device
# name and date). A step that fails or runs past its limit is recorded as such and the next one still
# runs. GPU_CHECK_SMOKE=1 runs every step (the train steps too) small, on the CPU, to test the script,
# with 5 times the time limits (GPU_CHECK_LIMIT_SCALE sets that factor).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
mkdir -p "$OUT" "$WORK"
rm -f "$WORK"/*.json "$WORK"/steps.tsv "$WORK"/gpu.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
LOG="$OUT/gpu_check.log"
: > "$LOG"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log everything, record rc and seconds
    local name=$1 limit=$(( $2 * SCALE )) start rc
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$WORK/steps.tsv"
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$LOG"
}

VIT=(--arch ViT-B-32 --classes 1000)
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then  # every step, tiny and on the CPU: checks the script, not the GPU
    DEV=cpu
    SCALE=${GPU_CHECK_LIMIT_SCALE:-5}  # a busy 2-core CPU: the demo pool alone took up to 2 minutes
    TRAIN=1
    B512=(--device cpu --arch tiny --batch 16 --downstream-batch 12 --classes 10 --dtype bf16 --repeats 1 --skip-naive)
    B256=(--device cpu --arch tiny --batch 16 --downstream-batch 12 --classes 10 --dtype fp32 --repeats 1)
    PAPER=(--device cpu --arch tiny --batch 32 --downstream-batch 24 --classes 10 --dtype bf16 --micro-batch 8
           --repeats 1 --variants full-context default full-context,micro=16 micro=16)
    TF32=(--device cpu --arch tiny --batch 16 --downstream-batch 12 --classes 10 --dtype fp32 --repeats 1)
    SCS=(--size 1000000 --group-size 10000 --devices torch-cpu)
    DIST=(--device cpu --runs 200)
    TRAIN_EXTRA=(--reference-arch tiny-resnet --batch-size 32 --downstream-batch-size 24 --micro-batch-size 16)
    RECIPE=quick
else
    DEV=cuda
    SCALE=${GPU_CHECK_LIMIT_SCALE:-1}
    TRAIN=${GPU_CHECK_TRAIN:-0}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/gpu.txt" 2>&1
    B512=(--device cuda "${VIT[@]}" --batch 512 --downstream-batch 384 --dtype bf16 --repeats 3 --skip-naive)
    B256=(--device cuda "${VIT[@]}" --batch 256 --downstream-batch 192 --dtype bf16 --repeats 5)
    PAPER=(--device cuda "${VIT[@]}" --batch 4096 --downstream-batch 3072 --dtype bf16 --micro-batch 512
           --repeats 2 --variants full-context default full-context,micro=1024 micro=1024)
    TF32=(--device cuda "${VIT[@]}" --batch 128 --downstream-batch 96 --dtype fp32 --repeats 2)
    SCS=(--devices cuda)
    DIST=(--device cuda --runs 2000)
    TRAIN_EXTRA=(--batch-size 512 --downstream-batch-size 384 --micro-batch-size 256)
    RECIPE=default
fi

# 1. bf16 meta-gradients against float32 (and the efficient step's cost), ViT-B-32 512/384
step bilevel512 40 $PY bench/bench_bilevel.py "${B512[@]}" --json "$WORK/bilevel512.json"
# 2. efficient vs naive at 256/192 (the naive step runs out of memory at 512/384 on 80 GB)
step bilevel256 45 $PY bench/bench_bilevel.py "${B256[@]}" --json "$WORK/bilevel256.json"
# 3. the paper's batch, one row per speed option (captions of 4-70 words: most micro-batches hold one
#    that fills the context, so trimming gains mostly on the class prompts)
step paper_batch 95 $PY bench/bench_bilevel.py "${PAPER[@]}" --caption-words 4 70 --json "$WORK/paper_batch.json"
# 4. TF32 in the encoders against true float32
step tf32 30 $PY bench/bench_bilevel.py "${TF32[@]}" --variants default tf32 --json "$WORK/tf32.json"
# 5. SCS at M = N = 128M, G = 100K on CUDA, against the old torch path in the same process
step scs 35 $PY bench/bench_sampling.py "${SCS[@]}" --compare-old --ref-rounds 0 --json "$WORK/scs.json"
step scs_distribution 35 $PY bench/check_scs_devices.py "${DIST[@]}" --threshold --json "$WORK/scs_distribution.json"

if [ "$TRAIN" = 1 ]; then
    # 6. a small demo pool, then m-flyt-base for 10 + 30 steps under torchrun (NCCL on CUDA), resumed
    rm -f "$WORK/pool.txt"
    step pool 60 $PY -c "from flyt_datacomp.demo import build_demo_pool; p = build_demo_pool('$WORK/pools', \
pool_size=2000, num_metadata_shards=2, shard_size=250, scorer_steps=20, progress=False); \
open('$WORK/pool.txt', 'w').write(str(p.root))"
    POOL=$(cat "$WORK/pool.txt" 2>/dev/null || echo "$WORK/no-pool")
    step train_torchrun 120 bash bench/gpu_train_check.sh "$POOL" "$WORK/run" "$DEV" "${TRAIN_EXTRA[@]}"
    # 7. one mini-benchmark training run on the GPU against the CPU, same process
    step benchmark_run 75 $PY bench/bench_benchmark_run.py --devices "$DEV" cpu --recipe "$RECIPE" --pool-dir "$POOL" \
        --json "$WORK/benchmark_run.json"
fi

$PY bench/gpu_summary.py "$WORK" --json "$OUT/results.json" > "$OUT/RESULTS.md"
cat "$OUT/RESULTS.md"
