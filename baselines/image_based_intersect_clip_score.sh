#!/usr/bin/env bash
# DataComp's "Image-based AND CLIP score (L/14 30%)" baseline: the CLIP threshold is taken over the
# whole pool first, then the image-based rule runs on the examples that pass it.
#   bash baselines/image_based_intersect_clip_score.sh METADATA_DIR OUT.npy SCALE [ASSETS_DIR] [FRACTION]
set -euo pipefail
python -m flyt_datacomp.filter --name image_based_intersect_clip_score --arch l14 --fraction "${5:-0.3}" \
  --image_based_scale "$3" --metadata_dir "$1" --save_path "$2" ${4:+--assets-dir "$4"} \
  --num_gpus "${NUM_GPUS:-1}" --num_workers "${NUM_WORKERS:-$(nproc)}"
