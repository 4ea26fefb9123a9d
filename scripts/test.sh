#!/usr/bin/env bash
# The README's test command: install qtrace with every optional extra (so no test skips for a
# missing package), on the CPU build of torch (a few hundred MB instead of a 5.5 GB CUDA
# build; a GPU user's plain `pip install qtrace` still gets a CUDA torch), then lint and test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[hta,torchao,gptq,test]"
python3 -m ruff check qtrace tests benchmarks
python3 -m pytest -q "$@"
