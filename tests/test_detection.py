"""Detection at every occupancy, on simulated maps and on maps from the real NMF components.

The acceptance bar (>= 99 % of ROGs dead on 2 disks, >= 95 % of 60 %-dead ROGs, no flag on
clean LS, Single-Disk anomalies or the permanently dead group) is checked here on fewer LS
than `bench/detection.py` uses for BENCHMARKS.md, so that CI stays quick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf import cli
from pixelring2nmf import simulate as simulator
from pixelring2nmf.evaluation import (
    OCCUPANCIES,
    StudySize,
    detection_study,
    failures,
    real_component_maker,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REAL_COMPONENTS = REFERENCE / "ring2_nmf_components_2025C.npy"
SIZE = StudySize(anomalous_ls_per_occupancy=200, clean_ls_per_occupancy=3000)


def _simulated_maker(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pileup = rng.uniform(20, 65, len(occupancy))  # map shape independent of the occupancy
    return simulator.expected_maps(simulator.default_detector(), occupancy, pileup)


def _check(table) -> None:
    assert set(table.occupancy) == set(OCCUPANCIES)
    assert table[table.scenario == "clean"].n_ls.sum() >= 20_000
    assert failures(table) == []


def test_detection_on_simulated_maps_with_the_shipped_model():
    table = detection_study(
        PixelRing2NMF.load(), _simulated_maker, simulator.sample_maps, seed=1, size=SIZE
    )
    _check(table)
    # the original rule is blind at low occupancy: the weakness this model fixes
    dead = table[table.scenario == "dead ROG on 2 disks"].set_index("occupancy")
    assert dead.loc[50, "rate_original"] < 0.05 and dead.loc[50, "rate"] == 1.0


@pytest.mark.skipif(not REAL_COMPONENTS.exists(), reason="../shared/reference is absent")
def test_detection_on_maps_from_the_real_components(tmp_path):
    components = np.load(REAL_COMPONENTS)
    make = real_component_maker(components)
    rng = np.random.default_rng(7)
    n_train = 900
    occupancy = rng.uniform(200, 1400, n_train)
    maps = insert_cross(rng.poisson(make(occupancy, rng)).reshape(n_train, 136, 48))
    parquet = simulator.write_dials_parquet(
        tmp_path / "real_components.parquet", maps, 392642, np.arange(1, n_train + 1)
    )
    model_path = tmp_path / "real.joblib"
    assert cli.main(["train", "--parquet", str(parquet), "--out", str(model_path)]) == 0
    model = PixelRing2NMF.load(model_path)
    assert model.metadata["training"]["n_ls_used"] == n_train
    table = detection_study(model, make, lambda e, r: r.poisson(e), seed=2, size=SIZE)
    _check(table)
