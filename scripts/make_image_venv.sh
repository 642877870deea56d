#!/usr/bin/env bash
# A virtualenv with the library versions of the production image seldonio/mlserver:1.5.0
# (docs/domain.md, section 6), for the tests that load the model and serve the build folder the way
# DIALS does. The project itself is not installed there: only the copied folder is visible.
# Usage: bash scripts/make_image_venv.sh [DIR]   (default .venv-image)
set -euo pipefail
dir=${1:-.venv-image}
python3 -m venv "$dir"
"$dir/bin/pip" install -q \
    "mlserver==1.5.0" "numpy==1.26.4" "scikit-learn==1.4.1.post1" "pandas==2.2.1" \
    "joblib==1.3.2" "scipy==1.12.0" "uvloop==0.19.0" "uvicorn==0.29.0"
