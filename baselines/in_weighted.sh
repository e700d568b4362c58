#!/usr/bin/env bash
# The paper's ImageNet-weighted standardised sum (Appendix C.5): z-scores weighted by
# w_k = (IN_k - min IN) / (max IN - min IN) + 1/(R - 1), top 20% once each (Table 2),
# or SAMPLER=scs for Table 3's SCS (alpha 0.15 at the medium scale).
#   bash baselines/in_weighted.sh METADATA_DIR OUT.npy R RELEVANCE.json
# RELEVANCE.json: {"clip_l14_similarity_score": 0.30, "file:dfn.parquet": 0.33, ...}
set -euo pipefail
if [ "${SAMPLER:-threshold}" = scs ]; then
  sampling=(--scale medium --sampler scs)
else
  sampling=(--sampler threshold --fraction "${FRACTION:-0.2}")
fi
python -m flyt_datacomp.filter --metadata-dir "$1" --score "in_weighted:r=$3:$4" "${sampling[@]}" --output "$2"
