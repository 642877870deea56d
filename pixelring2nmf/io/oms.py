"""OMS per-lumisection information from files and the OMS API -> columns aligned to the maps.

OMS data come as a JSON dict of equal-length column lists (one entry per LS, nulls allowed) or
as rows from the live OMS API. Histograms and OMS rows are matched on (run, LS); the original
used the key `run*10000 + ls`, which collides once an LS number reaches 10000, so the match here
is on the pair itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlserver_model.dftools import DCS_FLAGS, DcsResult, dcs_filter
from mlserver_model.errors import InputError
from mlserver_model.omstools import OMS_COLUMNS

from ..errors import DataError
from .keys import examples, repeated_mask

# The OMS column names the toolkit relies on (the runtime's OMS_COLUMNS lists them all).
OMS_KEY_COLUMNS = ("run_number", "lumisection_number")
PILEUP = "pileup"
RECORDED_LUMI = "recorded_lumi_per_lumisection"  # /pb, what certification counts as lost
LOGGER = logging.getLogger(__name__)


def read_oms_json(path: str | Path) -> pd.DataFrame:
    """Read an OMS JSON file in the column-dict layout; one DataFrame row per LS."""
    if Path(path).is_dir():
        raise DataError(f"{path} is a folder: give the OMS JSON file inside it")
    try:
        with open(path, encoding="utf-8") as handle:
            columns = json.load(handle)
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not an OMS JSON file: it is binary (a parquet file given as --oms?)"
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not an OMS JSON file: invalid JSON ({error})") from None
    except OSError as error:
        raise DataError(f"cannot read the OMS file {path}: {error.strerror or error}") from None
    return oms_frame(columns, source=str(path))


def oms_frame(columns: Any, *, source: str = "OMS data") -> pd.DataFrame:
    """Validate the column-dict layout {attribute: [value per LS]} and make a DataFrame.

    Columns keep their values as given (bool columns with nulls become object columns), so a
    null stays distinguishable from False all the way to the DCS filter.
    """
    if not isinstance(columns, Mapping):
        raise DataError(
            f"{source}: expected a dict of column lists {{attribute: [value per LS]}}, "
            f"got {type(columns).__name__}"
        )
    not_lists = [k for k, v in columns.items() if not isinstance(v, list)]
    if not_lists:
        raise DataError(f"{source}: every column must be a list, not for {not_lists}")
    missing = [k for k in OMS_KEY_COLUMNS if k not in columns]
    if missing:
        raise DataError(
            f"{source}: missing key column(s) {missing} needed to match LS; "
            f"columns found: {sorted(columns)}"
        )
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{source}: columns have unequal lengths {lengths}")
    return pd.DataFrame({k: pd.Series(v, dtype=_column_dtype(v)) for k, v in columns.items()})


def _column_dtype(values: list) -> object | None:
    # pandas would turn [True, None] into object but [1, None] into float: keep ints with
    # nulls as objects too, so run/LS numbers are never silently floats. (`in` and `map` run
    # in C: this is checked on every column of an era's OMS table.)
    if None in values and set(map(type, values)) & {bool, int}:
        return object
    return None


def align_oms(oms: pd.DataFrame, run: np.ndarray, ls: np.ndarray) -> dict[str, np.ndarray]:
    """Every OMS column, reordered to the given (run, LS); an LS absent from OMS gets null.

    Null is None in object columns and NaN in float columns: both fail the DCS filter, as an
    LS missing from OMS did in the original deployment.
    """
    run = np.asarray(run)
    ls = np.asarray(ls)
    if run.ndim != 1 or ls.ndim != 1 or run.shape != ls.shape:
        raise ValueError(
            f"run and ls must be 1-D arrays of equal length, got shapes {run.shape} and {ls.shape}"
        )
    index = oms_index(oms)
    wanted = pd.MultiIndex.from_arrays([run.astype(np.int64), ls.astype(np.int64)])
    rows = index.get_indexer(wanted)
    absent = rows < 0
    present = ~absent
    aligned: dict[str, np.ndarray] = {}
    for name in oms.columns:
        values = oms[name].to_numpy()
        if not absent.any():
            aligned[name] = values[rows]
            continue
        if values.dtype.kind == "f":
            column = np.full(rows.size, np.nan, dtype=values.dtype)
        else:
            column = np.full(rows.size, None, dtype=object)
        column[present] = values[rows[present]]
        aligned[name] = column
    return aligned


def oms_index(oms: pd.DataFrame) -> pd.MultiIndex:
    """(run, LS) index of the OMS rows; each LS must appear at most once."""
    missing = [k for k in OMS_KEY_COLUMNS if k not in oms.columns]
    if missing:
        raise DataError(
            f"OMS data lack key column(s) {missing}; columns found: {list(oms.columns)}"
        )
    keys = []
    for name in OMS_KEY_COLUMNS:
        column = oms[name]
        if column.isna().any():
            raise DataError(f"OMS column {name!r} has {int(column.isna().sum())} null value(s)")
        try:
            key = column.to_numpy().astype(np.int64)
        except (TypeError, ValueError) as error:
            raise DataError(f"OMS column {name!r} must hold integers: {error}") from error
        # The cast truncates (LS 1.5 would become LS 1 and match a map it does not describe).
        inexact = pd.to_numeric(column, errors="coerce").to_numpy() != key
        if inexact.any():
            raise DataError(
                f"OMS column {name!r} must hold integers, found {int(inexact.sum())} "
                f"non-integer value(s), e.g. {column[inexact].tolist()[0]!r}"
            )
        keys.append(key)
    repeated = repeated_mask(*keys)
    if repeated.any():
        shown = examples(*keys, repeated)
        raise DataError(
            f"OMS data have {len(set(zip(keys[0][repeated], keys[1][repeated], strict=True)))} "
            f"duplicated (run, ls) pair(s), e.g. {shown}"
        )
    index = pd.MultiIndex.from_arrays(keys, names=list(OMS_KEY_COLUMNS))
    return index


def dcs_filter_for(oms: pd.DataFrame | None, run: np.ndarray, ls: np.ndarray) -> DcsResult:
    """DCS filter of the given LS from an OMS table (None: no OMS data, every LS passes)."""
    n_ls = len(run)
    if len(ls) != n_ls:
        raise ValueError(f"run and ls must have equal length, got {n_ls} and {len(ls)}")
    if oms is None:
        return dcs_filter(None, n_ls)
    return dcs_filter(align_oms(oms, run, ls), n_ls)


def oms_from_lumisections(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """OMS API `data[i].attributes` dicts (one per LS) -> the column-dict layout.

    The known OMS_COLUMNS come first in their usual order, then any other attribute in order of
    first appearance; an attribute absent from a row is null there, as the OMS API itself
    omits nothing but a caller may have asked for fewer `fields`.
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise DataError(
            f"expected a list of OMS lumisection attribute dicts, got {type(rows).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(
                f"OMS lumisection {i} must be a dict of attributes, got {type(row).__name__}"
            )
    names = [c for c in OMS_COLUMNS if any(c in row for row in rows)]
    known = set(names)
    for row in rows:
        for name in row:
            if name not in known:
                known.add(name)
                names.append(name)
    return {name: [row.get(name) for row in rows] for name in names}


def check_oms_frame(oms: pd.DataFrame, source: str) -> list[str]:
    """Check a whole OMS table once, when it is read; the warnings it deserves.

    The DCS flags decide which LS may be flagged, so they must be all eight or none, and hold
    only true/false/0/1/null: anything else is a DataError (no LS could be judged honestly).
    Without any DCS flag the filter cannot be applied, and a pileup that is not a number is
    read as missing: both are warnings, which `era` also records in era.json.
    """
    warnings = []
    present = [flag for flag in DCS_FLAGS if flag in oms.columns]
    try:
        dcs_filter({flag: oms[flag].to_numpy() for flag in present}, len(oms))
    except InputError as error:
        raise DataError(f"{source}: {error}") from None
    if not present:
        warnings.append(
            f"{source} has none of the {len(DCS_FLAGS)} DCS flag columns: the DCS filter is "
            "not applied, every LS may be flagged"
        )
    for name in (PILEUP, RECORDED_LUMI):
        if name not in oms.columns:
            continue
        values = oms[name]
        unreadable = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if unreadable.any():
            what = "pileup" if name == PILEUP else name
            warnings.append(
                f"{source}: {int(unreadable.sum())} {what} value(s) are not numbers, e.g. "
                f"{values[unreadable].iloc[0]!r}; read as missing"
            )
    return warnings


def pileup_values(columns: Mapping[str, Any] | None, n_ls: int) -> np.ndarray:
    """(n_ls,) float64 pileup of aligned OMS columns; NaN where missing or unreadable."""
    return numeric_values(columns, PILEUP, n_ls)


def recorded_lumi_values(columns: Mapping[str, Any] | None, n_ls: int) -> np.ndarray:
    """(n_ls,) float64 recorded luminosity (/pb) of aligned OMS columns; NaN where missing."""
    return numeric_values(columns, RECORDED_LUMI, n_ls)


def numeric_values(columns: Mapping[str, Any] | None, name: str, n_ls: int) -> np.ndarray:
    """(n_ls,) float64 OMS column `name`; NaN where missing or unreadable (never 0: an unknown
    luminosity summed as zero would look like a measured one)."""
    if columns is None or name not in columns:
        return np.full(n_ls, np.nan)
    return pd.to_numeric(pd.Series(columns[name]), errors="coerce").to_numpy(np.float64)


@dataclass(frozen=True)
class OmsCoverage:
    """Which of the judged LS the OMS data describe, per run: an LS they lack fails the DCS
    filter, so a file of other runs silently makes a whole era unflaggable."""

    ls_per_run: dict[int, int]  # LS judged, per run
    covered_per_run: dict[int, int]  # of which OMS has a row

    @property
    def n_ls(self) -> int:
        return sum(self.ls_per_run.values())

    @property
    def n_covered(self) -> int:
        return sum(self.covered_per_run.values())

    def runs_not_covered(self) -> list[int]:
        return [run for run, n in self.covered_per_run.items() if n == 0]

    def runs_partly_covered(self) -> list[int]:
        return [run for run, n in self.covered_per_run.items() if 0 < n < self.ls_per_run[run]]

    def warning(self, source: str) -> str | None:
        """A line for the user when OMS does not cover every LS, else None."""
        if self.n_covered == self.n_ls:
            return None
        if self.n_covered == 0:
            return (
                f"{source} has no OMS data for any of the {self.n_ls} LS (runs "
                f"{self.runs_not_covered()[:10]}): every LS fails the DCS filter and nothing "
                "can be flagged. Is it the OMS file of these runs?"
            )
        return (
            f"{source} covers {self.n_covered} of {self.n_ls} LS; the other "
            f"{self.n_ls - self.n_covered} fail the DCS filter (runs without any OMS data: "
            f"{self.runs_not_covered()[:10] or 'none'}; runs partly covered: "
            f"{self.runs_partly_covered()[:10] or 'none'})"
        )

    def as_dict(self) -> dict:
        """What era.json records: totals, and the runs OMS does not cover fully."""
        return {
            "n_ls": self.n_ls,
            "n_covered": self.n_covered,
            "runs_without_oms": self.runs_not_covered(),
            "runs_partly_covered": {
                str(run): [self.covered_per_run[run], self.ls_per_run[run]]
                for run in self.runs_partly_covered()
            },
        }


def oms_coverage(index: pd.MultiIndex, run: np.ndarray, ls: np.ndarray) -> OmsCoverage:
    """How far the OMS rows of `index` (`oms_index`) cover the LS (run, ls), per run."""
    run = np.asarray(run, dtype=np.int64)
    wanted = pd.MultiIndex.from_arrays([run, np.asarray(ls, dtype=np.int64)])
    found = index.get_indexer(wanted) >= 0
    runs, n_ls = np.unique(run, return_counts=True)
    covered = np.bincount(np.searchsorted(runs, run), weights=found, minlength=runs.size)
    return OmsCoverage(
        ls_per_run=dict(zip(runs.tolist(), n_ls.tolist(), strict=True)),
        covered_per_run=dict(zip(runs.tolist(), covered.astype(int).tolist(), strict=True)),
    )


def checked_oms_columns(
    oms: pd.DataFrame | None, run: np.ndarray, ls: np.ndarray, source: str | None
) -> dict[str, np.ndarray] | None:
    """OMS columns aligned to the maps, saying how far they cover them (or that there are none).

    Without OMS data every LS passes the DCS filter, as in the original deployment; a user who
    forgot `--oms` should hear it, and one who gave the OMS file of other runs even more so.
    """
    if oms is None:
        LOGGER.warning("No OMS data given (--oms): the DCS filter was skipped, every LS may flag")
        return None
    message = oms_coverage(oms_index(oms), run, ls).warning(source or "the OMS data")
    if message:
        LOGGER.warning(message)
    return align_oms(oms, run, ls)


class OmsLookup:
    """The OMS rows of an era's files, checked once and grouped by run, so that each chunk of
    maps aligns against its own runs only (not ~100k rows a thousand LS at a time)."""

    def __init__(self, frames: Sequence[tuple[str, pd.DataFrame]]) -> None:
        tables = [table for _, table in frames]
        frame = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        self.sources = [name for name, _ in frames]
        source = ", ".join(self.sources)
        try:
            # one table: an LS in two of the files is as wrong as one in a file twice
            self._index = oms_index(frame)
        except DataError as error:
            raise DataError(f"OMS file(s) {source}: {error}") from None
        self.warnings = check_oms_frame(frame, f"OMS file(s) {source}")
        self.has_dcs_flags = any(flag in frame.columns for flag in DCS_FLAGS)
        self.has_recorded_lumi = RECORDED_LUMI in frame.columns
        self._frame = frame
        # each run's row numbers, not a copy of its rows: the table is held once
        run_keys = self._index.get_level_values(OMS_KEY_COLUMNS[0]).to_numpy()
        order = np.argsort(run_keys, kind="stable")
        runs, starts = np.unique(run_keys[order], return_index=True)
        self._by_run = dict(zip(runs.tolist(), np.split(order, starts[1:]), strict=True))

    @classmethod
    def read(cls, paths: Sequence[str | Path]) -> OmsLookup:
        return cls([(str(p), read_oms_json(p)) for p in paths])

    def runs_between(self, first: int, last: int) -> OmsLookup:
        """Only the rows of runs `first` to `last`: what a task of those runs needs, so a
        cluster receives the era's table once in total rather than once per worker."""
        rows = [r for run, r in self._by_run.items() if first <= run <= last]
        taken = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        part = object.__new__(OmsLookup)
        part.__dict__.update(self.__dict__)
        part._index = None  # coverage is the client's business, not a task's
        part._frame = self._frame.iloc[taken].reset_index(drop=True)
        positions = np.cumsum([0, *(len(r) for r in rows)])
        part._by_run = {
            run: np.arange(positions[i], positions[i + 1])
            for i, run in enumerate(run for run in self._by_run if first <= run <= last)
        }
        return part

    def columns_for(self, run: np.ndarray, ls: np.ndarray) -> dict[str, np.ndarray]:
        """OMS columns aligned to (run, ls); an LS absent from OMS gets nulls (DCS-bad)."""
        rows = [self._by_run[r] for r in np.unique(run).tolist() if r in self._by_run]
        taken = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return align_oms(self._frame.iloc[taken], run, ls)

    def coverage(self, run: np.ndarray, ls: np.ndarray) -> OmsCoverage:
        return oms_coverage(self._index, run, ls)
