#!/usr/bin/env bash
# The paper's "Sum" aggregation baseline: the plain sum of input scores, top 20% once each.
#   bash baselines/sum.sh METADATA_DIR OUT.npy INPUT[,INPUT...]
# INPUTs are score sources: pool columns or file:scores.parquet (uid, score) per input.
set -euo pipefail
python -m flyt_datacomp.filter --metadata-dir "$1" --score "sum:$3" \
  --sampler threshold --fraction "${FRACTION:-0.2}" --output "$2"
