"""The simulator writes DIALS/OMS files in the real formats, and its truth matches its maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlserver_model.geometry import (
    CROSS_COLUMNS,
    CROSS_ROWS,
    GROUP_DISK,
    GROUP_ID_MODEL,
    GROUP_ROG,
    MAP_SHAPE,
    group_index,
)
from mlserver_model.preprocessor import remove_cross
from pixelring2nmf import cli
from pixelring2nmf.sim import simulate as simulator

DIALS_COLUMNS = [
    "dataset",
    "me",
    "dataset_id",
    "file_id",
    "run_number",
    "ls_number",
    "me_id",
    "x_min",
    "x_max",
    "x_bin",
    "y_min",
    "y_max",
    "y_bin",
    "entries",
    "data",
]


def _nested_to_maps(data: pd.Series) -> np.ndarray:
    """DIALS `data` cells (140 lists of 56) -> (N, 140, 56), checking every cell's layout."""
    maps = []
    for cell in data:
        assert len(cell) == MAP_SHAPE[0]
        assert all(len(row) == MAP_SHAPE[1] for row in cell)
        maps.append(np.stack(cell))
    return np.asarray(maps)


def _read_outputs(out: Path) -> tuple[pd.DataFrame, np.ndarray, dict, pd.DataFrame]:
    parquet = out / simulator.parquet_name("Run2025Z")
    frame = pd.read_parquet(parquet)
    maps = _nested_to_maps(frame["data"])
    with open(out / "omsdata_Run2025Z-v1.json") as stream:
        oms = json.load(stream)
    truth = pd.read_csv(out / "truth.csv", keep_default_na=False)
    return frame, maps, oms, truth


def _dcs_good(oms: dict) -> np.ndarray:
    good = np.ones(len(oms["run_number"]), dtype=bool)
    for flag in simulator.DCS_FLAGS:
        good &= np.array([v is True for v in oms[flag]])
    return good


@pytest.fixture(scope="module")
def cli_output(tmp_path_factory) -> tuple[pd.DataFrame, np.ndarray, dict, pd.DataFrame]:
    """`pixelring2nmf simulate --out tmp --runs 2 --seed 1`, read back."""
    out = tmp_path_factory.mktemp("sim")
    assert cli.main(["simulate", "--out", str(out), "--runs", "2", "--seed", "1"]) == 0
    return _read_outputs(out)


@pytest.fixture(scope="module")
def busy_run() -> tuple[simulator.Detector, simulator.SimulatedRun]:
    """One run with many anomalies of every kind, through the Python API."""
    detector = simulator.make_detector(7)
    run = simulator.simulate_run(
        390123, 1200, detector, np.random.default_rng(8), anomalies="era", anomaly_rate=0.05
    )
    return detector, run


# --- files ----------------------------------------------------------------------------------


def test_cli_writes_parquet_oms_and_truth(tmp_path):
    assert cli.main(["simulate", "--out", str(tmp_path), "--runs", "2", "--seed", "1"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [simulator.parquet_name("Run2025Z"), "omsdata_Run2025Z-v1.json", "truth.csv"]
    )
    assert names[0].startswith("ZeroBias-Run2025Z-PromptReco-v1-DQMIO-PixelPhase1-")
    assert names[0].endswith(
        "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_2.parquet"
    )


def test_parquet_has_dials_columns_and_ring2_maps(cli_output):
    frame, maps, _, _ = cli_output
    assert list(frame.columns) == DIALS_COLUMNS
    assert (frame["x_bin"] == 56.0).all() and frame["x_bin"].dtype == np.float64
    assert (frame["y_bin"] == 140.0).all() and frame["y_bin"].dtype == np.float64
    assert (frame[["x_min", "x_max", "y_min", "y_max"]].iloc[0] == [-3.5, 3.5, -17.5, 17.5]).all()
    assert maps.shape == (len(frame), *MAP_SHAPE)
    # counts stored as doubles, the layout cmsdials files have: whole and non-negative
    assert maps.min() >= 0 and np.array_equal(maps, np.round(maps))
    np.testing.assert_array_equal(frame["entries"].to_numpy(), maps.sum(axis=(1, 2)))
    assert (
        frame["me"]
        .iloc[0]
        .endswith("clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_2")
    )


def test_data_column_is_the_real_layout_by_default_and_int_lists_on_request(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pixelring2nmf.io.parquet import read_dials_parquet

    layouts = {}
    for name, extra in (("default", []), ("ints", ["--int-lists"])):
        out = tmp_path / name
        args = ["simulate", "--out", str(out), "--runs", "1", "--ls-per-run", "30", *extra]
        assert cli.main(args) == 0
        path = out / simulator.parquet_name("Run2025Z")
        layouts[name] = (pq.read_schema(path).field("data").type, read_dials_parquet(path))
    assert layouts["default"][0] == pa.list_(pa.list_(pa.float64()))
    assert layouts["ints"][0] == pa.list_(pa.list_(pa.int32()))
    # same seed, same counts: only the storage type differs
    np.testing.assert_array_equal(layouts["default"][1].maps, layouts["ints"][1].maps)


def test_cross_is_empty_in_every_ls(cli_output):
    _, maps, _, _ = cli_output
    assert not maps[:, CROSS_ROWS, :].any()
    assert not maps[:, :, CROSS_COLUMNS].any()
    assert maps.sum() > 0


def test_rows_are_sorted_unique_run_ls(cli_output):
    frame, _, _, _ = cli_output
    key = frame["run_number"].to_numpy() * 10000 + frame["ls_number"].to_numpy()
    assert (np.diff(key) > 0).all()
    assert frame["run_number"].nunique() == 2


def test_oms_json_has_the_real_layout_and_covers_every_ls(cli_output):
    frame, _, oms, _ = cli_output
    reference = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    assert list(oms) == list(simulator.OMS_KEYS)
    assert len(oms) == 17
    lengths = {len(v) for v in oms.values()}
    assert len(lengths) == 1
    oms_keys = pd.MultiIndex.from_arrays([oms["run_number"], oms["lumisection_number"]])
    dials_keys = pd.MultiIndex.from_arrays([frame["run_number"], frame["ls_number"]])
    assert dials_keys.isin(oms_keys).all()
    for run in set(oms["run_number"]):
        ls = [
            n for r, n in zip(oms["run_number"], oms["lumisection_number"], strict=True) if r == run
        ]
        assert ls == list(range(1, len(ls) + 1))
    if (reference / "omsdata_Run2024I-v1.json").is_file():
        with open(reference / "omsdata_Run2024I-v1.json") as stream:
            real = json.load(stream)
        assert list(oms) == list(real)
        for key in oms:
            sim_types = {type(v) for v in oms[key] if v is not None}
            assert sim_types <= {type(v) for v in real[key]}, key


def test_dcs_flags_are_off_at_run_start_and_end(cli_output):
    _, _, oms, _ = cli_output
    good = _dcs_good(oms)
    runs = np.array(oms["run_number"])
    for run in np.unique(runs):
        run_good = good[runs == run]
        assert not run_good[:2].any() and not run_good[-2:].any()
        assert run_good.mean() > 0.9


def test_occupancy_at_pileup_63_is_typical(cli_output):
    frame, maps, oms, _ = cli_output
    oms_frame = pd.DataFrame(oms).set_index(["run_number", "lumisection_number"])
    keys = pd.MultiIndex.from_arrays([frame["run_number"], frame["ls_number"]])
    pileup = oms_frame.loc[keys, "pileup"].to_numpy(dtype=float)
    near_63 = (pileup > 61) & (pileup < 65)
    assert near_63.sum() > 50
    model = remove_cross(maps[near_63]).reshape(near_63.sum(), -1)
    occupancy = np.median(model[:, model.max(axis=0) > 0], axis=1)
    assert 400 < np.median(occupancy) < 1400


def test_clean_run_has_no_anomaly_and_no_missing_ls(tmp_path):
    simulator.simulate(tmp_path, runs=2, seed=3, ls_per_run=200, clean=True)
    frame, _, oms, truth = _read_outputs(tmp_path)
    assert truth.empty and list(truth.columns) == list(simulator.TRUTH_COLUMNS)
    assert len(frame) == len(oms["run_number"]) == 400


def test_same_seed_gives_identical_files_other_seed_differs(tmp_path):
    def files(seed: int, name: str) -> dict[str, bytes]:
        paths = simulator.simulate(tmp_path / name, runs=2, seed=seed, ls_per_run=120)
        return {key: path.read_bytes() for key, path in paths.items()}

    first, again, other = files(11, "a"), files(11, "b"), files(12, "c")
    assert first == again
    assert first["parquet"] != other["parquet"]


# --- truth vs maps --------------------------------------------------------------------------


def test_truth_groups_are_dead_in_the_cli_maps(cli_output):
    frame, maps, oms, truth = cli_output
    assert set(truth.columns) == set(simulator.TRUTH_COLUMNS)
    assert len(truth) > 0
    dials_keys = zip(frame["run_number"], frame["ls_number"], strict=True)
    row_of = {key: i for i, key in enumerate(dials_keys)}
    oms_keys = zip(oms["run_number"], oms["lumisection_number"], strict=True)
    good = dict(zip(oms_keys, _dcs_good(oms), strict=True))
    model = remove_cross(maps)
    for entry in truth.itertuples():
        assert good[(entry.run, entry.ls)], "anomalies are injected at DCS-good LS only"
        if entry.anomaly_type == "Missing":
            assert (entry.run, entry.ls) not in row_of
            continue
        groups = [group_index(name) for name in entry.groups.split(";")]
        in_groups = np.isin(GROUP_ID_MODEL, groups)
        if entry.anomaly_type in ("Multi-Disk", "Quarter", "Single-Disk"):
            assert not model[row_of[(entry.run, entry.ls)]][in_groups].any()


def test_truth_rows_match_the_api_maps(busy_run):
    detector, run = busy_run
    truth = run.truth
    assert set(truth["anomaly_type"]) == set(simulator.ANOMALY_KINDS)
    row_of = {ls: i for i, ls in enumerate(run.ls)}
    model = remove_cross(run.maps)
    anomalous_ls = set(truth["ls"])
    normal_rows = [i for i, ls in enumerate(run.ls) if ls not in anomalous_ls and run.dcs_good[i]]
    live = detector.live_rocs
    for entry in truth.itertuples():
        if entry.anomaly_type == "Missing":
            assert entry.ls not in row_of and entry.n_dead_rocs == 0
            continue
        groups = [group_index(name) for name in entry.groups.split(";")]
        in_groups = np.isin(GROUP_ID_MODEL, groups)
        counts = model[row_of[entry.ls]]
        reference = model[normal_rows[np.searchsorted(normal_rows, row_of[entry.ls]) - 1]]
        zero_live = int((live & in_groups & (counts == 0)).sum())
        if entry.anomaly_type in ("Multi-Disk", "Quarter", "Single-Disk"):
            assert entry.n_dead_rocs == int((live & in_groups).sum()) == zero_live
        elif entry.anomaly_type == "Partial":
            assert entry.n_dead_rocs == zero_live
            assert 0.25 < entry.n_dead_rocs / (live & in_groups).sum() < 0.95
        elif entry.anomaly_type == "Hot-ROC":
            assert entry.n_dead_rocs == 0
            assert (counts[in_groups] > 4 * reference[in_groups] + 50).any()
        if entry.anomaly_type == "Multi-Disk":
            assert 2 <= len(groups) <= 3
            assert len(set(GROUP_DISK[groups])) == len(groups)
            assert len(set(GROUP_ROG[groups])) == 1
            assert len({np.sign(GROUP_DISK[g]) for g in groups}) == 1
        if entry.anomaly_type == "Quarter":
            assert len(groups) == 12


def test_anomalies_last_1_to_16_ls(busy_run):
    _, run = busy_run
    truth = run.truth
    block = (truth["ls"].diff() != 1) | (truth["groups"] != truth["groups"].shift())
    durations = truth.groupby(block.cumsum()).size()
    assert durations.min() >= 1 and durations.max() <= 16
    assert len(durations) >= 10


# --- demo scenario --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 5])
def test_demo_has_one_multidisk_ls_and_a_3ls_single_disk(tmp_path, seed):
    simulator.simulate(tmp_path, runs=3, seed=seed, scenario="demo")
    frame, _, oms, truth = _read_outputs(tmp_path)
    assert len(frame) == len(oms["run_number"]) == 750
    assert frame["ls_number"].tolist() == list(range(1, 751))
    assert sorted(set(truth["anomaly_type"])) == ["Multi-Disk", "Single-Disk"]
    multi = truth[truth["anomaly_type"] == "Multi-Disk"]
    assert len(multi) == 1
    groups = [group_index(name) for name in multi["groups"].iloc[0].split(";")]
    assert sorted(np.abs(GROUP_DISK[groups]).tolist()) == [1, 2, 3]
    single = truth[truth["anomaly_type"] == "Single-Disk"]
    assert len(single) == 3 and single["groups"].nunique() == 1
    assert np.diff(single["ls"]).tolist() == [1, 1]
    good = _dcs_good(oms)
    assert good[truth["ls"].to_numpy() - 1].all()
    assert truth["ls"].min() > 150 and truth["ls"].max() < 600
    assert not good[:2].any() and not good[-2:].any()
    assert all(v is not None for values in oms.values() for v in values)


def test_demo_and_clean_together_is_an_error(tmp_path, capsys):
    code = cli.main(["simulate", "--out", str(tmp_path), "--scenario", "demo", "--clean"])
    assert code == 2
    assert "--clean" in capsys.readouterr().err


def test_bad_era_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="era"):
        simulator.simulate(tmp_path, runs=1, seed=0, era="Run2025/../x")


# --- Python API -----------------------------------------------------------------------------


def test_detector_is_seeded_and_has_the_dead_group():
    detector = simulator.make_detector(3)
    assert detector.gain_model.shape == detector.dead_rocs.shape == (136, 48)
    live = ~detector.dead_rocs
    assert detector.gain_model[live].mean() == pytest.approx(1.0)
    assert (detector.gain_model[detector.dead_rocs] == 0).all()
    assert (detector.gain_model[live] > 0).all()
    assert detector.dead_rocs[group_index("FPix_BmO_D1_ROG2") == GROUP_ID_MODEL].all()
    assert 0.03 < detector.dead_rocs.mean() < 0.08
    spread = detector.gain_model[live].std()
    assert 0.1 < spread < 0.5  # tens of percent
    np.testing.assert_array_equal(simulator.make_detector(3).gain_model, detector.gain_model)
    assert not np.array_equal(simulator.make_detector(4).dead_rocs, detector.dead_rocs)


def test_expected_maps_mean_equals_occupancy_and_shape_drifts_with_pileup():
    detector = simulator.make_detector(1)
    occupancy = np.array([250.0, 800.0])
    expected = simulator.expected_maps(detector, occupancy, np.array([20.0, 64.0]))
    assert expected.shape == (2, 136, 48) and expected.dtype == np.float64
    live = ~detector.dead_rocs
    np.testing.assert_allclose(expected[:, live].mean(axis=1), occupancy)
    assert (expected[:, detector.dead_rocs] == 0).all()
    ratio = expected[1][live] / expected[0][live] / (800 / 250)
    assert 0.02 < ratio.std() < 0.2  # the shape changes a little, not only the scale
    default = simulator.expected_maps(detector, occupancy)
    assert default.shape == expected.shape
    with pytest.raises(ValueError, match="occupancy"):
        simulator.expected_maps(detector, np.array([-1.0]))


def test_sample_maps_is_poisson():
    rng = np.random.default_rng(0)
    for mean in (8.0, 800.0):
        counts = simulator.sample_maps(np.full((50, 136, 48), mean), rng)
        assert counts.dtype == np.int32 and counts.shape == (50, 136, 48)
        assert counts.mean() == pytest.approx(mean, rel=0.01)
        assert counts.var() == pytest.approx(mean, rel=0.03)
    skew = ((counts - 800.0) ** 3).mean() / 800.0**1.5
    assert skew == pytest.approx(800.0**-0.5, abs=0.015)
    assert (simulator.sample_maps(np.zeros((1, 136, 48)), rng) == 0).all()


def test_kill_groups_zeroes_in_place_and_counts_new_dead():
    detector = simulator.make_detector(2)
    maps = simulator.expected_maps(detector, np.full(4, 700.0))
    dead_group = group_index("FPix_BmO_D1_ROG2")
    other = group_index("FPix_BpI_D2_ROG3")
    n_live_other = int((~detector.dead_rocs & (other == GROUP_ID_MODEL)).sum())
    assert simulator.kill_groups(maps, [1, 2], [dead_group, other]) == n_live_other
    assert not maps[1:3][:, other == GROUP_ID_MODEL].any()
    assert maps[0][other == GROUP_ID_MODEL].any() and maps[3][other == GROUP_ID_MODEL].any()
    group3 = group_index("FPix_BmI_D3_ROG4")
    killed = simulator.kill_groups(maps, 0, group3, fraction=0.5, rng=np.random.default_rng(1))
    zeroed = (maps[0][group3 == GROUP_ID_MODEL] == 0).sum()
    assert killed == zeroed - (detector.dead_rocs & (group3 == GROUP_ID_MODEL)).sum() > 0
    assert abs(zeroed - 0.5 * (group3 == GROUP_ID_MODEL).sum()) <= 16
    with pytest.raises(ValueError, match="rng"):
        simulator.kill_groups(maps, 0, group3, fraction=0.5)
    with pytest.raises(ValueError, match="shape"):
        simulator.kill_groups(np.zeros((2, 140, 56)), 0, group3)


def test_simulate_run_api(busy_run):
    _, run = busy_run
    assert run.maps.shape == (run.ls.size, *MAP_SHAPE) and run.maps.dtype == np.int32
    assert len(run.oms["run_number"]) == 1200
    missing = set(run.truth.loc[run.truth["anomaly_type"] == "Missing", "ls"])
    assert set(range(1, 1201)) - set(run.ls.tolist()) == missing
    assert run.pileup.shape == run.occupancy_per_roc.shape == run.ls.shape
    good = run.dcs_good & (run.pileup > 61)
    if good.any():
        assert 400 < np.median(run.occupancy_per_roc[good]) < 1400
