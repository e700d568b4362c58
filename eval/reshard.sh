#!/usr/bin/env bash
# Reshard a pool's image shards to a subset with DataComp's own resharder, checked afterwards
# (one sample written per subset entry that has an image). Repeated subsets get the paper's
# 1.5M-sample shuffle buffer unless SHUFFLE_BUFSIZE is given (0 turns it off).
#   DATACOMP_DIR=/path/to/datacomp DATACOMP_PYTHON=/path/to/datacomp/python \
#     bash eval/reshard.sh SHARDS_DIR SUBSET.npy OUT_DIR [SHUFFLE_BUFSIZE]
set -euo pipefail
flyt-datacomp eval reshard "$2" --shards-dir "$1" --output-dir "$3" ${4:+--shuffle-bufsize "$4"}
