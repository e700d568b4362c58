#!/usr/bin/env bash
# DataComp's "Image-based" baseline: an English caption whose L/14 image embedding's nearest k-means
# centroid is the nearest centroid of some ImageNet-1k training image.
#   bash baselines/image_based.sh METADATA_DIR OUT.npy SCALE [ASSETS_DIR]
# SCALE picks DataComp's centroids (small, medium, large, xlarge); ASSETS_DIR holds lid.176.bin,
# SCALE_centroids.pt and in1k_clip_vit_l14_{0..4}.pt. NUM_GPUS=0 searches on the CPU (slow at 100K centroids).
set -euo pipefail
python -m flyt_datacomp.filter --name image_based --image_based_scale "$3" --metadata_dir "$1" --save_path "$2" \
  ${4:+--assets-dir "$4"} --num_gpus "${NUM_GPUS:-1}" --num_workers "${NUM_WORKERS:-$(nproc)}"
