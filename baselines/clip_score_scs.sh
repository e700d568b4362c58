#!/usr/bin/env bash
# The paper's Table 3 idea on a public score: Soft Cap Sampling on standardised CLIP L/14 scores
# at the medium scale (alpha 0.15, G 100K, N 128M).
#   bash baselines/clip_score_scs.sh METADATA_DIR OUT.npy
set -euo pipefail
python -m flyt_datacomp.filter \
  --metadata-dir "$1" --scale medium --score clip_l14_similarity_score --standardize \
  --sampler scs --output "$2"
