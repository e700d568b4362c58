#!/usr/bin/env bash
# m-flyt-base (random reference allowed for this check) on a demo pool under torchrun, interrupted and
# resumed: a 40-step run gets SIGTERM once its step-10 checkpoint exists; the same command again must
# resume from the newest checkpoint and finish with 40 steps in metrics.jsonl.
#   bash bench/gpu_train_check.sh POOL_DIR RUN_DIR DEVICE [extra train flags...]
set -u
POOL=$1 RUN=$2 DEV=$3
shift 3
rm -rf "$RUN"
mkdir -p "$RUN"
PY=${PYTHON:-python3}
cmd=("$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m flyt_datacomp.train --preset m-flyt-base
     --reference-init random --metadata-dir "$POOL/metadata" --shards-dir "$POOL/shards"
     --downstream-dir "$POOL/downstream" --classes "$POOL/classes.json" --steps 40 --warmup-steps 2 --workers 2
     --checkpoint-every 10 --device "$DEV" --output-dir "$RUN" --quiet "$@")
setsid "${cmd[@]}" > "$RUN/first.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null && [ ! -e "$RUN/checkpoints/step_0000010.pt.json" ]; do sleep 0.2; done
kill -TERM -- "-$pid" 2>/dev/null
wait "$pid"
echo "first run: exit $? after $(wc -l < "$RUN/metrics.jsonl") steps; checkpoints: $(ls "$RUN/checkpoints" | tr '\n' ' ')"
cat "$RUN/first.log"
steps_before=$(wc -l < "$RUN/metrics.jsonl")
[ "$steps_before" -lt 40 ] || { echo "the first run finished before it could be interrupted"; exit 1; }
head -n 10 "$RUN/metrics.jsonl" > "$RUN/first10.jsonl"
"${cmd[@]}" 2>&1 | tee "$RUN/resume.log"
# a resumed run keeps the metrics up to its checkpoint (step 10 or later); a fresh start rewrites them
head -n 10 "$RUN/metrics.jsonl" | cmp -s - "$RUN/first10.jsonl" || { echo "the second run did not resume"; exit 1; }
test "$(wc -l < "$RUN/metrics.jsonl")" -eq 40 || { echo "metrics.jsonl does not hold 40 steps"; exit 1; }
echo "train check: interrupted after $steps_before steps, resumed, 40 steps in metrics.jsonl"
