#!/usr/bin/env bash
# Rebuild the shipped model mlserver_model/pixelring2nmf.joblib from simulated data.
#
# The shipped model only exists so that the project runs and is tested on a fresh machine:
# it was trained on the simulator's detector, not on CMS data. A real deployment retrains on
# real DIALS parquet files of a recent era (see README, "Training on real data").
#
# Usage: bash scripts/train_shipped_model.sh [OUTPUT] [DETECTOR_SEED] [RING]   (needs `pip install -e .`)
# DETECTOR_SEED (default 2024, the shipped model's) picks another simulated detector: CI trains
# one on seed 7 and runs the whole suite with it, as after a user's retraining.
# RING (default 2) picks the model: 2 (pixel-ring2-nmf), 1 (the Ring 1 model pixel-ring1-nmf,
# default OUTPUT mlserver_model/pixelring1nmf.joblib) or both (the joint model pixel-fpix-nmf,
# default OUTPUT mlserver_model/pixelfpixnmf.joblib); Ring 1 and both are simulated and
# trained exactly as Ring 2 (`simulate --ring`, `train`, `train --joint`).
set -euo pipefail
ring=${3:-2}
case "$ring" in
2) default_out=mlserver_model/pixelring2nmf.joblib ;;
1) default_out=mlserver_model/pixelring1nmf.joblib ;;
both) default_out=mlserver_model/pixelfpixnmf.joblib ;;
*) echo "RING must be 1, 2 or both, got '$ring'" >&2; exit 2 ;;
esac
out=${1:-$default_out}
detector_seed=${2:-2024}
bin=$(dirname "$(command -v pixelring2nmf 2>/dev/null || echo .venv/bin/pixelring2nmf)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$ring" = 2 ]; then
# Two clean runs (no injected anomalies) of the simulated detector; the DCS filter then keeps
# the LS with all 8 flags true, and 900 of those train the model, as the original used ~900.
"$bin/pixelring2nmf" simulate --out "$work/sim" --runs 2 --ls-per-run 600 --seed 11 --clean \
    --era Run2025Z --detector-seed "$detector_seed"
"$bin/pixelring2nmf" train --parquet "$work"/sim/*.parquet --oms "$work"/sim/omsdata_Run2025Z-v1.json \
    --max-ls 900 --seed 11 --force --out "$out"
else
# The same two clean runs in Ring 1 (or in both rings, the same LS), trained the same way.
"$bin/pixelring2nmf" simulate --out "$work/sim" --runs 2 --ls-per-run 600 --seed 11 --clean \
    --era Run2025Z --detector-seed "$detector_seed" --ring "$ring"
joint=()
if [ "$ring" = both ]; then joint=(--joint); fi
"$bin/pixelring2nmf" train --parquet "$work"/sim/*.parquet --oms "$work"/sim/omsdata_Run2025Z-v1.json \
    --max-ls 900 --seed 11 --force --out "$out" "${joint[@]}"
fi
