"""What a DIALS parquet's footer says of its row groups (runs, LS), and streaming by row group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pixelring2nmf.io.parquet import (
    RowGroupInfo,
    _row_groups_with_runs,
    iter_dials_parquet,
    iter_row_group,
    row_group_infos,
)

KEYS = [(390001, 1), (390001, 2), (390001, 5), (390002, 1), (390002, 2), (390002, 3)]


def _write(path: Path, *, statistics: bool = True) -> Path:
    """Rows sorted by (run, LS), three per row group, behind a nested column of two leaves.

    The struct first makes the leaf columns (which hold the statistics) and the Arrow fields
    number differently: run_number is field 1 but leaf 2.
    """
    n = len(KEYS)
    maps = np.zeros((n, 140, 56), np.float64)
    maps[:, 0, 0] = [(run - 390000) * 100 + ls for run, ls in KEYS]
    rows = pa.ListArray.from_arrays(np.arange(0, n * 140 * 56 + 1, 56), pa.array(maps.ravel()))
    data = pa.ListArray.from_arrays(np.arange(0, n * 140 + 1, 140), rows)
    provenance = pa.array([{"site": 9, "version": 7}] * n)
    table = pa.table(
        {
            "provenance": provenance,
            "run_number": pa.array([run for run, _ in KEYS], pa.int64()),
            "ls_number": pa.array([ls for _, ls in KEYS], pa.int64()),
            "x_bin": pa.array([56.0] * n),
            "y_bin": pa.array([140.0] * n),
            "data": data,
        }
    )
    pq.write_table(table, path, row_group_size=3, write_statistics=statistics)
    return path


def test_run_statistics_are_found_behind_a_nested_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "nested_first.parquet")
    assert row_group_infos(path) == [
        RowGroupInfo(3, (390001, 390001)),
        RowGroupInfo(3, (390002, 390002)),
    ]
    assert _row_groups_with_runs(pq.ParquetFile(path), [390002]) == [1]
    assert _row_groups_with_runs(pq.ParquetFile(path), [390003]) == []
    (chunk,) = iter_dials_parquet(path, runs=[390002])
    assert chunk.run.tolist() == [390002] * 3 and chunk.ls.tolist() == [1, 2, 3]
    assert chunk.maps[:, 0, 0].tolist() == [201, 202, 203]


def test_without_statistics_every_row_group_may_hold_a_run(tmp_path: Path) -> None:
    path = _write(tmp_path / "no_stats.parquet", statistics=False)
    assert row_group_infos(path) == [RowGroupInfo(3, None), RowGroupInfo(3, None)]
    assert _row_groups_with_runs(pq.ParquetFile(path), [390002]) == [0, 1]
    (chunk,) = iter_dials_parquet(path, runs=[390002])
    assert chunk.ls.tolist() == [1, 2, 3]


def test_row_groups_stream_the_lumisections_of_the_whole_file(tmp_path: Path) -> None:
    """Chunks of a row group stop at its end (a whole-file stream's need not), same LS."""
    path = _write(tmp_path / "groups.parquet")
    whole = list(iter_dials_parquet(path, max_ls=2))
    parquet_file = pq.ParquetFile(path)
    by_group = [c for g in (0, 1) for c in iter_row_group(parquet_file, g, path, max_ls=2)]
    assert [c.ls.tolist() for c in by_group] == [[1, 2], [5], [1, 2], [3]]
    keys = [(r, s) for c in by_group for r, s in zip(c.run.tolist(), c.ls.tolist(), strict=True)]
    assert keys == [
        (r, s) for c in whole for r, s in zip(c.run.tolist(), c.ls.tolist(), strict=True)
    ]
