#!/usr/bin/env bash
# Download the wheels that a GPU machine without open_clip needs (open_clip_torch at this machine's
# version, ftfy, wcwidth; CPython 3.12, manylinux) into .whl/, which git ignores. Run it where the
# package index is reachable, copy .whl/ along with the repository, and `bench/gpu_check.sh` installs
# them there.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "open_clip_torch==$(python3 -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth
ls -la .whl
