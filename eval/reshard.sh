#!/usr/bin/env bash
# Reshard a pool's image shards to a subset with DataComp's own resharder, run in DataComp's
# environment. Repeated subsets need a shuffle buffer (the paper used 1.5M) so that copies of an
# example do not sit side by side in a batch.
#   DATACOMP=/path/to/datacomp DATACOMP_PYTHON=/path/to/python \
#     bash eval/reshard.sh SHARDS_DIR SUBSET.npy OUT_DIR [SHUFFLE_BUFSIZE]
set -euo pipefail
: "${DATACOMP:?set DATACOMP to a checkout of the DataComp repository}"
mkdir -p "$3"
"${DATACOMP_PYTHON:-python}" "$DATACOMP/resharder.py" -i "$1" -o "$3" -s "$2" \
  --shuffle-bufsize "${4:-1500000}"
