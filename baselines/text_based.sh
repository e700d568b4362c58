#!/usr/bin/env bash
# DataComp's "Text-based" baseline: fastText English and a caption word whose first WordNet synset
# is an ImageNet-21k class.
#   bash baselines/text_based.sh METADATA_DIR OUT.npy [ASSETS_DIR] [NLTK_DATA_DIR]
# ASSETS_DIR holds lid.176.bin and imagenet21k_wordnet_ids.txt; NLTK_DATA_DIR holds corpora/wordnet
# (python -m nltk.downloader -d NLTK_DATA_DIR wordnet, on a machine with internet).
set -euo pipefail
python -m flyt_datacomp.filter --name text_based --metadata_dir "$1" --save_path "$2" \
  ${3:+--assets-dir "$3"} ${4:+--wordnet-data "$4"} --num_workers "${NUM_WORKERS:-$(nproc)}"
