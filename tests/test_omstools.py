"""OMS JSON reading, alignment to (run, LS) and the DCS filter, on the real 2024I OMS file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.omstools import OMS_COLUMNS
from pixelring2nmf.io.oms import (
    align_oms,
    checked_oms_columns,
    dcs_filter_for,
    oms_from_lumisections,
    read_oms_json,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
OMS_2024I = REFERENCE / "omsdata_Run2024I-v1.json"

RUN = 386554  # a run where the DCS flags go false at its start and end
RUN_N_LS = 1398
RUN_N_DCS_GOOD = 1014  # counted once with the plain loop of _dcs_good_by_loop


@pytest.fixture(scope="module")
def real_columns() -> dict[str, list]:
    if not OMS_2024I.is_file():
        pytest.skip(f"reference OMS file absent: {OMS_2024I}")
    with open(OMS_2024I, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def real_oms() -> pd.DataFrame:
    if not OMS_2024I.is_file():
        pytest.skip(f"reference OMS file absent: {OMS_2024I}")
    return read_oms_json(OMS_2024I)


def _dcs_good_by_loop(columns: dict[str, list], run: int) -> dict[int, bool]:
    """The most literal reading of the rule: all 8 flags exactly True, row by row."""
    good = {}
    for i, row_run in enumerate(columns["run_number"]):
        if row_run == run:
            ls = columns["lumisection_number"][i]
            good[ls] = all(columns[flag][i] is True for flag in DCS_FLAGS)
    return good


# --------------------------------------------------------------------------- the real file


def test_real_file_shape(real_oms: pd.DataFrame) -> None:
    assert len(real_oms) == 29080
    assert tuple(real_oms.columns) == OMS_COLUMNS
    assert len(OMS_COLUMNS) == 17


def test_real_run_dcs_good_count(real_oms: pd.DataFrame, real_columns: dict) -> None:
    by_loop = _dcs_good_by_loop(real_columns, RUN)
    assert len(by_loop) == RUN_N_LS
    assert sum(by_loop.values()) == RUN_N_DCS_GOOD

    # ask in a shuffled order: the result must follow the order asked, not the file's
    ls = np.random.default_rng(0).permutation(np.array(sorted(by_loop), dtype=np.int64))
    run = np.full(ls.size, RUN, dtype=np.int64)
    result = dcs_filter_for(real_oms, run, ls)

    assert result.n_good == RUN_N_DCS_GOOD
    assert result.good.tolist() == [by_loop[int(x)] for x in ls]


def test_real_file_has_no_nulls_so_injected_nulls_fail(real_columns: dict, tmp_path: Path) -> None:
    """The 2024I file holds no null at all; nulls are injected into a copy in tmp_path."""
    assert not any(v is None for values in real_columns.values() for v in values)

    columns = {name: list(values) for name, values in real_columns.items()}
    by_loop = _dcs_good_by_loop(real_columns, RUN)
    good_ls = [ls for ls, good in sorted(by_loop.items()) if good][:8]
    rows = {
        ls: i
        for i, (r, ls) in enumerate(
            zip(columns["run_number"], columns["lumisection_number"], strict=True)
        )
        if r == RUN
    }
    for flag, ls in zip(DCS_FLAGS, good_ls, strict=True):
        columns[flag][rows[ls]] = None  # one null per flag, each on a different good LS
    columns["pileup"][rows[good_ls[0] + 1]] = None  # a null outside the flags changes nothing
    path = tmp_path / "oms_with_nulls.json"
    path.write_text(json.dumps(columns), encoding="utf-8")

    oms = read_oms_json(path)
    assert oms["fpix_ready"].isna().sum() == 1
    ls = np.array(sorted(by_loop), dtype=np.int64)
    result = dcs_filter_for(oms, np.full(ls.size, RUN), ls)

    assert result.n_good == RUN_N_DCS_GOOD - 8
    position = {int(x): i for i, x in enumerate(ls)}
    for flag, null_ls in zip(DCS_FLAGS, good_ls, strict=True):
        assert not result.good[position[null_ls]]
        assert result.failed_flags(position[null_ls]) == [flag]


def test_ls_missing_from_oms_fails(real_oms: pd.DataFrame) -> None:
    run = np.array([RUN, RUN, 999999, RUN], dtype=np.int64)
    ls = np.array([500, 99999, 1, 501], dtype=np.int64)
    result = dcs_filter_for(real_oms, run, ls)
    assert result.good.tolist() == [True, False, False, True]
    assert result.failed_flags(1) == list(DCS_FLAGS)

    aligned = align_oms(real_oms, run, ls)
    assert set(aligned) == set(OMS_COLUMNS)
    assert aligned["beams_stable"][1] is None and aligned["beams_stable"][0] is True
    assert np.isnan(aligned["pileup"][2]) and aligned["pileup"].dtype.kind == "f"
    assert aligned["lumisection_number"][3] == 501


def test_no_oms_passes_everything() -> None:
    result = dcs_filter_for(None, np.array([1, 1, 2]), np.array([1, 2, 1]))
    assert result.good.tolist() == [True, True, True]


# --------------------------------------------------------------------------- synthetic


def _small_columns() -> dict[str, list]:
    """Three LS; LS 10000 of run 1 would collide with LS 0 of run 2 under run*10000+ls."""
    columns: dict[str, list] = {name: [True, True, True] for name in DCS_FLAGS}
    columns["pileup"] = [55.0, 56.0, None]
    columns["run_number"] = [1, 2, 2]
    columns["lumisection_number"] = [10000, 0, 7]
    columns["beams_stable"] = [True, False, None]
    return columns


def _write_json(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "oms.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_ls_numbers_from_10000_do_not_collide(tmp_path: Path) -> None:
    oms = read_oms_json(_write_json(tmp_path, _small_columns()))
    result = dcs_filter_for(oms, np.array([2, 1, 2]), np.array([0, 10000, 7]))
    assert result.good.tolist() == [False, True, False]
    assert result.failed_flags(2) == ["beams_stable"]
    aligned = align_oms(oms, np.array([2, 1]), np.array([7, 10000]))
    assert np.isnan(aligned["pileup"][0]) and aligned["pileup"][1] == 55.0


def test_empty_oms_fails_every_ls(tmp_path: Path) -> None:
    columns = {name: [] for name in OMS_COLUMNS}
    oms = read_oms_json(_write_json(tmp_path, columns))
    result = dcs_filter_for(oms, np.array([1, 1]), np.array([1, 2]))
    assert result.good.tolist() == [False, False]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], r"expected a dict of column lists .* got list"),
        ({"run_number": [1, 2], "lumisection_number": [1]}, r"unequal lengths .*'run_number': 2"),
        ({"lumisection_number": [1], "pileup": [3.0]}, r"missing key column\(s\) \['run_number'\]"),
        ({"run_number": 1, "lumisection_number": [1]}, r"must be a list, not for \['run_number'\]"),
    ],
)
def test_bad_json_layouts(tmp_path: Path, content: object, message: str) -> None:
    path = _write_json(tmp_path, content)
    with pytest.raises(ValueError, match=rf"oms\.json: .*{message}"):
        read_oms_json(path)


def test_invalid_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"run_number": [1,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json is not an OMS JSON file: invalid JSON"):
        read_oms_json(path)


def test_duplicated_oms_rows_are_an_error(tmp_path: Path) -> None:
    columns = _small_columns()
    columns["lumisection_number"] = [10000, 7, 7]
    oms = read_oms_json(_write_json(tmp_path, columns))
    with pytest.raises(ValueError, match=r"1 duplicated \(run, ls\) pair\(s\), e.g. \[\(2, 7\)\]"):
        align_oms(oms, np.array([1]), np.array([1]))


def test_null_run_number_is_an_error(tmp_path: Path) -> None:
    columns = _small_columns()
    columns["run_number"] = [1, None, 2]
    oms = read_oms_json(_write_json(tmp_path, columns))
    with pytest.raises(ValueError, match=r"'run_number' has 1 null value"):
        dcs_filter_for(oms, np.array([1]), np.array([10000]))


@pytest.mark.parametrize("key", ["run_number", "lumisection_number"])
def test_a_fractional_key_is_an_error_not_truncated(tmp_path: Path, key: str) -> None:
    columns = _small_columns()
    columns[key][1] = 1.5 if key == "lumisection_number" else 2.5
    oms = read_oms_json(_write_json(tmp_path, columns))
    value = columns[key][1]
    message = (
        rf"OMS column '{key}' must hold integers, found 1 non-integer value\(s\), e.g. {value}"
    )
    with pytest.raises(ValueError, match=message):
        align_oms(oms, np.array([2]), np.array([1]))
    with pytest.raises(ValueError, match=message):
        dcs_filter_for(oms, np.array([2]), np.array([1]))


def test_partial_coverage_is_said_and_the_columns_are_aligned(tmp_path, caplog) -> None:
    oms = read_oms_json(_write_json(tmp_path, _small_columns()))
    run, ls = np.array([2, 5, 1]), np.array([7, 1, 10000])
    with caplog.at_level("WARNING", logger="pixelring2nmf.io.oms"):
        columns = checked_oms_columns(oms, run, ls, "oms.json")
    assert caplog.messages == [
        "oms.json covers 2 of 3 LS; the other 1 fail the DCS filter (runs without any OMS "
        "data: [5]; runs partly covered: none)"
    ]
    assert columns["lumisection_number"].tolist() == [7, None, 10000]
    assert np.isnan(columns["pileup"][1]) and columns["pileup"][2] == 55.0


def test_run_and_ls_lengths_must_match(tmp_path: Path) -> None:
    oms = read_oms_json(_write_json(tmp_path, _small_columns()))
    with pytest.raises(ValueError, match=r"equal length, got shapes \(2,\) and \(1,\)"):
        align_oms(oms, np.array([1, 2]), np.array([1]))


def test_oms_from_lumisections_builds_columns() -> None:
    rows = [
        {"run_number": 5, "lumisection_number": 1, "beams_stable": True, "extra": "a"},
        {"lumisection_number": 2, "run_number": 5, "beams_stable": None},
        {"run_number": 5, "lumisection_number": 3, "pileup": 40.5},
    ]
    columns = oms_from_lumisections(rows)
    assert list(columns) == ["pileup", "beams_stable", "run_number", "lumisection_number", "extra"]
    assert columns["beams_stable"] == [True, None, None]
    assert columns["pileup"] == [None, None, 40.5]
    assert columns["extra"] == ["a", None, None]
    assert oms_from_lumisections([]) == {}


def test_oms_from_lumisections_round_trip(real_columns: dict, tmp_path: Path) -> None:
    """Rows of the real file, as the OMS API would return them, give the same columns back."""
    n = 50
    rows = [{name: real_columns[name][i] for name in OMS_COLUMNS} for i in range(n)]
    columns = oms_from_lumisections(rows)
    assert columns == {name: real_columns[name][:n] for name in OMS_COLUMNS}


@pytest.mark.parametrize(
    ("rows", "message"),
    [({"run_number": [1]}, "got dict"), ([{"run_number": 1}, [1]], "lumisection 1 must be a dict")],
)
def test_oms_from_lumisections_rejects_bad_input(rows: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        oms_from_lumisections(rows)
