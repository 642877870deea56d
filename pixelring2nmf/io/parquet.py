"""DIALS per-LS FPix ring histograms (parquet) -> arrays, read in bounded batches.

A DIALS parquet has one row per (run, LS); its `data` column holds one ring's map as a list of
rows of 56 numbers (140 for Ring 2, 92 for Ring 1; `list<list<double>>` as `cmsdials` saves it,
or integer lists). The ring is the file's: read from its ME name (`..._PXRing_1|2`), or from its
binning when the file has no `me` column, and every row must agree (`parquet_geometry`): one file
holds one ring, so a file mixing both rings' MEs is refused rather than judged half by the wrong
geometry.
Converting those nested lists one LS at a time in Python would dominate the cost of a whole era,
so pyarrow flattens each batch of lists to one buffer of numbers that numpy checks, casts and
reshapes in a few vectorised passes.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlserver_model.errors import checked_integer
from mlserver_model.geometry import (
    GEOMETRY_BY_MAP_SHAPE,
    RING2,
    RING2_ME,
    RINGS,
    RingGeometry,
)

from ..errors import DataError
from .atomic import replacing
from .keys import examples, repeated_mask

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

# Only these columns are read: the others (dataset, ids, ranges, entries) repeat per row.
DIALS_COLUMNS = ("run_number", "ls_number", "x_bin", "y_bin", "data")
ME_COLUMN = "me"  # checked when present: it names the ring, and another ME must not pass
RING2_ME_SUFFIX = RING2_ME[RING2_ME.rindex("_PXRing") :]  # digi_occupancy_per_... too
# "_PXRing_1" / "_PXRing_2": an ME of a ring ends so (clusters, or digi occupancy, per ROC).
RING_ME_SUFFIXES = {f"_PXRing_{ring}": geometry for ring, geometry in RINGS.items()}
_GEOMETRY_PROBE_LS = 64  # rows read by parquet_geometry: the first rows say the file's ring
_READ_BATCH_LS = 1000  # LS decoded at a time by read_dials_parquet (~60 MB of float64 lists)
_READ_BUFFER_BYTES = 4 << 20  # file bytes read at a time while decoding a column chunk


# What `data` holds: "double" is the layout users have (cmsdials declares `list[list[float]]`,
# so `.to_pandas().to_parquet()` writes list<list<double>>); "int32" is the compact variant
# some older files use. Readers accept both, so tests can cover both.
VALUE_TYPES = ("double", "int32")
DEFAULT_VALUE_TYPE = "double"


def dials_schema(value_type: str = DEFAULT_VALUE_TYPE):
    """The columns of a DIALS per-LS histogram file, in cmsdials' order."""
    import pyarrow as pa

    if value_type not in VALUE_TYPES:
        raise ValueError(f"value_type must be one of {VALUE_TYPES}, got {value_type!r}")
    values = pa.float64() if value_type == "double" else pa.int32()
    return pa.schema(
        [
            ("dataset", pa.string()),
            ("me", pa.string()),
            ("dataset_id", pa.int64()),
            ("file_id", pa.int64()),
            ("run_number", pa.int64()),
            ("ls_number", pa.int64()),
            ("me_id", pa.int64()),
            ("x_min", pa.float64()),
            ("x_max", pa.float64()),
            ("x_bin", pa.float64()),
            ("y_min", pa.float64()),
            ("y_max", pa.float64()),
            ("y_bin", pa.float64()),
            ("entries", pa.int64()),
            ("data", pa.list_(pa.list_(values))),
        ]
    )


@dataclass(frozen=True)
class RingData:
    """One ring's maps of a set of lumisections, sorted by (run, LS).

    `geometry` is the ring the file's ME (or binning) names: RING2 unless the file said Ring 1,
    so a caller checks it against its model's instead of trusting the map shape.
    """

    maps: np.ndarray  # int32 (N, rows, 56): clusters per ROC; rows 140 (Ring 2) or 92 (Ring 1)
    run: np.ndarray  # int64 (N,)
    ls: np.ndarray  # int64 (N,)
    n_repeated: int = 0  # copies of an LS dropped (the first copy is kept; io/keys.py)
    repeated_examples: tuple[tuple[int, int], ...] = ()
    geometry: RingGeometry = RING2

    def __len__(self) -> int:
        return len(self.run)

    @property
    def ring(self) -> int:
        return self.geometry.ring

    def repeated_message(self, source: str | Path) -> str:
        """What a command says when it dropped repeated LS ('' when there were none)."""
        if not self.n_repeated:
            return ""
        return (
            f"{source}: {self.n_repeated} repeated (run, ls) row(s), e.g. "
            f"{list(self.repeated_examples)}; each LS was judged from its first copy "
            "(DIALS stores one histogram per lumisection)"
        )


Ring2Data = RingData  # the name it had when only Ring 2 was read


def parquet_geometry(source: str | Path, *, default: RingGeometry | None = RING2) -> RingGeometry:
    """The ring of a DIALS parquet, from the ME name (else the binning) of its first rows.

    Cheap (a few rows of three small columns): what a command asks before choosing a model or
    reading maps. Rows further on are checked as they are read; a file mixing the two rings'
    MEs is a DataError then. A file without a row has no ring: `default` (Ring 2, as before
    Ring 1 existed), or a DataError when `default` is None.
    """
    with open_dials_parquet(source) as parquet_file:
        return _file_geometry(parquet_file, source, default)


def check_first_rows_binning(source: str | Path, geometry: RingGeometry) -> None:
    """The first rows' binning against `geometry` (the ring their ME names): the reader's own
    check, said before any map is read, so that a file whose ME and binning disagree reads as
    a broken file rather than as a file of the other ring."""
    with open_dials_parquet(source) as parquet_file:
        first = next(
            parquet_file.iter_batches(batch_size=_GEOMETRY_PROBE_LS, columns=["x_bin", "y_bin"]),
            None,
        )
    if first is not None and first.num_rows:
        _check_binning(first, source, geometry)


def _file_geometry(
    parquet_file: pq.ParquetFile, source: str | Path, default: RingGeometry | None = RING2
) -> RingGeometry:
    """The ring named by the first rows of an open file (see `parquet_geometry`)."""
    present = parquet_file.schema_arrow.names
    columns = [name for name in (ME_COLUMN, "x_bin", "y_bin") if name in present]
    batches = parquet_file.iter_batches(batch_size=_GEOMETRY_PROBE_LS, columns=columns)
    for batch in _decoded(batches, source):
        if batch.num_rows:
            return _rows_geometry(batch, source)
    if default is None:
        raise DataError(f"{source}: holds no lumisection, so no ring to read")
    return default


def _rows_geometry(batch: pa.RecordBatch | pa.Table, source: str | Path) -> RingGeometry:
    """The one ring these rows' ME names say; by their binning when there is no `me` column
    (an unknown binning reads as Ring 2, whose binning check then says what is wrong)."""
    import pyarrow.compute as pc

    if ME_COLUMN in batch.column_names:
        names = pc.unique(batch.column(ME_COLUMN)).to_pylist()
        return _single_ring(names, source)
    shape = tuple(
        int(v) if v is not None and np.isfinite(v) else -1
        for v in (batch.column("y_bin")[0].as_py(), batch.column("x_bin")[0].as_py())
    )
    return GEOMETRY_BY_MAP_SHAPE.get(shape, RING2)


def _me_geometry(name: object) -> RingGeometry | None:
    text = str(name)
    for suffix, geometry in RING_ME_SUFFIXES.items():
        if text.endswith(suffix):
            return geometry
    return None


def _single_ring(names: list, source: str | Path) -> RingGeometry:
    """The ring of a set of ME names; another ME, or both rings' MEs, is a DataError."""
    others = [name for name in names if _me_geometry(name) is None]
    if others:
        raise DataError(
            f"{source}: the toolkit reads the FPix ring MEs (...{RING2_ME_SUFFIX} or "
            f"..._PXRing_1), but the file holds {others[:3]}"
        )
    rings = sorted({_me_geometry(name).ring for name in names})
    if len(rings) > 1:
        raise DataError(
            f"{source}: the file mixes the Ring 1 and Ring 2 MEs ({sorted(map(str, names))[:4]}); "
            "one DIALS parquet holds one ring's ME: fetch or write each ring to its own file"
        )
    return RINGS[rings[0]]


def read_dials_parquet(path: str | Path, *, runs: Collection[int] | None = None) -> RingData:
    """Read a whole DIALS ring parquet (optionally only some runs) into memory.

    The maps are the file's ring (`RingData.geometry`, see `parquet_geometry`). A (run, LS)
    found more than once is kept from its first row and the others are dropped and counted
    (`RingData.n_repeated`): the toolkit's one duplicate policy (io/keys.py), which the caller
    reports.
    """
    parquet_file = _open_dials_parquet(path)
    geometry = _file_geometry(parquet_file, path)
    row_groups = _row_groups_with_runs(parquet_file, runs)
    # Decoding batch by batch keeps only one batch of Arrow lists alive next to the int32 maps.
    # The row-group sizes bound the LS count, so the maps are filled in place, not concatenated.
    n_max = sum(parquet_file.metadata.row_group(i).num_rows for i in row_groups)
    maps = np.empty((n_max, *geometry.map_shape), dtype=np.int32)
    run = np.empty(n_max, dtype=np.int64)
    ls = np.empty(n_max, dtype=np.int64)
    n_read = 0
    if row_groups:
        batches = parquet_file.iter_batches(
            batch_size=_READ_BATCH_LS, row_groups=row_groups, columns=_columns_to_read(parquet_file)
        )
        for batch in batches:
            batch_maps, batch_run, batch_ls = _batch_arrays(batch, path, runs, geometry)
            stop = n_read + len(batch_run)
            maps[n_read:stop], run[n_read:stop], ls[n_read:stop] = batch_maps, batch_run, batch_ls
            n_read = stop
    return _first_copies(maps[:n_read], run[:n_read], ls[:n_read], geometry)


def iter_dials_parquet(
    path: str | Path, *, max_ls: int = 5000, runs: Collection[int] | None = None
) -> Iterator[RingData]:
    """Stream a DIALS ring parquet in chunks of at most `max_ls` LS (maps of the file's ring).

    An era can be far larger than memory (31 kB per LS as int32), so only one chunk is decoded
    at a time (and, with `runs`, only the row groups that may hold them). Each chunk is sorted by
    (run, LS); the order *across* chunks is the order of the file, so the stream is globally
    sorted only when the file is (the project's simulator writes files sorted by (run, LS)).
    A (run, LS) seen before (in this chunk or an earlier one) is dropped, as `read_dials_parquet`
    drops it, and the chunk counts it in `n_repeated`; remembering the keys costs ~100 bytes per
    LS, negligible next to the 31 kB of its map.
    """
    checked_integer(max_ls, "max_ls", minimum=1)
    parquet_file = _open_dials_parquet(path)
    row_groups = _row_groups_with_runs(parquet_file, runs)
    if not row_groups:
        return
    seen: set[tuple[int, int]] = set()
    for chunk in _chunks(parquet_file, row_groups, path, runs, max_ls):
        keys = list(zip(chunk.run.tolist(), chunk.ls.tolist(), strict=True))
        fresh = np.fromiter((key not in seen for key in keys), dtype=bool, count=len(keys))
        fresh &= ~repeated_mask(chunk.run, chunk.ls)
        seen.update(keys)
        if fresh.all():
            yield chunk
        elif fresh.any():
            yield RingData(
                chunk.maps[fresh],
                chunk.run[fresh],
                chunk.ls[fresh],
                n_repeated=int((~fresh).sum()),
                repeated_examples=tuple(examples(chunk.run, chunk.ls, ~fresh)),
                geometry=chunk.geometry,
            )


def is_url(source: str | Path) -> bool:
    """A URL (root://, https://, file://, ...) is read through fsspec, anything else is a path."""
    return isinstance(source, str) and "://" in source


def _open_dials_parquet(path: str | Path) -> pq.ParquetFile:
    """Open a local file and check the needed columns exist before reading any data."""
    if Path(path).is_dir():
        raise DataError(f"{path} is a folder: give the DIALS parquet file(s) inside it")
    if not Path(path).is_file():
        raise DataError(f"DIALS parquet not found: {path}")
    return _dials_parquet_file(path, path)


def _dials_parquet_file(source, name: str | Path) -> pq.ParquetFile:
    """A ParquetFile over a path or an open file object, checked for the DIALS columns."""
    import pyarrow.parquet as pq

    try:
        # No pre-buffering, a bounded read buffer: pyarrow otherwise caches the compressed
        # column chunks of every row group it is asked for, so memory grew with the file
        # (9 kB per LS); this way only the pages of the current batch are held, whatever the
        # row-group layout (pandas writes a whole download as one row group).
        parquet_file = pq.ParquetFile(source, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{name} is not a readable parquet file: {error}") from error
    names = set(parquet_file.schema_arrow.names)
    missing = [c for c in DIALS_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{name} is not a DIALS per-LS histogram parquet: missing column(s) {missing}; "
            f"columns found: {sorted(names)}"
        )
    return parquet_file


@contextmanager
def open_dials_parquet(source: str | Path) -> Iterator[pq.ParquetFile]:
    """A checked DIALS parquet, local or behind a URL; a URL's connection closes on exit.

    URLs go through fsspec (`root://` needs the fsspec-xrootd plugin, as on lxplus and SWAN),
    so workers of a cluster read EOS themselves and no map ever passes through the client.
    """
    if not is_url(source):
        parquet_file = _open_dials_parquet(source)
        try:
            yield parquet_file
        finally:
            parquet_file.close()
        return
    handle = _open_url(str(source))
    try:
        yield _dials_parquet_file(handle, source)
    finally:
        handle.close()


def _open_url(url: str):
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the `dask` extra
        raise DataError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as error:  # a known protocol whose plugin is missing (root://)
        raise DataError(f"{url}: {error}") from None
    except FileNotFoundError:
        raise DataError(f"DIALS parquet not found: {url}") from None
    except OSError as error:
        raise DataError(f"{url}: cannot be opened: {error}") from None


@dataclass(frozen=True)
class RowGroupInfo:
    """What a footer says of one row group, before any map is read."""

    n_ls: int
    runs: tuple[int, int] | None  # first and last run_number (statistics); None: not written


def row_group_infos(source: str | Path) -> list[RowGroupInfo]:
    """LS and runs of each row group, from the footer alone: how an era is cut into tasks, and
    which OMS rows each task needs, without reading a map."""
    with open_dials_parquet(source) as parquet_file:
        metadata = parquet_file.metadata
        return [
            RowGroupInfo(metadata.row_group(i).num_rows, runs)
            for i, runs in enumerate(_run_ranges(parquet_file))
        ]


def row_group_runs(source: str | Path, row_groups: Sequence[int]) -> np.ndarray:
    """The distinct run numbers of these row groups, from their run column alone (8 bytes per
    LS, no map decoded): which models an era needs, known before any LS is judged."""
    if not row_groups:
        return np.zeros(0, dtype=np.int64)
    with open_dials_parquet(source) as parquet_file:
        try:
            table = parquet_file.read_row_groups(list(row_groups), columns=["run_number"])
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{source}: cannot read its run numbers: {error}") from None
        return np.unique(_integer_column(table, "run_number", source))


def _run_ranges(parquet_file: pq.ParquetFile) -> list[tuple[int, int] | None]:
    """(min, max) run_number of each row group from its statistics; None where not written.

    Statistics belong to leaf columns, whose numbering differs from the Arrow fields' once a
    column of several leaves (a struct) comes before run_number: the leaf is found by its path.
    """
    metadata = parquet_file.metadata
    paths = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    leaves = [i for i, path in enumerate(paths) if path == "run_number"]
    ranges: list[tuple[int, int] | None] = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(leaves[0]).statistics if leaves else None
        known = stats is not None and stats.has_min_max
        ranges.append((int(stats.min), int(stats.max)) if known else None)
    return ranges


def iter_row_group(
    parquet_file: pq.ParquetFile, row_group: int, source: str | Path, *, max_ls: int
) -> Iterator[RingData]:
    """One row group of an open DIALS parquet, in sorted chunks of at most `max_ls` LS.

    The maps are the file's ring (its first rows say which, `parquet_geometry`), so a row group
    of the other ring's ME is refused as a mixed file even when read alone.

    Chunks never span two row groups, so what a chunk holds depends on the file alone, not on
    how its row groups are grouped into tasks: a local run and a cluster run judge the same
    chunks. Duplicates are rejected inside a chunk; across chunks the caller sees them.
    """
    checked_integer(max_ls, "max_ls", minimum=1)
    yield from _chunks(parquet_file, [row_group], source, None, max_ls)


def _chunks(
    parquet_file: pq.ParquetFile,
    row_groups: list[int],
    source: str | Path,
    runs: Collection[int] | None,
    max_ls: int,
) -> Iterator[RingData]:
    """The batches of these row groups as non-empty chunks sorted by (run, LS): what a whole-file
    stream and a row-group task both judge, so they accept the same files. Repeated LS are
    kept here, in file order (the sort is stable): whoever merges drops the later copies."""
    geometry = _file_geometry(parquet_file, source)
    batches = parquet_file.iter_batches(
        batch_size=int(max_ls), row_groups=row_groups, columns=_columns_to_read(parquet_file)
    )
    for batch in _decoded(batches, source):
        chunk = _sorted_ring2(*_batch_arrays(batch, source, runs, geometry), geometry)
        if len(chunk):
            yield chunk


def _decoded(batches: Iterator[pa.RecordBatch], source: str | Path) -> Iterator[pa.RecordBatch]:
    """pyarrow's batches, its decoding failures as a DataError that says what they mean."""
    import pyarrow as pa

    try:
        yield from batches
    except (pa.ArrowException, OSError) as error:  # "Unexpected end of stream", bad pages
        raise DataError(
            f"{source}: cannot be decoded (a corrupt or truncated file?): {error}"
        ) from error


def split_row_groups(sizes: Sequence[int], max_ls: int) -> list[tuple[int, ...]]:
    """Consecutive non-empty row groups, gathered until a group would exceed `max_ls` LS.

    A row group is never cut: it is the smallest unit parquet reads without decoding the
    rows before it, so one larger than `max_ls` is a group of its own.
    """
    checked_integer(max_ls, "max_ls", minimum=1)
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    n_current = 0
    for index, n_ls in enumerate(sizes):
        if n_ls == 0:
            continue
        if current and n_current + n_ls > max_ls:
            groups.append(tuple(current))
            current, n_current = [], 0
        current.append(index)
        n_current += n_ls
    if current:
        groups.append(tuple(current))
    return groups


def _columns_to_read(parquet_file: pq.ParquetFile) -> list[str]:
    present = parquet_file.schema_arrow.names
    return [*DIALS_COLUMNS, *([ME_COLUMN] if ME_COLUMN in present else [])]


def _row_groups_with_runs(parquet_file: pq.ParquetFile, runs: Collection[int] | None) -> list[int]:
    """Row groups that may hold one of `runs`, judged by their run_number statistics.

    Selecting one run of an era this way skips decoding the other runs' maps entirely.
    """
    if runs is None:
        return list(range(parquet_file.metadata.num_row_groups))
    wanted = np.asarray(sorted({int(r) for r in runs}), dtype=np.int64)
    if wanted.size == 0:
        return []
    selected = []
    for i, run_range in enumerate(_run_ranges(parquet_file)):
        if run_range is None:
            selected.append(i)
            continue
        first, last = run_range
        lo = np.searchsorted(wanted, first, side="left")
        if lo < wanted.size and wanted[lo] <= last:
            selected.append(i)
    return selected


def _batch_arrays(
    batch: pa.RecordBatch,
    path: str | Path,
    runs: Collection[int] | None,
    geometry: RingGeometry = RING2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert DIALS rows to (maps int32, run, ls) in file order, without a loop
    over LS."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches([batch])
    if runs is not None:
        wanted = pa.array(sorted({int(r) for r in runs}), type=pa.int64())
        run_column = pc.cast(table.column("run_number"), pa.int64())
        table = table.filter(pc.fill_null(pc.is_in(run_column, value_set=wanted), False))
    run = _integer_column(table, "run_number", path)
    ls = _integer_column(table, "ls_number", path)
    _check_me(table, path, geometry)
    _check_binning(table, path, geometry)
    maps = _nested_data_to_maps(table.column("data"), path, geometry)
    return maps, run, ls


def first_copies_of(parts: Sequence[RingData]) -> RingData:
    """Several reads of one ring (its files, each read already) as one, sorted by (run, LS),
    each LS from its first copy in the order given; `n_repeated` counts the LS found again
    in a later part."""
    geometry = parts[0].geometry
    maps = np.concatenate([p.maps for p in parts])
    run = np.concatenate([p.run for p in parts])
    ls = np.concatenate([p.ls for p in parts])
    return _first_copies(maps, run, ls, geometry)


def _first_copies(
    maps: np.ndarray, run: np.ndarray, ls: np.ndarray, geometry: RingGeometry = RING2
) -> RingData:
    """Sorted by (run, LS), each LS once: its first copy in file order."""
    repeated = repeated_mask(run, ls)
    if not repeated.any():
        return _sorted_ring2(maps, run, ls, geometry)
    kept = _sorted_ring2(maps[~repeated], run[~repeated], ls[~repeated], geometry)
    return RingData(
        kept.maps,
        kept.run,
        kept.ls,
        n_repeated=int(repeated.sum()),
        repeated_examples=tuple(examples(run, ls, repeated)),
        geometry=geometry,
    )


def _sorted_ring2(
    maps: np.ndarray, run: np.ndarray, ls: np.ndarray, geometry: RingGeometry = RING2
) -> RingData:
    order = np.lexsort((ls, run))  # stable: repeated LS keep their file order
    if np.any(order != np.arange(order.size)):
        run, ls, maps = run[order], ls[order], maps[order]
    return RingData(maps=maps, run=run, ls=ls, geometry=geometry)


def _integer_column(table: pa.Table, name: str, path: str | Path) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise DataError(f"{path}: column {name!r} has {column.null_count} null value(s)")
    values = column.to_numpy()
    if values.dtype.kind not in "iuf":
        raise DataError(f"{path}: column {name!r} must be numeric, got {column.type}")
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise DataError(f"{path}: column {name!r} has non-integral values")
    return values.astype(np.int64)


def _check_me(table: pa.Table, path: str | Path, geometry: RingGeometry = RING2) -> None:
    """Every row must be the ME of the file's ring: a map is read in its ring's geometry."""
    import pyarrow.compute as pc

    if ME_COLUMN not in table.column_names or not table.num_rows:
        return
    names = pc.unique(table.column(ME_COLUMN)).to_pylist()
    found = _single_ring(names, path)
    if found is not geometry:
        raise DataError(
            f"{path}: the file mixes the Ring 1 and Ring 2 MEs (its first rows are "
            f"{geometry.name}'s, later rows {found.name}'s {names[:2]}); one DIALS parquet "
            "holds one ring's ME: fetch or write each ring to its own file"
        )


def _check_binning(table: pa.Table, path: str | Path, geometry: RingGeometry = RING2) -> None:
    """The map is only meaningful in its ring's binning: (140, 56) Ring 2, (92, 56) Ring 1."""
    n_rows, n_columns = geometry.map_shape
    for name, expected in (("x_bin", n_columns), ("y_bin", n_rows)):
        column = table.column(name)
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        if column.null_count or np.any(values != expected):
            found = sorted(set(pd.unique(values).tolist()), key=str)[:10]
            raise DataError(
                f"{path}: expected {name} = {expected} for every row of the {geometry.name} ME "
                f"(shape {geometry.map_shape}), found {name} values {found}"
            )


def _nested_data_to_maps(
    data: pa.ChunkedArray, path: str | Path, geometry: RingGeometry = RING2
) -> np.ndarray:
    """list<list<number>> (N maps of 140 (92) lists of 56) -> int32 (N, 140 (92), 56), chunk
    by chunk.

    Flattening the two list levels is free in Arrow (the numbers are already one contiguous
    buffer), so the whole conversion is a handful of vectorised passes over the values.
    """
    list_type = data.type
    if not _is_list_type(list_type) or not _is_list_type(list_type.value_type):
        raise DataError(f"{path}: column 'data' must be a list of lists, got type {list_type}")
    chunks = [chunk for chunk in data.chunks if len(chunk)]
    if len(chunks) == 1:  # the usual batch: its counts are the maps, no copy
        return _chunk_counts(chunks[0], path, geometry).reshape(len(data), *geometry.map_shape)
    maps = np.empty((len(data), *geometry.map_shape), dtype=np.int32)
    flat_maps = maps.reshape(len(data), -1)
    first = 0
    for chunk in chunks:
        n_ls = len(chunk)
        flat_maps[first : first + n_ls] = _chunk_counts(chunk, path, geometry).reshape(n_ls, -1)
        first += n_ls
    return maps


def _is_list_type(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def _chunk_counts(chunk: pa.Array, path: str | Path, geometry: RingGeometry = RING2) -> np.ndarray:
    """One Arrow chunk of maps -> flat int32 counts, after checking shape and values."""
    import pyarrow as pa

    if chunk.null_count:
        raise DataError(f"{path}: column 'data' has {chunk.null_count} null map(s)")
    _check_list_lengths(chunk, geometry.map_shape[0], "rows per map", path, geometry)
    rows = chunk.flatten()
    if rows.null_count:
        raise DataError(f"{path}: column 'data' has {rows.null_count} null row(s)")
    _check_list_lengths(rows, geometry.map_shape[1], "numbers per map row", path, geometry)
    values = rows.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"{path}: map values must be numeric, got type {values.type}")
    if values.null_count:
        raise DataError(f"{path}: column 'data' has {values.null_count} null value(s)")
    if values.type != pa.int32():
        import pyarrow.compute as pc

        try:
            # Arrow's safe cast is one pass that refuses NaN, fractions and overflow; only on
            # failure are the values examined again, to say what is wrong.
            values = pc.cast(values, pa.int32())
        except pa.ArrowInvalid:
            _explain_bad_counts(values.to_numpy(zero_copy_only=False), path)
    counts = values.to_numpy()  # no copy: int32 without nulls
    if counts.size and counts.min() < 0:
        raise DataError(f"{path}: map values must be non-negative counts, found {counts.min()}")
    return counts


def _check_list_lengths(
    lists: pa.Array, expected: int, what: str, path: str | Path, geometry: RingGeometry = RING2
) -> None:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != expected)
    if wrong.size:
        found = sorted(set(lengths[wrong].tolist()))[:10]
        raise DataError(
            f"{path}: expected {expected} {what} ({geometry.name} map shape {geometry.map_shape}), "
            f"found {wrong.size} list(s) of length {found}"
        )


def _explain_bad_counts(values: np.ndarray, path: str | Path) -> None:
    """Raise the error that says why `values` are not int32 cluster counts."""
    if values.dtype.kind == "f":
        n_nan = int(np.count_nonzero(np.isnan(values)))
        if n_nan:
            raise DataError(f"{path}: map values contain {n_nan} NaN value(s)")
        if not np.all(values == np.floor(values)):
            raise DataError(f"{path}: map values must be integral counts, found fractions")
    lowest, highest = values.min(), values.max()
    if lowest < 0:
        raise DataError(f"{path}: map values must be non-negative counts, found {lowest}")
    raise DataError(f"{path}: map value {highest} does not fit int32")


# ---- writing ------------------------------------------------------------------------------------

ROW_GROUP_LS = 1000  # parquet row group of written files: bounded memory, cheap run filtering
# What DIALS' h2d rows carry besides the map, per ring: me_id and the (x, y) axis ranges (x the
# signed disk -3.5..3.5, y the signed blade panel coordinate, +-(blades + 0.5)).
_ME_IDS = {1: 1733, 2: 1734}


def _geometry_of_maps(maps: np.ndarray, geometry: RingGeometry | None) -> RingGeometry:
    """The ring to write `maps` as: the one given (checked against the shape) or the shape's."""
    shape = tuple(np.shape(maps)[1:])
    if geometry is None:
        if shape not in GEOMETRY_BY_MAP_SHAPE:
            raise ValueError(
                f"Expected (N, 140, 56) Ring 2 or (N, 92, 56) Ring 1 maps, got {np.shape(maps)}"
            )
        return GEOMETRY_BY_MAP_SHAPE[shape]
    if shape != geometry.map_shape:
        raise ValueError(
            f"{geometry.name} maps are (N, {geometry.map_shape[0]}, {geometry.map_shape[1]}), "
            f"got {np.shape(maps)}"
        )
    return geometry


def dials_table(
    maps: np.ndarray,
    run: np.ndarray,
    ls: np.ndarray,
    era: str = "Run2025Z",
    value_type: str = DEFAULT_VALUE_TYPE,
    geometry: RingGeometry | None = None,
):
    """Arrow table in the DIALS layout of (N, rows, 56) maps of one ring, from numpy arrays.

    `geometry` None: the ring whose map shape `maps` have.
    """
    import pyarrow as pa

    geometry = _geometry_of_maps(maps, geometry)
    schema = dials_schema(value_type)
    maps = np.ascontiguousarray(maps, dtype=np.int32)
    n = maps.shape[0]
    run = np.broadcast_to(np.asarray(run, dtype=np.int64), (n,))
    n_rows, n_columns = maps.shape[1:]
    value_dtype = schema.field("data").type.value_type.value_type.to_pandas_dtype()
    values = pa.array(maps.reshape(-1).astype(value_dtype))
    inner_offsets = pa.array(np.arange(0, n * n_rows * n_columns + 1, n_columns, dtype=np.int32))
    outer_offsets = pa.array(np.arange(0, n * n_rows + 1, n_rows, dtype=np.int32))
    data = pa.ListArray.from_arrays(outer_offsets, pa.ListArray.from_arrays(inner_offsets, values))
    dataset = f"/ZeroBias/{era}-PromptReco-v1/DQMIO"
    y_edge = geometry.n_blades + 0.5

    def constant(value, dtype):
        return pa.array(np.full(n, value, dtype=dtype))

    columns = {
        "dataset": pa.array([dataset] * n, pa.string()),
        "me": pa.array([geometry.me] * n, pa.string()),
        "dataset_id": constant(15000 + zlib.crc32(dataset.encode()) % 1000, np.int64),
        "file_id": pa.array(run * 10 + 1),
        "run_number": pa.array(run),
        "ls_number": pa.array(np.asarray(ls, dtype=np.int64)),
        "me_id": constant(_ME_IDS[geometry.ring], np.int64),
        "x_min": constant(-3.5, np.float64),
        "x_max": constant(3.5, np.float64),
        "x_bin": constant(float(n_columns), np.float64),
        "y_min": constant(-y_edge, np.float64),
        "y_max": constant(y_edge, np.float64),
        "y_bin": constant(float(n_rows), np.float64),
        "entries": pa.array(maps.reshape(n, -1).sum(axis=1, dtype=np.int64)),
        "data": data,
    }
    return pa.table(columns, schema=schema)


def dials_parquet_writer(path: str | Path, value_type: str = DEFAULT_VALUE_TYPE):
    """A ParquetWriter of the DIALS layout as the simulator writes it (zstd level 1: compression
    dominates the writing time, and level 1 shrinks the file ~3x at a small cost)."""
    import pyarrow.parquet as pq

    return pq.ParquetWriter(
        path,
        dials_schema(value_type),
        compression="zstd",
        compression_level=1,
        write_statistics=["run_number", "ls_number"],
    )


def write_dials_parquet(
    path: str | Path,
    maps: np.ndarray,
    run: np.ndarray,
    ls: np.ndarray,
    era: str = "Run2025Z",
    value_type: str = DEFAULT_VALUE_TYPE,
    geometry: RingGeometry | None = None,
) -> Path:
    """Write (N, rows, 56) maps of one ring as a DIALS-format parquet (e.g. maps made from
    other models). `geometry` None: the ring of the maps' shape (Ring 2 (140, 56) or Ring 1
    (92, 56)); given, it must match the shape."""
    geometry = _geometry_of_maps(maps, geometry)
    path = Path(path)
    with replacing(path) as partial, dials_parquet_writer(partial, value_type) as writer:
        for start in range(0, len(maps), ROW_GROUP_LS):
            rows = slice(start, start + ROW_GROUP_LS)
            run_rows = np.broadcast_to(np.asarray(run), (len(maps),))[rows]
            writer.write_table(
                dials_table(maps[rows], run_rows, ls[rows], era, value_type, geometry)
            )
    return path
