#!/usr/bin/env bash
# The negCLIPLoss + NormSim two-stage rule (Wang et al.; the paper's Table 10): the top 30% of the
# pool by negCLIPLoss, then of those the top 20% of the pool by NormSim, once each.
#   bash baselines/negcliploss_normsim.sh METADATA_DIR OUT.npy NEGCLIPLOSS_SOURCE NORMSIM_SOURCE
# The sources are score sources: pool columns or file:scores.parquet with columns uid, score.
set -euo pipefail
python -m flyt_datacomp.filter --metadata-dir "$1" \
  --mask "top:0.3:$3" --mask "top:0.2:$4" --output "$2"
