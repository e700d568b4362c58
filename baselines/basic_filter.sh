#!/usr/bin/env bash
# DataComp's "Basic filtering" baseline: fastText English, > 2 words and > 5 characters,
# shorter image side >= 200 px, aspect ratio <= 3.
#   bash baselines/basic_filter.sh METADATA_DIR OUT.npy [ASSETS_DIR]
# ASSETS_DIR holds lid.176.bin (default: DataComp's caches ~/.cache/fasttext, ~/.cache/datacomp).
set -euo pipefail
python -m flyt_datacomp.filter --name basic_filter --metadata_dir "$1" --save_path "$2" \
  ${3:+--assets-dir "$3"} --num_workers "${NUM_WORKERS:-$(nproc)}"
