"""DIALS parquet reading/streaming and the DCS filter, on small parquet files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlserver_model.dftools import DCS_FLAGS, DcsResult, dcs_filter
from pixelring2nmf.errors import DataError
from pixelring2nmf.io.parquet import (
    Ring2Data,
    _row_groups_with_runs,
    iter_dials_parquet,
    read_dials_parquet,
)

ME = (
    "PixelPhase1/Phase1_MechanicalView/PXForward/"
    "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_2"
)
# (run, ls) deliberately out of order: two runs interleaved, LS shuffled
FLOAT64 = pa.float64()  # default map value type of the test files (any numeric type is read)
KEYS_UNSORTED = [(390002, 3), (390001, 2), (390002, 1), (390001, 1), (390001, 5), (390002, 2)]


def _maps_for(keys: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """Distinct maps per LS (the first bin encodes run and LS, so any mix-up is visible)."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 2000, size=(len(keys), 140, 56)).astype(np.int64)
    for i, (run, ls) in enumerate(keys):
        maps[i, 0, 0] = (run - 390000) * 100 + ls
    return maps


def _nested(maps: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(N, rows, cols) -> list<list<value_type>>, the layout of DIALS' `data` column."""
    n_ls, n_rows, n_cols = maps.shape
    values = pa.array(maps.reshape(-1), type=value_type)
    row_offsets = pa.array(np.arange(n_ls * n_rows + 1) * n_cols, type=pa.int32())
    map_offsets = pa.array(np.arange(n_ls + 1) * n_rows, type=pa.int32())
    rows = pa.ListArray.from_arrays(row_offsets, values)
    return pa.ListArray.from_arrays(map_offsets, rows)


def _dials_table(
    keys: list[tuple[int, int]],
    maps: np.ndarray | None = None,
    *,
    value_type: pa.DataType = FLOAT64,
    data: pa.Array | None = None,
    x_bin: float = 56.0,
    y_bin: float = 140.0,
) -> pa.Table:
    """A table with every column of a real DIALS h2d export, in its order and types."""
    n = len(keys)
    if data is None:
        data = _nested(_maps_for(keys) if maps is None else maps, value_type)
    columns = {
        "dataset": pa.array(["/ZeroBias/Run2025Z-PromptReco-v1/DQMIO"] * n),
        "me": pa.array([ME] * n),
        "dataset_id": pa.array([14677060] * n, type=pa.int64()),
        "file_id": pa.array([1000 + i for i in range(n)], type=pa.int64()),
        "run_number": pa.array([k[0] for k in keys], type=pa.int64()),
        "ls_number": pa.array([k[1] for k in keys], type=pa.int64()),
        "me_id": pa.array([262] * n, type=pa.int64()),
        "x_min": pa.array([-3.5] * n),
        "x_max": pa.array([3.5] * n),
        "x_bin": pa.array([x_bin] * n),
        "y_min": pa.array([-17.5] * n),
        "y_max": pa.array([17.5] * n),
        "y_bin": pa.array([y_bin] * n),
        "entries": pa.array([float(i) for i in range(n)]),
        "data": data,
    }
    return pa.table(columns)


def _write(table: pa.Table, path: Path, row_group_size: int = 2) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _expected(keys: list[tuple[int, int]], maps: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    return {key: maps[i] for i, key in enumerate(keys)}


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("value_type", [pa.float64(), pa.int64(), pa.int32(), pa.float32()])
def test_read_sorts_and_converts_every_value_type(tmp_path: Path, value_type: pa.DataType) -> None:
    maps = _maps_for(KEYS_UNSORTED)
    path = _write(_dials_table(KEYS_UNSORTED, maps, value_type=value_type), tmp_path / "a.parquet")
    assert pq.ParquetFile(path).metadata.num_row_groups == 3

    data = read_dials_parquet(path)

    assert isinstance(data, Ring2Data)
    assert len(data) == 6
    assert data.maps.dtype == np.int32 and data.maps.shape == (6, 140, 56)
    assert data.run.dtype == np.int64 and data.ls.dtype == np.int64
    assert list(zip(data.run.tolist(), data.ls.tolist(), strict=True)) == sorted(KEYS_UNSORTED)
    expected = _expected(KEYS_UNSORTED, maps)
    for i in range(len(data)):
        np.testing.assert_array_equal(data.maps[i], expected[(data.run[i], data.ls[i])])


def test_read_selected_runs(tmp_path: Path) -> None:
    maps = _maps_for(KEYS_UNSORTED)
    path = _write(_dials_table(KEYS_UNSORTED, maps), tmp_path / "a.parquet")

    data = read_dials_parquet(path, runs=[390001])
    assert data.run.tolist() == [390001] * 3
    assert data.ls.tolist() == [1, 2, 5]
    expected = _expected(KEYS_UNSORTED, maps)
    np.testing.assert_array_equal(data.maps[2], expected[(390001, 5)])

    nothing = read_dials_parquet(path, runs={123})
    assert len(nothing) == 0 and nothing.maps.shape == (0, 140, 56)
    assert nothing.maps.dtype == np.int32


def test_read_skips_row_groups_of_other_runs(tmp_path: Path) -> None:
    """A file sorted by (run, ls): selecting a run decodes only its row groups' rows."""
    keys = sorted(KEYS_UNSORTED)
    maps = _maps_for(keys)
    path = _write(_dials_table(keys, maps), tmp_path / "sorted.parquet", row_group_size=3)
    parquet_file = pq.ParquetFile(path)
    assert _row_groups_with_runs(parquet_file, [390002]) == [1]
    assert _row_groups_with_runs(parquet_file, [390001, 390002]) == [0, 1]
    assert _row_groups_with_runs(parquet_file, None) == [0, 1]
    assert _row_groups_with_runs(parquet_file, [5]) == []
    data = read_dials_parquet(path, runs=[390002])
    assert data.ls.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(data.maps, maps[3:].astype(np.int32))


def test_stream_equals_full_read(tmp_path: Path) -> None:
    keys = sorted((run, ls) for run in (390001, 390002, 390003) for ls in range(1, 8))
    maps = _maps_for(keys, seed=1)
    path = _write(_dials_table(keys, maps), tmp_path / "era.parquet", row_group_size=5)

    full = read_dials_parquet(path)
    chunks = list(iter_dials_parquet(path, max_ls=3))

    assert all(0 < len(c) <= 3 for c in chunks)
    assert sum(len(c) for c in chunks) == len(full) == 21
    np.testing.assert_array_equal(np.concatenate([c.maps for c in chunks]), full.maps)
    np.testing.assert_array_equal(np.concatenate([c.run for c in chunks]), full.run)
    np.testing.assert_array_equal(np.concatenate([c.ls for c in chunks]), full.ls)

    only = list(iter_dials_parquet(path, max_ls=4, runs=[390002]))
    assert np.concatenate([c.run for c in only]).tolist() == [390002] * 7
    np.testing.assert_array_equal(
        np.concatenate([c.maps for c in only]), full.maps[full.run == 390002]
    )


def test_stream_sorts_each_chunk_of_an_unsorted_file(tmp_path: Path) -> None:
    maps = _maps_for(KEYS_UNSORTED)
    path = _write(_dials_table(KEYS_UNSORTED, maps), tmp_path / "a.parquet", row_group_size=3)
    chunks = list(iter_dials_parquet(path, max_ls=3))
    assert [len(c) for c in chunks] == [3, 3]
    for chunk in chunks:
        keys = list(zip(chunk.run.tolist(), chunk.ls.tolist(), strict=True))
        assert keys == sorted(keys)
    expected = _expected(KEYS_UNSORTED, maps)
    for chunk in chunks:
        for i in range(len(chunk)):
            np.testing.assert_array_equal(chunk.maps[i], expected[(chunk.run[i], chunk.ls[i])])


@pytest.mark.parametrize("max_ls", [0, -1, 2.5, True])
def test_stream_rejects_bad_chunk_size(tmp_path: Path, max_ls: object) -> None:
    path = _write(_dials_table(KEYS_UNSORTED), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="max_ls must be a positive integer"):
        next(iter_dials_parquet(path, max_ls=max_ls))


# --------------------------------------------------------------------------- bad files


def test_wrong_binning_names_file_and_values(tmp_path: Path) -> None:
    path = _write(_dials_table(KEYS_UNSORTED, x_bin=48.0), tmp_path / "ring1.parquet")
    with pytest.raises(ValueError, match=r"ring1\.parquet.*x_bin = 56.*\[48\.0\]"):
        read_dials_parquet(path)
    path = _write(_dials_table(KEYS_UNSORTED, y_bin=92.0), tmp_path / "ring1y.parquet")
    with pytest.raises(ValueError, match=r"ring1y\.parquet.*y_bin = 140.*\[92\.0\]"):
        read_dials_parquet(path)


def test_missing_column_is_named(tmp_path: Path) -> None:
    table = _dials_table(KEYS_UNSORTED).drop_columns(["data", "y_bin"])
    path = _write(table, tmp_path / "nodata.parquet")
    with pytest.raises(
        ValueError, match=r"nodata\.parquet.*missing column\(s\) \['y_bin', 'data'\]"
    ):
        read_dials_parquet(path)
    with pytest.raises(ValueError, match=r"missing column"):
        next(iter_dials_parquet(path))


def _python_nested(keys: list[tuple[int, int]]) -> list:
    return _maps_for(keys).astype(float).tolist()


def test_wrong_row_length_is_an_error(tmp_path: Path) -> None:
    nested = _python_nested(KEYS_UNSORTED)
    nested[4][7] = nested[4][7][:55]
    data = pa.array(nested, type=pa.list_(pa.list_(pa.float64())))
    path = _write(_dials_table(KEYS_UNSORTED, data=data), tmp_path / "short.parquet")
    with pytest.raises(
        ValueError, match=r"short\.parquet: expected 56 numbers per map row.*\[55\]"
    ):
        read_dials_parquet(path)


def test_wrong_number_of_rows_is_an_error(tmp_path: Path) -> None:
    nested = _python_nested(KEYS_UNSORTED)
    nested[1] = nested[1][:139]
    data = pa.array(nested, type=pa.list_(pa.list_(pa.float64())))
    path = _write(_dials_table(KEYS_UNSORTED, data=data), tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match=r"rows\.parquet: expected 140 rows per map.*\[139\]"):
        read_dials_parquet(path)


def test_a_repeated_run_ls_is_read_once_from_its_first_copy(tmp_path: Path) -> None:
    """The toolkit's duplicate policy (io/keys.py): the first copy in file order, counted."""
    keys = [*KEYS_UNSORTED, (390001, 2)]
    maps = _maps_for(keys)
    path = _write(_dials_table(keys, maps), tmp_path / "dup.parquet")
    data = read_dials_parquet(path)
    assert len(data) == len(KEYS_UNSORTED) and data.n_repeated == 1
    first = keys.index((390001, 2))
    (kept,) = np.flatnonzero((data.run == 390001) & (data.ls == 2))
    np.testing.assert_array_equal(data.maps[kept], maps[first])
    message = data.repeated_message(path)
    assert "dup.parquet: 1 repeated (run, ls) row(s), e.g. [(390001, 2)]" in message
    assert "first copy" in message


def test_a_run_ls_repeated_across_chunks_is_dropped_from_the_later_chunk(tmp_path: Path) -> None:
    keys = [(390001, 1), (390001, 2), (390001, 3), (390001, 1)]
    maps = _maps_for(keys)
    path = _write(_dials_table(keys, maps), tmp_path / "dup.parquet")
    chunks = list(iter_dials_parquet(path, max_ls=2))
    assert [c.ls.tolist() for c in chunks] == [[1, 2], [3]]
    assert [c.n_repeated for c in chunks] == [0, 1]
    np.testing.assert_array_equal(chunks[0].maps[0], maps[0])


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [(-1.0, "non-negative counts, found -1"), (np.nan, "1 NaN value"), (2.5, "integral")],
)
def test_bad_counts_are_errors(tmp_path: Path, bad_value: float, message: str) -> None:
    maps = _maps_for(KEYS_UNSORTED).astype(float)
    maps[3, 100, 40] = bad_value
    path = _write(_dials_table(KEYS_UNSORTED, maps), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=rf"bad\.parquet: map values .*{message}"):
        read_dials_parquet(path)


def test_null_map_is_an_error(tmp_path: Path) -> None:
    nested = _python_nested(KEYS_UNSORTED)
    nested[2] = None
    data = pa.array(nested, type=pa.list_(pa.list_(pa.float64())))
    path = _write(_dials_table(KEYS_UNSORTED, data=data), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=r"null\.parquet: column 'data' has 1 null map"):
        read_dials_parquet(path)


def test_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"DIALS parquet not found: .*nowhere\.parquet"):
        read_dials_parquet(tmp_path / "nowhere.parquet")
    text = tmp_path / "text.parquet"
    text.write_text("not parquet at all", encoding="utf-8")
    with pytest.raises(ValueError, match=r"text\.parquet is not a readable parquet file"):
        read_dials_parquet(text)


# --------------------------------------------------------------------------- DCS filter


def _all_true(n_ls: int) -> dict[str, list]:
    return {flag: [True] * n_ls for flag in DCS_FLAGS}


def test_all_flags_true_passes() -> None:
    columns = {**_all_true(4), "pileup": [60.0, 61.0, None, 59.0], "run_number": [1, 1, 1, 1]}
    result = dcs_filter(columns, 4)
    assert isinstance(result, DcsResult)
    assert result.good.tolist() == [True] * 4
    assert result.n_good == 4
    assert result.failed.shape == (4, 8) and not result.failed.any()


def test_a_false_flag_fails_that_ls_only() -> None:
    columns = _all_true(4)
    columns["fpix_ready"][2] = False
    columns["beams_stable"][0] = 0
    result = dcs_filter(columns, 4)
    assert result.good.tolist() == [False, True, False, True]
    assert result.n_good == 2
    assert result.failed_flags(2) == ["fpix_ready"]
    assert result.failed_flags(0) == ["beams_stable"]
    assert result.failed_flags(1) == []


@pytest.mark.parametrize("null", [None, float("nan"), np.nan, pd.NA])
def test_a_null_flag_fails(null: object) -> None:
    columns = _all_true(3)
    columns["tob_ready"][1] = null
    result = dcs_filter(columns, 3)
    assert result.good.tolist() == [True, False, True]
    assert result.failed_flags(1) == ["tob_ready"]


def test_numeric_columns_with_nan_and_numpy_arrays() -> None:
    columns = {flag: np.ones(3) for flag in DCS_FLAGS}
    columns["tecm_ready"] = np.array([1.0, np.nan, 0.0])
    columns["cms_active"] = np.array([1, 1, 1], dtype=np.int32)
    columns["bpix_ready"] = np.array([True, True, True])[:, None]  # (N, 1) as NumpyCodec gives
    result = dcs_filter(columns, 3)
    assert result.good.tolist() == [True, False, False]


def test_pandas_nullable_boolean_column() -> None:
    columns = _all_true(3)
    columns["tibtid_ready"] = pd.array([True, None, False], dtype="boolean")
    assert dcs_filter(columns, 3).good.tolist() == [True, False, False]


def test_ls_missing_from_oms_fails_every_flag() -> None:
    """align_oms gives an LS absent from OMS null in every column."""
    columns = {flag: np.array([True, None], dtype=object) for flag in DCS_FLAGS}
    result = dcs_filter(columns, 2)
    assert result.good.tolist() == [True, False]
    assert result.failed_flags(1) == list(DCS_FLAGS)


@pytest.mark.parametrize("oms", [None, {}, {"pileup": [50.0] * 7, "run_number": [1]}])
def test_no_oms_data_passes_everything(oms: dict | None) -> None:
    result = dcs_filter(oms, 5)
    assert result.good.tolist() == [True] * 5
    assert result.failed.shape == (5, 8) and not result.failed.any()


def test_no_lumisections() -> None:
    assert dcs_filter(_all_true(0), 0).good.shape == (0,)
    assert dcs_filter(None, 0).n_good == 0


def test_some_flags_missing_names_them() -> None:
    columns = _all_true(3)
    del columns["tob_ready"], columns["tecm_ready"]
    with pytest.raises(ValueError, match=r"missing \['tob_ready', 'tecm_ready'\]"):
        dcs_filter(columns, 3)


def test_wrong_length_names_flag_and_lengths() -> None:
    columns = _all_true(3)
    columns["cms_active"] = [True, True]
    with pytest.raises(ValueError, match=r"'cms_active' has 2 values but there are 3 lumisections"):
        dcs_filter(columns, 3)


@pytest.mark.parametrize("bad", [2, "yes", "1"])
def test_non_boolean_values_are_errors(bad: object) -> None:
    columns = _all_true(3)
    columns["bpix_ready"] = [True, bad, None]
    with pytest.raises(ValueError, match=r"'bpix_ready' must hold bool/0/1/null values"):
        dcs_filter(columns, 3)


def test_bad_ls_count() -> None:
    with pytest.raises(ValueError, match="n_ls must be a non-negative integer, got -1"):
        dcs_filter(None, -1)
