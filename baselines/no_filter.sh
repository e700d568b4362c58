#!/usr/bin/env bash
# DataComp's "No filtering" baseline: every uid of the pool.
#   bash baselines/no_filter.sh METADATA_DIR OUT.npy
set -euo pipefail
python -m flyt_datacomp.filter --name no_filter --metadata_dir "$1" --save_path "$2"
