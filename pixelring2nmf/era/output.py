"""An era's output folder, written so that it never lies about what it holds.

`era.json` is the folder's status. It is written first, saying `complete: false, state:
running`, so that an earlier run's `complete: true` never stands beside this run's partial
tables (a SIGKILL or a full disk in the middle of an `era --force` rerun); the earlier run's
tables are removed at the same moment. Every table is written under a temporary name and
renamed, so a file is either whole or absent. The final `era.json` comes last, and says
`complete: true` only when every file was written and every LS judged; otherwise it says
why not. Nothing here decides anything about the data: it writes what the engine produced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import OutputError
from ..io.atomic import TEMPORARY_SUFFIX, write_atomically, write_text
from ..io.workbook import write_readable_sheet
from .certification import CERTIFICATION_NAMES, certification_files, oms_run_link
from .judge import peak_memory_mb
from .merge import EraRun
from .tables import EraTables

RESULTS_STEM = "lumisections"  # per-LS results: lumisections.parquet / lumisections.csv
XLSX_NAME = "era.xlsx"
SUMMARY_NAME = "era.json"
XLSX_SHEETS = {
    "condensed": "Condensed",
    "powergroup": "Power groups",
    "per_ls": "Per LS",
    "run_summary": "Run summary",
    "persistent": "Persistent",
}
_XLSX_MAX_ROWS = 1_048_575  # a spreadsheet's row limit, minus the header

# era.json states
RUNNING = "running"
FINISHED = "finished"  # complete: every LS judged, every file written
INCOMPLETE = "incomplete"  # written, but some input could not be judged
INTERRUPTED = "interrupted"
FAILED = "failed"  # stopped by an error before or while writing

logger = logging.getLogger(__name__)


def table_csv(out_dir: Path, name: str) -> Path:
    """Where table `name` (an `EraTables.sheets()` key) is written: `plot --era` reads it."""
    return out_dir / f"{name}.csv"


def output_names() -> list[str]:
    """Every file an era run writes, status last."""
    names = [f"{RESULTS_STEM}.parquet", f"{RESULTS_STEM}.csv"]
    names += [table_csv(Path(), name).name for name in XLSX_SHEETS]
    names += list(CERTIFICATION_NAMES)  # golden.json, flagged.json
    return [*names, XLSX_NAME, SUMMARY_NAME]


@dataclass
class EraStatus:
    """What era.json says; filled in as the run goes."""

    files: list[str] = field(default_factory=list)
    model: str = ""
    models: dict = field(default_factory=dict)  # era/periods.py: files, periods, runs judged
    rings: dict = field(default_factory=dict)  # model/rings.py: {"ring": ...} unless Ring 2
    state: str = RUNNING
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    oms: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # counts, where it ran, seconds
    outputs: list[str] = field(default_factory=list)  # the files written so far, by name
    started_at: str = field(default_factory=lambda: _now())

    def as_dict(self) -> dict:
        return {
            "complete": self.state == FINISHED,
            "state": self.state,
            **({"reason": self.reason} if self.reason else {}),
            "problems": self.problems,
            "warnings": self.warnings,
            "files": self.files,
            "model": self.model,
            **self.models,
            **self.rings,
            "oms": self.oms,
            "outputs": self.outputs,
            **self.details,
            "started_at": self.started_at,
            **({} if self.state == RUNNING else {"ended_at": _now()}),
        }


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class EraFolder:
    """The output folder of one era run: its status first, its tables, its status last."""

    def __init__(self, out_dir: Path, status: EraStatus) -> None:
        self.out_dir = Path(out_dir)
        self.status = status
        self.written: list[Path] = []

    def begin(self) -> None:
        """Take the folder over: the earlier run's files go, era.json says `running`."""
        for name in output_names():
            leftovers = [self.out_dir / name, *self.out_dir.glob(_temporary_pattern(name))]
            for path in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self.write_status()

    def write_status(self) -> None:
        """era.json, atomically. On a full disk, where even the small temporary copy finds no
        room, it is rewritten in place: truncating the old one frees its blocks first."""
        text = json.dumps(self.status.as_dict(), indent=2) + "\n"
        path = self.out_dir / SUMMARY_NAME
        try:
            write_text(path, text)
        except OutputError as error:
            cause = error.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
                raise
            try:
                with open(path, "w", encoding="utf-8") as stream:
                    stream.write(text)
            except OSError:
                raise error from None

    def write_results(self, era: EraRun, tables: EraTables, *, xlsx: bool) -> None:
        """Per-LS results (parquet + CSV), every table as CSV, and the XLSX, each atomically;
        the first that cannot be written stops the writing (OutputError)."""
        results = era.results
        self._write(f"{RESULTS_STEM}.parquet", lambda p: results.to_parquet(p, index=False))
        self._write(f"{RESULTS_STEM}.csv", lambda p: results.to_csv(p, index=False))
        for name, table in tables.sheets().items():
            self._write(table_csv(Path(), name).name, _csv_writer(table))
        for name, text in certification_files(results).items():
            self._write(name, lambda p, text=text: p.write_text(text, encoding="utf-8"))
        if xlsx:
            self._write(XLSX_NAME, lambda p: write_xlsx(p, tables))

    def _write(self, name: str, write: Callable[[Path], object]) -> None:
        self.written.append(write_atomically(self.out_dir / name, write))
        self.status.outputs.append(name)


def _temporary_pattern(name: str) -> str:
    """The temporary files (io.atomic) a killed run may have left for output `name`."""
    path = Path(name)
    return f".{path.stem}.*{TEMPORARY_SUFFIX}{path.suffix}"


def _csv_writer(table: pd.DataFrame) -> Callable[[Path], object]:
    return lambda path: table.to_csv(path, index=False)


def write_xlsx(path: Path, tables: EraTables) -> Path:
    """One workbook, a sheet per table, header frozen and columns wide enough to read."""
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for name, table in tables.sheets().items():
            sheet = XLSX_SHEETS[name]
            if len(table) > _XLSX_MAX_ROWS:
                logger.warning(
                    "era: sheet %r cut to %d of %d rows (spreadsheet limit); the CSV has all",
                    sheet,
                    _XLSX_MAX_ROWS,
                    len(table),
                )
                table = table.iloc[:_XLSX_MAX_ROWS]
            worksheet = write_readable_sheet(writer, table, sheet, max_width=80)
            _link_runs(worksheet, table)
    return path


RUN_COLUMNS = ("Run", "Run_Number")  # the cells that open the run's OMS report


def _link_runs(worksheet, table: pd.DataFrame) -> None:
    """Each run number links to its OMS run report (DOMAIN.md section 13), as experts click."""
    for i, column in enumerate(table.columns):
        if column not in RUN_COLUMNS:
            continue
        for row, run in enumerate(table[column].tolist(), start=2):
            cell = worksheet.cell(row=row, column=i + 1)
            cell.hyperlink = oms_run_link(run)
            cell.style = "Hyperlink"


def era_details(era: EraRun, tables: EraTables) -> dict:
    """The counts era.json records of a judged era."""
    results = era.results
    return {
        "ran_on": era.ran_on,
        "tasks": era.n_tasks,
        "n_ls": len(results),
        "n_runs": int(results.run.nunique()),
        "n_dcs_good": int(results.dcs_good.sum()),
        "n_flagged": int(results.flag.sum()),
        "rows_by_type": {str(k): int(v) for k, v in tables.condensed.Type.value_counts().items()},
        "persistent": len(tables.persistent),
        "seconds": round(era.seconds, 2),
        "peak_memory_mb": {
            "this process": round(peak_memory_mb()),
            "largest worker": round(era.worker_peak_memory_mb),
        },
    }


def summary_line(era: EraRun, tables: EraTables, out_dir: Path) -> str:
    """The one line a user reads at the end: volume, speed, what was found, where it went."""
    results = era.results
    n_ls = len(results)
    rate = n_ls / era.seconds if era.seconds > 0 else float("nan")
    by_type = tables.condensed.Type.value_counts()
    kinds = ", ".join(f"{k} {by_type[k]}" for k in by_type.index) or "none"
    status = "" if era.complete else f" INCOMPLETE ({len(era.failures)} problem(s) below)"
    if era.interrupted:
        status = f" INTERRUPTED by {era.interrupted} (results so far written)"
    elif not n_ls and not era.failures:
        status = " INCOMPLETE (no LS to judge)"
    return (
        f"era: {n_ls:,} LS of {results.run.nunique():,} run(s) from {len(era.files)} file(s) in "
        f"{era.seconds:.1f} s ({rate:,.0f} LS/s) on {era.ran_on}; DCS-good "
        f"{int(results.dcs_good.sum()):,}; flagged {int(results.flag.sum()):,}; ranges: {kinds}; "
        f"persistent groups: {len(tables.persistent)}; written to {out_dir}{status}"
    )
