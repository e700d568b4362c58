#!/usr/bin/env bash
# Download, here, the wheels the device image lacks (open_clip_torch and what it needs beyond the
# image's packages) into .whl/, which git ignores, for `bench/gpu_check.sh` to install there.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "open_clip_torch==$(python3 -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth
ls -la .whl
