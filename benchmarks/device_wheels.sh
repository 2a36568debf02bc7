#!/bin/bash
# The wheels a GPU machine needs whose Python 3.12 has torch, numpy, scipy, pandas, yaml, tqdm and
# tensorboard but not RecBole, and which cannot reach a package index: RecBole itself and its two
# small pure-Python needs. Run it once in the repository root of a machine that can, then copy .whl/
# (git-ignored) along with the checkout; benchmarks/gpu_check.sh installs what it finds there.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2
ls .whl
