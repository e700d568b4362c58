#!/usr/bin/env bash
# The whole DataComp evaluation of a subset: reshard, train at SCALE, evaluate on the 38 tasks,
# print the results table and write OUTPUT_DIR/submission/. Run it again to resume after a crash.
#   DATACOMP_DIR=/path/to/datacomp DATACOMP_PYTHON=/path/to/datacomp/python \
#     bash eval/run.sh SUBSET.npy SHARDS_DIR SCALE OUTPUT_DIR EVALSETS_DIR [NUM_GPUS]
set -euo pipefail
flyt-datacomp eval run "$1" --shards-dir "$2" --scale "$3" --output-dir "$4" --evalsets-dir "$5" \
  --num-gpus "${6:-1}"
