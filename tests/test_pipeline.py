"""The pipeline end to end on simulated runs: flags, Metric, types, DCS filter, log lines, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.errors import InputError
from mlserver_model.geometry import GROUP_ID_MODEL, MAP_SHAPE, group_index
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf import cli
from pixelring2nmf.io.oms import align_oms, read_oms_json
from pixelring2nmf.io.parquet import read_dials_parquet
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.original import original_rule_flags

LOG_LINES = (
    "[INFO]: Flagging results (before filtering): flagged {x} out of {n} lumisections.",
    "[INFO]: Filtering: selected {m} out of {n} lumisections.",
    "[INFO]: Flagging results (after filtering): flagged {y} out of {n} lumisections.",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = simulator.simulate(out, runs=1, seed=1, scenario="demo")
    data = read_dials_parquet(paths["parquet"])
    return paths, data


def _silent_lines(caplog, result) -> list[str]:
    """The three lines the result gives, after checking that predicting logged nothing."""
    assert caplog.records == []  # the runtime is silent: its callers print the lines
    return list(result.flagging_lines())


def test_demo_run_flags_exactly_the_multidisk_ls(model, demo, caplog):
    paths, data = demo
    truth = pd.read_csv(paths["truth"])
    assert len(data) == 750
    multidisk_ls = truth.loc[truth.anomaly_type == "Multi-Disk", "ls"].tolist()
    assert len(multidisk_ls) == 1
    all_true = {flag: np.ones(len(data), dtype=bool) for flag in DCS_FLAGS}
    with caplog.at_level(logging.DEBUG):
        result = model.predict(data.maps, all_true)
    lines = _silent_lines(caplog, result)
    assert lines == [line.format(x=1, m=750, y=1, n=750) for line in LOG_LINES]
    assert data.ls[result.flag].tolist() == multidisk_ls
    (i,) = np.flatnonzero(result.flag)
    assert result.anomaly_type[i] == "Multi-Disk"
    truth_groups = set(truth.loc[truth.anomaly_type == "Multi-Disk", "groups"].item().split(";"))
    assert set(result.groups()[i].split(";")) == truth_groups
    single = truth.loc[truth.anomaly_type == "Single-Disk", "ls"].to_numpy()
    assert len(single) == 3
    # the demo's Single-Disk outage is FPix_BmO_D2_ROG2, whose disk-1 partner is dead in the
    # model: the model types it Same-Disk (a Multi-Disk outage could hide behind that disk)
    assert truth.loc[truth.anomaly_type == "Single-Disk", "groups"].unique().tolist() == [
        "FPix_BmO_D2_ROG2"
    ]
    assert (result.anomaly_type[np.isin(data.ls, single)] == "Same-Disk").all()
    assert (result.metric[np.isin(data.ls, single)] == 0).all()


def test_demo_run_with_the_simulated_oms_flags(model, demo, caplog):
    paths, data = demo
    oms = align_oms(read_oms_json(paths["oms"]), data.run, data.ls)
    # the DCS-good count, straight from the JSON file
    raw = json.loads(paths["oms"].read_text())
    good_ls = {
        (raw["run_number"][i], raw["lumisection_number"][i])
        for i in range(len(raw["run_number"]))
        if all(raw[flag][i] is True for flag in DCS_FLAGS)
    }
    pairs = zip(data.run.tolist(), data.ls.tolist(), strict=True)
    selected = sum(pair in good_ls for pair in pairs)
    assert 0 < selected < 750
    with caplog.at_level(logging.DEBUG):
        result = model.predict(data.maps, oms)
    lines = _silent_lines(caplog, result)
    assert lines == [line.format(x=1, m=selected, y=1, n=750) for line in LOG_LINES]
    assert result.dcs.n_good == selected


def _healthy(n: int, occupancy: float, seed: int = 0) -> np.ndarray:
    detector = simulator.default_detector()
    rng = np.random.default_rng(seed)
    return simulator.expected_maps(detector, np.full(n, occupancy)), rng


def _kill(expected: np.ndarray, ls: int, names: list[str]) -> None:
    for name in names:
        expected[ls][GROUP_ID_MODEL == group_index(name)] = 0


def test_metric_is_zero_when_healthy_and_grows_with_extent(model):
    expected, rng = _healthy(6, 400.0)
    _kill(expected, 1, ["FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3"])
    _kill(expected, 2, ["FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3", "FPix_BpI_D3_ROG3"])
    _kill(expected, 3, [f"FPix_BmI_D{d}_ROG{r}" for d in (1, 2, 3) for r in (1, 2, 3, 4)])
    _kill(expected, 4, ["FPix_BpI_D1_ROG3"])
    maps = insert_cross(simulator.sample_maps(expected, rng))
    result = model.predict(maps)
    assert result.flag.tolist() == [False, True, True, True, False, False]
    assert result.metric[0] == 0 and result.metric[4] == 0 and result.metric[5] == 0
    assert 1 <= result.metric[1] < result.metric[2] <= result.metric[3]
    assert result.anomaly_type.tolist() == [
        "none",
        "Multi-Disk",
        "Multi-Disk",
        "Quarter",
        "Single-Disk",
        "none",
    ]
    assert result.groups()[1] == "FPix_BpI_D1_ROG3;FPix_BpI_D2_ROG3"


def test_low_occupancy_outage_caught_where_the_original_rule_misses_it(model):
    expected, rng = _healthy(2, 60.0, seed=3)
    _kill(expected, 0, ["FPix_BpO_D2_ROG4", "FPix_BpO_D3_ROG4"])
    maps = insert_cross(simulator.sample_maps(expected, rng))
    assert model.predict(maps).flag.tolist() == [True, False]
    assert original_rule_flags(model, maps).tolist() == [False, False]


def test_per_roc_maps_on_request(model):
    expected, rng = _healthy(3, 500.0, seed=4)
    _kill(expected, 2, ["FPix_BpO_D2_ROG1"])
    maps = insert_cross(simulator.sample_maps(expected, rng))
    result = model.predict(maps, roc_maps=True)
    assert set(result.roc_maps) == {"reconstruction", "significance", "bad"}
    for array in result.roc_maps.values():
        assert array.shape == (3, *MAP_SHAPE)
        assert not array[:, 68:72].any() and not array[:, :, 24:32].any()  # the cross
    bad = result.roc_maps["bad"]
    assert bad[2].sum() >= 0.9 * 128 and bad[0].sum() < 5
    assert model.predict(maps).roc_maps is None


def _one_count(ls: int, row: int, column: int, value: float) -> np.ndarray:
    maps = np.ones((ls + 1, 140, 56), dtype=np.float64 if isinstance(value, float) else np.int64)
    maps[ls, row, column] = value
    return maps


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (np.zeros((2, 139, 56)), r"shape \(n, 140, 56\), got \(2, 139, 56\)"),
        (np.zeros((140, 56)), r"got \(140, 56\)"),
        (np.full((1, 140, 56), "x"), "numeric"),
        (np.full((1, 140, 56), -3), r"in \[0, 4294967295\], found -3 at LS 0, row 0, column 0"),
        (np.full((1, 140, 56), np.nan), "found NaN at LS 0"),
        (np.full((1, 140, 56), np.inf), "found inf at LS 0"),
        # counts float32 inference cannot hold: refused, not turned into a Metric of 0
        (_one_count(20, 3, 7, 2**63 - 1), "found 9223372036854775807 at LS 20, row 3, column 7"),
        (_one_count(20, 3, 7, 2**32), "found 4294967296 at LS 20, row 3, column 7"),
        (_one_count(0, 1, 2, 3e38), r"found 3e\+38 at LS 0, row 1, column 2"),
    ],
)
def test_bad_maps_get_clear_errors(model, maps, message):
    with pytest.raises(InputError, match=message):
        model.predict(maps)


def test_empty_batch(model, caplog):
    with caplog.at_level(logging.DEBUG):
        result = model.predict(np.zeros((0, 140, 56), np.int32))
    assert result.flag.shape == (0,) and result.metric.shape == (0,)
    assert _silent_lines(caplog, result)[0].endswith("flagged 0 out of 0 lumisections.")


def test_cli_predict_writes_the_table(demo, tmp_path, capsys):
    paths, _ = demo
    out = tmp_path / "flags.csv"
    assert cli.main(["predict", "--parquet", str(paths["parquet"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[INFO]: Flagging results (before filtering): flagged 1 out of 750" in printed
    table = pd.read_csv(out)
    assert list(table.columns[:6]) == ["run", "ls", "flag", "metric", "type", "groups"]
    assert table.flag.sum() == 1 and len(table) == 750


def test_cli_train_uses_only_good_ls_outside_exclusions(tmp_path, capsys):
    paths = simulator.simulate(tmp_path / "sim", runs=1, seed=5, ls_per_run=120, clean=True)
    data = read_dials_parquet(paths["parquet"])
    exclude = tmp_path / "exclude.csv"
    exclude.write_text(f"run,ls_first,ls_last\n{data.run[0]},30,39\n")
    out = tmp_path / "m.joblib"
    args = ["train", "--parquet", str(paths["parquet"]), "--oms", str(paths["oms"])]
    args += ["--exclude", str(exclude), "--passes", "20", "--out", str(out)]
    assert cli.main(args) == 0
    training = PixelRing2NMF.load(out).metadata["training"]
    good = align_oms(read_oms_json(paths["oms"]), data.run, data.ls)
    n_dcs_good = int(np.all([np.asarray(good[f]) == True for f in DCS_FLAGS], axis=0).sum())  # noqa: E712
    in_range = (data.ls >= 30) & (data.ls <= 39)
    assert training["n_ls_used"] == n_dcs_good - int(
        (in_range & np.all([np.asarray(good[f]) == True for f in DCS_FLAGS], axis=0)).sum()  # noqa: E712
    )
    assert training["runs"] == [int(data.run[0])]
    assert training["exclusions"] == [[int(data.run[0]), 30, 39]]
    assert "Model written to" in capsys.readouterr().out
    bad_exclude = tmp_path / "bad.csv"
    bad_exclude.write_text("run,first\n1,2\n")
    args[args.index(str(exclude))] = str(bad_exclude)
    args[args.index(str(out))] = str(tmp_path / "other.joblib")
    assert cli.main(args) == 2
    assert "needs columns run, ls_first, ls_last (ranges) or run, ls" in capsys.readouterr().err
