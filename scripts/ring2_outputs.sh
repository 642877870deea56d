#!/usr/bin/env bash
# Ring 2's outputs of one checkout, for a byte-for-byte comparison with another checkout's:
#   bash scripts/ring2_outputs.sh CHECKOUT DEST     (for two checkouts, then: diff -r DEST1 DEST2)
# The demo's flags.csv and printed lines, a simulated 3-run era's tables (era.json without its
# timings, dates and memory, which differ from run to run), a model trained on that era (its
# components and thresholds; `trained_at` differs) and the shipped model's SHA-256. Both
# checkouts run with this checkout's Python environment (PY, default .venv/bin/python) and the
# same paths, so only the code can make a difference.
set -euo pipefail
checkout=$(cd "$1" && pwd); dest=$2
py=${PY:-$PWD/.venv/bin/python}
work=${WORK:-/tmp/ring2-outputs}; rm -rf "$work"; mkdir -p "$work"  # one fixed path: paths are in the outputs
out=$work/out; mkdir -p "$out"
cp "$checkout/mlserver_model/pixelring2nmf.joblib" "$work/model.joblib"
run() { (cd "$checkout" && PYTHONPATH="$checkout" "$py" -m pixelring2nmf "$@"); }
run simulate --out "$out/demo" --scenario demo --seed 1 >/dev/null
run predict --parquet "$out"/demo/*PXRing_2.parquet --oms "$out/demo/omsdata_Run2025Z-v1.json" \
    --model "$work/model.joblib" --out "$out/demo_flags.csv" | sed "s#$out#OUT#" >"$out/demo_predict.txt"
run simulate --out "$out/era_in" --seed 3 --runs 3 --ls-per-run 300 >/dev/null
run era --parquet "$out/era_in" --oms "$out"/era_in/*.json --model "$work/model.joblib" \
    --out "$out/era" --workers 1 --no-progress | sed 's/ in [0-9.]* s ([0-9,]* LS\/s)//' >"$out/era.txt"
sed -i '/"seconds"\|_at"\|"this process"\|"largest worker"/d' "$out/era/era.json"
run train --parquet "$out"/era_in/*.parquet --out "$work/trained.joblib" --passes 30 >/dev/null 2>&1
"$py" - "$work/trained.joblib" >"$out/trained.txt" <<'PY'
import hashlib, sys
from mlserver_model.pixelring2nmf import PixelRing2NMF
m = PixelRing2NMF.load(sys.argv[1])
print(hashlib.sha256(m.components.tobytes() + m.model_error.tobytes()).hexdigest(), m.thresholds)
PY
sha256sum <"$checkout/mlserver_model/pixelring2nmf.joblib" >"$out/shipped.sha256"
rm -rf "$dest"; mv "$out" "$dest"; rm -rf "$work"
echo "Ring 2 outputs of $checkout in $dest"
