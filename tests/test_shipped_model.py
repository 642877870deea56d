"""The shipped model file: what a fresh machine and the production image get.

Users retrain on real data and overwrite this file (CI runs the whole suite once more with a
model of another simulated detector in its place), so these tests ask only what any usable
model must satisfy: it holds its provenance, it loads under the image's library versions with
the project not installed, and it flags a ROG dead on three disks.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from conftest import IMAGE_PYTHON, REPO, needs_image_venv

from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, PixelRing2NMF


def test_shipped_model_holds_provenance() -> None:
    meta = PixelRing2NMF.load(DEFAULT_MODEL_PATH).metadata
    training = meta["training"]
    for key in ("data_files", "runs", "n_ls_read", "n_ls_good", "n_ls_used", "libraries"):
        assert key in training, key
    assert training["n_ls_used"] >= 500
    assert meta["thresholds"]["z_threshold"] > 0


@needs_image_venv
def test_shipped_model_flags_the_demo_multidisk_ls_under_the_image_versions(
    demo_dir: Path, demo_data: dict[str, Any], tmp_path: Path
) -> None:
    """numpy 1.26.4 / scikit-learn 1.4.1.post1 / joblib 1.3.2, only the folder visible."""
    truth = pd.read_csv(demo_dir / "truth.csv")
    multidisk_ls = truth.loc[truth.anomaly_type == "Multi-Disk", "ls"]
    (row,) = np.flatnonzero(np.isin(demo_data["ls_number"], multidisk_ls))
    maps_path = tmp_path / "maps.npy"
    np.save(maps_path, np.asarray(demo_data["Ring2"]))
    folder = tmp_path / "pixel-ring2-nmf"
    subprocess.run(["cp", "-r", str(REPO / "mlserver_model"), str(folder)], check=True)
    code = (
        "import sys, numpy, joblib, sklearn; import app; "
        "m = app.PixelRing2NMF.load('pixelring2nmf.joblib'); "
        f"flag = m.predict(numpy.load({str(maps_path)!r})).flag; "
        "print(numpy.__version__, sklearn.__version__, joblib.__version__, "
        "' '.join(map(str, numpy.flatnonzero(flag))))"
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
    numpy_version, sklearn_version, joblib_version, *flagged = out.stdout.split()
    assert (numpy_version, sklearn_version, joblib_version) == ("1.26.4", "1.4.1.post1", "1.3.2")
    assert str(row) in flagged


def test_the_shipped_ring1_and_joint_models_are_those_of_their_templates() -> None:
    """template_ring1.yaml and template_fpix.yaml deploy them (their builds check the rest)."""
    from mlserver_model.geometry import RING1, RING2
    from mlserver_model.joint import JointNMF, load_model

    ring1 = load_model(REPO / "mlserver_model" / "pixelring1nmf.joblib")
    joint = load_model(REPO / "mlserver_model" / "pixelfpixnmf.joblib")
    assert (ring1.name, ring1.geometry) == ("pixel-ring1-nmf", RING1)
    assert isinstance(joint, JointNMF) and joint.name == "pixel-fpix-nmf"
    assert joint.geometries == (RING1, RING2)
    assert ring1.metadata["training"]["n_ls_used"] >= 500
    for ring in ("Ring1", "Ring2"):  # each ring's provenance, under its input name
        assert joint.metadata["training"][ring]["n_ls_used"] >= 500
