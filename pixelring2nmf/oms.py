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

from mlserver_model.dftools import DcsResult, dcs_filter
from mlserver_model.omstools import OMS_COLUMNS

OMS_KEY_COLUMNS = ("run_number", "lumisection_number")
LOGGER = logging.getLogger("pixelring2nmf.oms")


def read_oms_json(path: str | Path) -> pd.DataFrame:
    """Read an OMS JSON file in the column-dict layout; one DataFrame row per LS."""
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder: give the OMS JSON file inside it")
    try:
        with open(path, encoding="utf-8") as handle:
            columns = json.load(handle)
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not an OMS JSON file: it is binary (a parquet file given as --oms?)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not an OMS JSON file: invalid JSON ({error})") from None
    return oms_frame(columns, source=str(path))


@dataclass(frozen=True)
class OmsCoverage:
    """How much of the data the OMS file describes: an LS it lacks fails the DCS filter."""

    n_ls: int
    n_found: int
    runs_without_oms: list[int]

    def warning(self, source: str) -> str | None:
        """A line for the user when OMS does not cover every LS, else None."""
        if self.n_found == self.n_ls:
            return None
        if self.n_found == 0:
            return (
                f"{source} has no OMS data for any of the {self.n_ls} LS (runs "
                f"{self.runs_without_oms[:10]}): every LS fails the DCS filter and nothing can be "
                "flagged. Is it the OMS file of these runs?"
            )
        return (
            f"{source} covers {self.n_found} of {self.n_ls} LS; the other "
            f"{self.n_ls - self.n_found} fail the DCS filter (runs without any OMS data: "
            f"{self.runs_without_oms[:10] or 'none'})"
        )


def oms_coverage(
    oms: pd.DataFrame, run: np.ndarray, aligned: Mapping[str, np.ndarray]
) -> OmsCoverage:
    """How far OMS covers the LS that `aligned` (`align_oms` of them) describes, read off its
    keys, null exactly where OMS lacks the LS (`oms_index` refuses null keys), so that OMS is
    not indexed a second time."""
    found = ~pd.isna(aligned[OMS_KEY_COLUMNS[0]])
    oms_runs = set(oms["run_number"].astype(np.int64).tolist())
    return OmsCoverage(
        n_ls=len(found),
        n_found=int(found.sum()),
        runs_without_oms=sorted(int(r) for r in np.unique(run) if int(r) not in oms_runs),
    )


def oms_frame(columns: Any, *, source: str = "OMS data") -> pd.DataFrame:
    """Validate the column-dict layout {attribute: [value per LS]} and make a DataFrame.

    Columns keep their values as given (bool columns with nulls become object columns), so a
    null stays distinguishable from False all the way to the DCS filter.
    """
    if not isinstance(columns, Mapping):
        raise ValueError(
            f"{source}: expected a dict of column lists {{attribute: [value per LS]}}, "
            f"got {type(columns).__name__}"
        )
    not_lists = [k for k, v in columns.items() if not isinstance(v, list)]
    if not_lists:
        raise ValueError(f"{source}: every column must be a list, not for {not_lists}")
    missing = [k for k in OMS_KEY_COLUMNS if k not in columns]
    if missing:
        raise ValueError(
            f"{source}: missing key column(s) {missing} needed to match LS; "
            f"columns found: {sorted(columns)}"
        )
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{source}: columns have unequal lengths {lengths}")
    return pd.DataFrame({k: pd.Series(v, dtype=_column_dtype(v)) for k, v in columns.items()})


def _column_dtype(values: list) -> object | None:
    # pandas would turn [True, None] into object but [1, None] into float: keep ints with
    # nulls as objects too, so run/LS numbers are never silently floats.
    if any(v is None for v in values) and any(isinstance(v, bool | int) for v in values):
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
        raise ValueError(
            f"OMS data lack key column(s) {missing}; columns found: {list(oms.columns)}"
        )
    keys = []
    for name in OMS_KEY_COLUMNS:
        column = oms[name]
        if column.isna().any():
            raise ValueError(f"OMS column {name!r} has {int(column.isna().sum())} null value(s)")
        try:
            key = column.to_numpy().astype(np.int64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"OMS column {name!r} must hold integers: {error}") from error
        # The cast truncates (LS 1.5 would become LS 1 and match a map it does not describe).
        inexact = pd.to_numeric(column, errors="coerce").to_numpy() != key
        if inexact.any():
            raise ValueError(
                f"OMS column {name!r} must hold integers, found {int(inexact.sum())} "
                f"non-integer value(s), e.g. {column[inexact].tolist()[0]!r}"
            )
        keys.append(key)
    index = pd.MultiIndex.from_arrays(keys, names=list(OMS_KEY_COLUMNS))
    if index.has_duplicates:
        duplicated = index[index.duplicated()].unique()
        examples = [tuple(int(x) for x in pair) for pair in duplicated[:5]]
        raise ValueError(
            f"OMS data have {len(duplicated)} duplicated (run, ls) pair(s), e.g. {examples}"
        )
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
        raise ValueError(
            f"expected a list of OMS lumisection attribute dicts, got {type(rows).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(
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
    aligned = align_oms(oms, run, ls)
    message = oms_coverage(oms, run, aligned).warning(source or "the OMS data")
    if message:
        LOGGER.warning(message)
    return aligned
