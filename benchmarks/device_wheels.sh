#!/bin/bash
# The wheels a GPU machine without RecBole needs (its image has Python 3.12 with torch, numpy,
# scipy, pandas, yaml, tqdm, tensorboard): RecBole itself and its two small pure-Python needs.
# Run once here, in the repository root; .whl/ is git-ignored and travels with `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2
ls .whl
