"""The exact batched NNLS against scipy, and the safety of the model file."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import IMAGE_PYTHON, needs_image_venv
from scipy.optimize import nnls

from mlserver_model.artifact import ArtifactError, load_artifact, save_artifact
from mlserver_model.nmf2d import BatchedNNLS
from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, PixelRing2NMF

REPO = Path(__file__).resolve().parents[1]


def _relative_objective_gap(a: np.ndarray, x: np.ndarray, ours: np.ndarray) -> float:
    reference, _ = nnls(a, x, maxiter=10_000)
    f_ours = np.sum((a @ ours - x) ** 2)
    f_ref = np.sum((a @ reference - x) ** 2)
    return (f_ours - f_ref) / max(f_ref, 1e-300)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_nnls_matches_scipy_on_random_problems(k):
    rng = np.random.default_rng(k)
    basis = rng.gamma(1.0, 1.0, (k, 300))
    # right-hand sides inside and outside the cone, so that every support size occurs
    x = rng.normal(0, 1, (200, 300)) + rng.gamma(1, 1, (200, k)) @ basis
    w = BatchedNNLS(basis).solve(x @ basis.T)
    assert (w >= 0).all()
    gaps = [_relative_objective_gap(basis.T, x[i], w[i]) for i in range(len(x))]
    assert max(gaps) < 1e-6
    assert len({tuple(np.flatnonzero(row)) for row in w}) > 1  # several supports were exercised


def test_nnls_matches_scipy_on_the_shipped_model_and_poisson_maps():
    model = PixelRing2NMF.load()
    rng = np.random.default_rng(3)
    h = model.components.astype(np.float64)
    w_true = rng.uniform(0, 1, (100, len(h))) * rng.uniform(20, 2000, (100, 1))
    w_true[rng.random(w_true.shape) < 0.3] = 0  # many optima on the boundary
    x = rng.poisson(w_true @ h).astype(np.float64)
    w = BatchedNNLS(h).solve(x @ h.T)
    gaps = [_relative_objective_gap(h.T, x[i], w[i]) for i in range(len(x))]
    assert max(gaps) < 1e-6


def test_nnls_of_an_empty_map_is_zero():
    basis = np.random.default_rng(0).random((5, 50))
    assert not BatchedNNLS(basis).solve(np.zeros((3, 5))).any()


def _payload() -> dict:
    return {
        "geometry_version": "ring2-140x56-cross-removed-136x48-v1",
        "components": np.ones((2, 3), np.float32),
        "nested": {"runs": [1, 2], "name": "x", "value": np.float64(2.5)},
    }


def test_artifact_round_trip_and_joblib_compatibility(tmp_path):
    path = save_artifact(_payload(), tmp_path / "m.joblib")
    loaded = load_artifact(path)
    assert loaded["nested"] == {"runs": [1, 2], "name": "x", "value": 2.5}
    assert type(loaded["nested"]["value"]) is float  # numpy scalars become plain values
    np.testing.assert_array_equal(loaded["components"], np.ones((2, 3)))
    np.testing.assert_array_equal(joblib.load(path)["components"], np.ones((2, 3)))


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.joblib"
    path.write_bytes(pickle.dumps({"format_version": 1, "x": _RunsCode(marker)}, protocol=4))
    with pytest.raises(ArtifactError, match=r"Refusing to load (posix|os)\.system"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="Refusing"):
        PixelRing2NMF.load(path)
    assert not marker.exists()


def test_foreign_truncated_and_missing_files_get_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.joblib")
    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(pickle.dumps(_payload(), protocol=4)[:50])
    with pytest.raises(ArtifactError, match="not a readable PixelRing2NMF model"):
        load_artifact(truncated)
    wrong = tmp_path / "wrong.joblib"
    wrong.write_bytes(pickle.dumps({"format_version": 99}, protocol=4))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_artifact(wrong)
    buffer = io.BytesIO()
    pickle.dump([1, 2], buffer, protocol=4)
    (tmp_path / "list.joblib").write_bytes(buffer.getvalue())
    with pytest.raises(ArtifactError, match="expected a dict"):
        load_artifact(tmp_path / "list.joblib")


def test_shipped_model_holds_provenance():
    meta = PixelRing2NMF.load(DEFAULT_MODEL_PATH).metadata
    training = meta["training"]
    for key in ("data_files", "runs", "n_ls_read", "n_ls_good", "n_ls_used", "libraries"):
        assert key in training, key
    assert training["n_ls_used"] >= 500
    assert meta["thresholds"]["z_threshold"] > 0


@needs_image_venv
def test_shipped_model_loads_under_the_image_versions(tmp_path):
    """numpy 1.26.4 / scikit-learn 1.4.1.post1 / joblib 1.3.2, the project not installed."""
    folder = tmp_path / "pixel-ring2-nmf"
    subprocess.run(["cp", "-r", str(REPO / "mlserver_model"), str(folder)], check=True)
    code = (
        "import sys, numpy, joblib, sklearn; import app; "
        "from mlserver_model.pixelring2nmf import PixelRing2NMF; "
        "m = PixelRing2NMF.load('pixelring2nmf.joblib'); "
        "loaded = joblib.load('pixelring2nmf.joblib')['components']; "
        "assert loaded.shape == m.components.shape[:1] + (136, 48); "
        "print(numpy.__version__, sklearn.__version__, joblib.__version__, m.components.shape)"
    )
    out = subprocess.run(
        [str(IMAGE_PYTHON), "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(folder)},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["1.26.4", "1.4.1.post1", "1.3.2"]
    assert sys.version_info >= (3, 10)
