#!/usr/bin/env bash
# DataComp's LAION-2B filtering reproduction: gcld3 English and B/32 CLIP score >= 0.28.
# Needs pip install 'flyt-datacomp[gcld3]' (builds with the protobuf compiler).
#   bash baselines/laion2b.sh METADATA_DIR OUT.npy
set -euo pipefail
python -m flyt_datacomp.filter --name laion2b --metadata_dir "$1" --save_path "$2" \
  --num_workers "${NUM_WORKERS:-$(nproc)}"
