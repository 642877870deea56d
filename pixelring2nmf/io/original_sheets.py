"""The original's era spreadsheets, read back in any of their three layouts.

The experts hold the original's results for every era of 2024B-2025G as workbooks in three
layouts (docs/domain.md, DOMAIN.md section 7): Condensed (`Run, First LS, Last LS, Total LS,
Barrel/Forward, Layer/Disk, Row/Quarter, Type`), per power group (`Run_Number, Start_LS, End_LS,
Num_LS, Powergroup, Disk, Ring_Num, Anomaly_Type`) and per LS (`Run_Number, Lumisection,
Powergroup, Disk, Ring_Num, Anomaly_Type`). `compare` judges this model against them, so they
are read as the experts have them: any file name, any sheet name, every sheet of every file,
the layout told by the header row (which may follow a few title rows), values as Excel gives
them back (a run as 379470, 379470.0 or "379470"; disks as "Disk -2:-3", "-2:-3", 3 or a time
01:02:00 when Excel took "1:2" for a clock), surrounding whitespace ignored. CSV files too.

Every row becomes one range of the original: per-LS rows are joined into ranges the way the
original built its tables (consecutive LS of a run with the same groups and type). A row of
the other ring (Ring 1, unless a Ring 1 era is compared) is counted and left out. A sheet in none of
the layouts, or a value that cannot be read, is a DataError naming the file, sheet, row and
column, so one bad cell in a year of files is found at once.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.geometry import GROUP_DISK, GROUP_NAMES

from ..errors import DataError

# the original's columns (era/tables.py writes the same names; io cannot import the era layer)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "condensed": (
        "Run",
        "First LS",
        "Last LS",
        "Total LS",
        "Barrel/Forward",
        "Layer/Disk",
        "Row/Quarter",
        "Type",
    ),
    "powergroup": (
        "Run_Number",
        "Start_LS",
        "End_LS",
        "Num_LS",
        "Powergroup",
        "Disk",
        "Ring_Num",
        "Anomaly_Type",
    ),
    "per_ls": ("Run_Number", "Lumisection", "Powergroup", "Disk", "Ring_Num", "Anomaly_Type"),
}
# the layout whose rows are used when one run appears in several (the richest first)
LAYOUT_PRIORITY = ("powergroup", "per_ls", "condensed")
TYPES = ("Multi-Disk", "Quarter", "Single-Disk", "Same-Disk")
RANGE_COLUMNS = ("run", "first_ls", "last_ls", "type", "disks", "groups", "layout", "source")
SUFFIXES = (".xlsx", ".xlsm", ".csv")
_HEADER_SEARCH_ROWS = 10  # a header may follow a few title rows
_TYPE_KEYS = {re.sub(r"[\s_-]", "", t).lower(): t for t in TYPES}
_DISK_OF = dict(zip(GROUP_NAMES, GROUP_DISK.tolist(), strict=True))
_GROUP_NAMES = frozenset(GROUP_NAMES)


@dataclass
class OriginalSheets:
    """Everything read from the original's files.

    `ranges`: one row per range of the original, Ring 2 only (RANGE_COLUMNS: `disks` as the
    experts write them, `-2:-3`; `groups` `FPix_..:FPix_..`, empty for the condensed layout;
    `source` `file:sheet:row N` or `rows N-M`). `runs`: every run any row names (Ring 1 rows
    too: the original judged those runs). `sheets`: what each sheet held.
    """

    ranges: pd.DataFrame
    runs: frozenset[int]
    sheets: list[dict] = field(default_factory=list)
    other_ring_rows: int = 0  # rows of the other ring, counted and left out
    empty_sheets: list[str] = field(default_factory=list)


class _Where:
    """Names a cell in messages: file, sheet, row (as the spreadsheet numbers it), column."""

    def __init__(self, path: Path, sheet: str) -> None:
        self.path = path
        self.sheet = sheet

    def sheet_name(self) -> str:
        return f"{self.path.name}:{self.sheet}" if self.sheet else self.path.name

    def cell(self, row: int, column: str) -> str:
        sheet = f", sheet {self.sheet!r}" if self.sheet else ""
        return f"{self.path}{sheet}, row {row}, column {column!r}"


def read_original(paths: list[Path] | tuple[Path, ...], ring: int = 2) -> OriginalSheets:
    """Every sheet of every file, as ranges of `ring` (Ring 2 unless an era of Ring 1 is
    compared); rows of the other ring are counted and left out (DataError on anything
    unreadable)."""
    if not paths:
        raise DataError("no original file given")
    frames: list[pd.DataFrame] = []
    result = OriginalSheets(ranges=pd.DataFrame(columns=list(RANGE_COLUMNS)), runs=frozenset())
    runs: set[int] = set()
    for path in map(Path, paths):
        for sheet, table in _read_file(path).items():
            where = _Where(path, sheet)
            found = _header(table)
            if found is None:
                if table.dropna(how="all").empty:
                    result.empty_sheets.append(where.sheet_name())
                    continue
                columns = [str(v).strip() for v in table.iloc[0].tolist() if not _blank(v)]
                raise DataError(
                    f"{path}{f', sheet {sheet!r}' if sheet else ''}: not one of the original's "
                    f"layouts (its first row has {columns}; expected the columns of "
                    + "; or ".join(", ".join(c) for c in LAYOUTS.values())
                    + ")"
                )
            layout, header_row, positions = found
            rows = table.iloc[header_row + 1 :]
            ranges, sheet_runs, other = _read_rows(rows, layout, positions, where, ring)
            runs |= sheet_runs
            result.other_ring_rows += other
            frames.append(ranges)
            result.sheets.append(
                {
                    "file": str(path),
                    "sheet": sheet,
                    "layout": layout,
                    "ranges": len(ranges),
                    "other_ring_rows": other,
                }
            )
    if frames:
        result.ranges = pd.concat(frames, ignore_index=True)
    result.runs = frozenset(runs)
    return result


def _read_file(path: Path) -> dict[str, pd.DataFrame]:
    """Sheet name -> raw cells (no header taken, every value as the reader gives it)."""
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: not a spreadsheet of the original ({', '.join(SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            return {"": _read_csv(path)}
        return pd.read_excel(path, sheet_name=None, header=None, dtype=object, engine="openpyxl")
    except pd.errors.EmptyDataError:
        return {"": pd.DataFrame()}
    except Exception as error:  # openpyxl and the CSV parser raise many kinds on bad files
        raise DataError(f"{path}: cannot read it as a spreadsheet: {error}") from None


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as Excel or pandas saved it: comma, or the semicolon or tab of other locales
    (the one that shows a layout's header wins); a byte-order mark ignored."""
    tables = []
    for separator in (",", ";", "\t"):
        table = pd.read_csv(
            path,
            header=None,
            sep=separator,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        ).replace("", np.nan)
        if _header(table) is not None:
            return table
        tables.append(table)
    return tables[0]


def _blank(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _header(table: pd.DataFrame) -> tuple[str, int, dict[str, int]] | None:
    """(layout, header row index, column name -> position) of the first header row found."""
    for index in range(min(_HEADER_SEARCH_ROWS, len(table))):
        cells = [str(v).strip() if not _blank(v) else "" for v in table.iloc[index].tolist()]
        for layout, columns in LAYOUTS.items():
            if set(columns) <= set(cells):
                return layout, index, {c: cells.index(c) for c in columns}
    return None


def _read_rows(
    rows: pd.DataFrame, layout: str, positions: dict[str, int], where: _Where, ring: int = 2
) -> tuple[pd.DataFrame, set[int], int]:
    """The sheet's ranges of `ring`, every run it names, and how many other-ring rows it had."""
    records: list[dict] = []
    runs: set[int] = set()
    other = 0
    for index, cells in zip(rows.index, rows.itertuples(index=False), strict=True):
        values = {c: cells[p] for c, p in positions.items()}
        if all(_blank(v) for v in values.values()):
            continue  # blank line (Excel's trailing rows)
        row = int(index) + 1  # as the spreadsheet numbers it (header=None: index 0 is row 1)
        record = _read_row(values, layout, row, where, ring)
        runs.add(record["run"])
        if record["ring"] != ring:
            other += 1
            continue
        records.append(record)
    if layout == "per_ls":
        records = _join_per_ls(records, where)
    table = pd.DataFrame(records, columns=[*RANGE_COLUMNS, "ring"]).drop(columns="ring")
    return table, runs, other


def _read_row(
    values: dict[str, object], layout: str, row: int, where: _Where, wanted: int = 2
) -> dict:
    """One row as a range of ring `wanted` (or an other-ring row, with only its run read)."""

    def get(column: str, parse):
        value = values[column]
        if _blank(value):
            raise DataError(f"{where.cell(row, column)}: empty")
        try:
            return parse(value)
        except ValueError as error:
            raise DataError(f"{where.cell(row, column)}: {error}") from None

    if layout == "condensed":
        run = get("Run", _positive_int)
        ring = get("Row/Quarter", _ring_name)
        get("Barrel/Forward", _forward)
        if ring != wanted:
            return {"run": run, "ring": ring}
        first, last = get("First LS", _positive_int), get("Last LS", _positive_int)
        _check_range(first, last, get("Total LS", _positive_int), row, where, "Total LS")
        disks, groups = get("Layer/Disk", _disks), ""
        kind = get("Type", _type)
    else:
        run = get("Run_Number", _positive_int)
        ring = get("Ring_Num", _ring_number)
        if ring != wanted:
            return {"run": run, "ring": ring}
        if layout == "powergroup":
            first, last = get("Start_LS", _positive_int), get("End_LS", _positive_int)
            _check_range(first, last, get("Num_LS", _positive_int), row, where, "Num_LS")
        else:
            first = last = get("Lumisection", _positive_int)
        groups = get("Powergroup", _groups)
        get("Disk", _disks)  # checked; the groups say which disks
        disks = _disks_text({_DISK_OF[g] for g in groups.split(":")})
        kind = get("Anomaly_Type", _type)
    return {
        "run": run,
        "first_ls": first,
        "last_ls": last,
        "type": kind,
        "disks": disks,
        "groups": groups,
        "layout": layout,
        "source": f"{where.sheet_name()}:row {row}",
        "ring": wanted,
        "row": row,
    }


def _check_range(first: int, last: int, n_ls: int, row: int, where: _Where, column: str) -> None:
    if last < first:
        raise DataError(f"{where.cell(row, 'Last LS')}: {last} before the first LS {first}")
    if n_ls != last - first + 1:
        raise DataError(
            f"{where.cell(row, column)}: {n_ls} LS, but the range {first}-{last} holds "
            f"{last - first + 1}"
        )


def _join_per_ls(records: list[dict], where: _Where) -> list[dict]:
    """Per-LS rows into ranges: consecutive LS of a run with the same groups and type."""
    records = sorted(records, key=lambda r: (r["run"], r["first_ls"]))
    joined: list[dict] = []
    for record in records:
        last = joined[-1] if joined else None
        if (
            last is not None
            and last["run"] == record["run"]
            and last["last_ls"] + 1 == record["first_ls"]
            and last["groups"] == record["groups"]
            and last["type"] == record["type"]
        ):
            last["last_ls"] = record["last_ls"]
            last["rows"].append(record["row"])
            continue
        joined.append({**record, "rows": [record["row"]]})
    for record in joined:
        rows = record.pop("rows")
        where_rows = f"row {rows[0]}" if len(rows) == 1 else f"rows {min(rows)}-{max(rows)}"
        record["source"] = f"{where.sheet_name()}:{where_rows}"
    return joined


# ---- values as the original wrote them (and as Excel gives them back) -----------------------


def _positive_int(value: object) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _integer(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if re.fullmatch(r"[+-]?\d+\.0*", text):
            return int(float(text))
    raise ValueError(f"expected an integer, got {value!r}")


def _disks(value: object) -> str:
    """'Disk -2:-3', '-2:-3', 3, 3.0, ' 3 ' or a time 01:02:00 -> '-2:-3' / '3' / '1:2'."""
    wanted = f"expected disks like 'Disk -2:-3', '-2:-3' or 3, got {value!r}"
    if isinstance(value, dt.time):  # Excel read "1:2" or "1:2:3" as a clock time
        parts = [value.hour, value.minute] + ([value.second] if value.second else [])
    elif isinstance(value, str):
        text = re.sub(r"(?i)^\s*disks?\s*", "", value).strip()
        try:
            parts = [_integer(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(wanted) from None
    else:
        try:
            parts = [_integer(value)]
        except ValueError:
            raise ValueError(wanted) from None
    if not parts or any(p not in (-3, -2, -1, 1, 2, 3) for p in parts):
        raise ValueError(f"expected disks in -3..-1, 1..3, got {value!r}")
    return _disks_text(set(parts))


def _disks_text(disks: set[int]) -> str:
    """Ordered by |disk| (then minus before plus), as the original's `-1:-2:-3`."""
    return ":".join(str(d) for d in sorted(disks, key=lambda d: (abs(d), d)))


def _groups(value: object) -> str:
    """'FPix_BmI_D2_ROG2:FPix_BmI_D3_ROG2' (also ';' or ',' between, spaces) -> canonical."""
    if not isinstance(value, str):
        raise ValueError(f"expected power groups like 'FPix_BmI_D2_ROG2', got {value!r}")
    names = [n.strip() for n in re.split(r"[:;,\s]+", value.strip()) if n.strip()]
    unknown = [n for n in names if n not in _GROUP_NAMES]
    if not names or unknown:
        raise ValueError(
            f"expected power groups like 'FPix_BmI_D2_ROG2', got {value!r}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return ":".join(sorted(set(names), key=GROUP_NAMES.index))


def _type(value: object) -> str:
    key = re.sub(r"[\s_-]", "", str(value)).lower()
    if key not in _TYPE_KEYS:
        raise ValueError(f"expected an anomaly type ({', '.join(TYPES)}), got {value!r}")
    return _TYPE_KEYS[key]


def _ring_name(value: object) -> int:
    match = re.fullmatch(r"(?i)\s*ring\s*([12])\s*", str(value))
    if match is None:
        raise ValueError(f"expected 'Ring 2' or 'Ring 1', got {value!r}")
    return int(match.group(1))


def _ring_number(value: object) -> int:
    ring = _integer(value)
    if ring not in (1, 2):
        raise ValueError(f"expected ring 2 (or 1), got {value!r}")
    return ring


def _forward(value: object) -> str:
    """The forward pixel detector is the one this model and the original's tables cover."""
    if str(value).strip().lower() != "forward":
        raise ValueError(f"expected 'Forward', got {value!r}")
    return "Forward"
