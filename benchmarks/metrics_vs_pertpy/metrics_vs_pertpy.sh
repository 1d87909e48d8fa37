#!/usr/bin/env bash
# Cross-check mtpert's PCA-space distances against pertpy.tl.Distance on the shared Kang subset.
# pertpy lives in its own virtual environment (.peers/pertpy, git-ignored), never in mtpert's core.
# Run from the repository root: bash benchmarks/metrics_vs_pertpy/metrics_vs_pertpy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.peers/pertpy
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # pertpy 1.0.3 is the last release for Python 3.11 and imports only with statsmodels<0.15
  "$venv/bin/pip" install -q torch==2.13.0 "pertpy==1.0.3" "statsmodels<0.15"
fi
"$venv/bin/pip" install -q -e . "statsmodels<0.15"
"$venv/bin/python" benchmarks/metrics_vs_pertpy/metrics_vs_pertpy.py
