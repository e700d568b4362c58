#!/usr/bin/env bash
# DataComp's "CLIP score" baseline by name: ARCH b32 or l14, keep the top FRACTION (DataComp's rule:
# every score >= the score at rank int(N * FRACTION)).
#   bash baselines/clip_score.sh METADATA_DIR OUT.npy [ARCH] [FRACTION]
set -euo pipefail
python -m flyt_datacomp.filter --name clip_score --arch "${3:-l14}" --fraction "${4:-0.3}" \
  --metadata_dir "$1" --save_path "$2"
