#!/usr/bin/env bash
# DataComp's "CLIP score (L/14 30%)" baseline, reproduced with this package:
# keep score >= t where t is the 30% quantile rule of DataComp's own clip_score --fraction.
#   bash baselines/clip_score_threshold.sh METADATA_DIR OUT.npy [FRACTION]
set -euo pipefail
python -m flyt_datacomp.filter \
  --metadata-dir "$1" --score clip_l14_similarity_score \
  --sampler threshold --fraction "${3:-0.3}" --datacomp-compatible \
  --output "$2"
