#!/usr/bin/env bash
# mtpert's scbutterfly vs the original scButterfly on the same Kang splits (see the .py docstring).
# The original lives in its own virtual environment (.peers/scbutterfly, git-ignored). Its PyPI pins
# (scipy==1.9.3, scvi-tools==0.19.0, episcanpy==0.3.2, CUDA torch) do not install on Python 3.11,
# so it is installed without dependencies, on CPU-only torch, with what its perturbation code
# imports; episcanpy (imported by its package __init__) needs numpy<2 and anndata<0.11.
# Run from the repository root with mtpert's Python: bash benchmarks/parity_scbutterfly/scbutterfly_vs_original.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.peers/scbutterfly
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q --no-deps scButterfly==0.0.9 episcanpy==0.3.2
  "$venv/bin/pip" install -q scanpy pot adjustText tqdm pysam kneed intervaltree bamnostic "numpy<2" "anndata<0.11"
fi
taskset -c 1 nice -n 10 "${PYTHON:-python}" benchmarks/parity_scbutterfly/scbutterfly_vs_original.py "$@"
