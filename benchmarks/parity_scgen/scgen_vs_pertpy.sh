#!/usr/bin/env bash
# scGen parity: mtpert's `scgen` vs pertpy 1.0.3's Scgen (scvi-tools 1.4.2, CPU) on the same Kang
# splits and HVGs. pertpy runs in its own virtual environment (.peers/pertpy-scgen, git-ignored),
# in its own process; nothing of it enters mtpert's core.
# Run from anywhere: bash benchmarks/parity_scgen/scgen_vs_pertpy.sh [options of scgen_vs_pertpy.py]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.peers/pertpy-scgen
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # CPU-only torch first (any other pin pulls a CUDA build); pertpy 1.0.3 imports only with
  # statsmodels<0.15; its Scgen needs scvi-tools (JAX backend), which pertpy does not require.
  "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q "pertpy==1.0.3" "scvi-tools==1.4.2" "statsmodels<0.15"
fi
python="${MTPERT_PYTHON:-python}"
"$python" benchmarks/parity_scgen/scgen_vs_pertpy.py --peer-python "$venv/bin/python" "$@"
