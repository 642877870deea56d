#!/usr/bin/env bash
# Rebuild the shipped model mlserver_model/pixelring2nmf.joblib from simulated data.
#
# The shipped model only exists so that the project runs and is tested on a fresh machine:
# it was trained on the simulator's detector, not on CMS data. A real deployment retrains on
# real DIALS parquet files of a recent era (see README, "Training on real data").
#
# Usage: bash scripts/train_shipped_model.sh [OUTPUT]   (needs `pip install -e .`)
set -euo pipefail
out=${1:-mlserver_model/pixelring2nmf.joblib}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Two clean runs (no injected anomalies) of the simulated detector; the DCS filter then keeps
# the LS with all 8 flags true, and 900 of those train the model, as the original used ~900.
pixelring2nmf simulate --out "$work" --runs 2 --ls-per-run 600 --seed 11 --clean --era Run2025Z
pixelring2nmf train --parquet "$work"/*.parquet --oms "$work"/omsdata_Run2025Z-v1.json \
    --max-ls 900 --seed 11 --out "$out"
