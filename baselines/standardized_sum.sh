#!/usr/bin/env bash
# The paper's "Standardized Sum" baseline: the sum of the inputs' z-scores over the pool, top 20%.
#   bash baselines/standardized_sum.sh METADATA_DIR OUT.npy INPUT[,INPUT...]
set -euo pipefail
python -m flyt_datacomp.filter --metadata-dir "$1" --score "standardized_sum:$3" \
  --sampler threshold --fraction "${FRACTION:-0.2}" --output "$2"
