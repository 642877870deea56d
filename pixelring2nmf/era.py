"""`pixelring2nmf era`: the model over a whole era, streamed, into the experts' spreadsheets.

An era is far larger than memory (31 kB per LS as int32, ~300k LS a year), so the maps are
read row group by row group (`parquet.iter_dials_parquet`), judged by the model chunk by chunk
and dropped; only the per-LS results (~100 bytes each) are kept. Peak memory therefore does not
grow with the number of LS. Every decision is the model's own (`PixelRing2NMF.predict`, the same
call `predict` and the served handler make); this module only streams, collects and writes.

Data path: parquet files -> chunks of maps -> OMS columns of the chunk -> model.predict ->
per-LS results (`predict.results_table` + pileup) -> `tables.era_tables` -> CSV / parquet / XLSX.

A file that cannot be read is reported (file and problem) and skipped; what was already
computed, from earlier files or earlier chunks of that file, is still written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, LOGGER, PixelRing2NMF

from .oms import OMS_KEY_COLUMNS, align_oms, read_oms_json
from .predict import results_table
from .tables import EraTables, PersistenceRule, era_tables

CHUNK_LS = 1000  # LS judged at once: ~31 MB of int32 maps, the simulator's row-group size
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

logger = logging.getLogger(__name__)


def parquet_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded to their *.parquet files (sorted, not recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(item.glob("*.parquet"))
            if not found:
                raise FileNotFoundError(f"{item}: directory holds no *.parquet file")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"DIALS parquet not found: {item}")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return [Path(p) for p in unique]


class OmsLookup:
    """OMS rows of several files, grouped by run so each chunk aligns against its runs only.

    Aligning every chunk against the whole era's OMS table would index ~100k rows a thousand
    LS at a time; the run groups are built once.
    """

    def __init__(self, frames: Sequence[tuple[Path, pd.DataFrame]]) -> None:
        checked = [self._checked(path, frame) for path, frame in frames]
        frame = pd.concat(checked, ignore_index=True) if len(checked) > 1 else checked[0]
        keys = frame[list(OMS_KEY_COLUMNS)].astype(np.int64)
        duplicated = keys.duplicated()
        if duplicated.any():
            examples = [tuple(map(int, row)) for row in keys[duplicated].to_numpy()[:5]]
            names = ", ".join(str(p) for p, _ in frames)
            raise ValueError(
                f"OMS files {names}: {int(duplicated.sum())} (run, ls) pair(s) appear twice, "
                f"e.g. {examples}"
            )
        self._empty = frame.iloc[:0]
        run_keys = keys.run_number.to_numpy()
        self._by_run = {int(run): part for run, part in frame.groupby(run_keys, sort=False)}

    @staticmethod
    def _checked(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
        for name in OMS_KEY_COLUMNS:
            values = pd.to_numeric(frame[name], errors="coerce")
            bad = values.isna() | (values != values.round())
            if bad.any():
                raise ValueError(
                    f"{path}: OMS column {name!r} has {int(bad.sum())} null or non-integer "
                    f"value(s), e.g. {frame[name][bad].iloc[0]!r}"
                )
        return frame

    @classmethod
    def read(cls, paths: Sequence[Path]) -> OmsLookup:
        return cls([(Path(p), read_oms_json(p)) for p in paths])

    def columns_for(self, run: np.ndarray, ls: np.ndarray) -> dict[str, np.ndarray]:
        """OMS columns aligned to (run, ls); an LS absent from OMS gets nulls (DCS-bad)."""
        parts = [self._by_run[r] for r in np.unique(run).tolist() if r in self._by_run]
        if not parts:
            sub = self._empty
        else:
            sub = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        return align_oms(sub, run, ls)


@dataclass
class EraRun:
    """Per-LS results of an era and what went wrong while reading it."""

    results: pd.DataFrame
    files: list[Path]
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failures and not self.interrupted


def _pileup(oms_columns: dict[str, np.ndarray] | None, n_ls: int) -> np.ndarray:
    if oms_columns is None or "pileup" not in oms_columns:
        return np.full(n_ls, np.nan)
    return pd.to_numeric(pd.Series(oms_columns["pileup"]), errors="coerce").to_numpy(np.float64)


def _chunk_results(
    path: Path, model: PixelRing2NMF, oms: OmsLookup | None, rule: str
) -> Iterator[pd.DataFrame]:
    """Per-LS results of one file, one chunk of CHUNK_LS at a time."""
    from .parquet import iter_dials_parquet

    for chunk in iter_dials_parquet(path, max_ls=CHUNK_LS):
        columns = oms.columns_for(chunk.run, chunk.ls) if oms is not None else None
        result = model.predict(chunk.maps, columns, rule=rule)
        table = results_table(chunk.run, chunk.ls, result)
        table["pileup"] = _pileup(columns, len(chunk))
        yield table


def _n_rows(paths: Sequence[Path]) -> int | None:
    """LS in all files, from their footers (for the progress bar); None when unknown."""
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    except (OSError, ValueError):
        return None  # the unreadable file is reported when its turn comes


def analyse_era(
    paths: Sequence[Path],
    model: PixelRing2NMF,
    oms: OmsLookup | None = None,
    *,
    rule: str = "significance",
    progress: bool = True,
) -> EraRun:
    """Judge every LS of the files; keep going past a bad file, keep what was computed."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    parts: list[pd.DataFrame] = []
    failures: list[str] = []
    interrupted = False
    start = time.perf_counter()
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # the pipeline's per-call [INFO] lines: totals at the end
    bar = tqdm(total=_n_rows(paths), unit="LS", desc="era", disable=not progress, mininterval=0.5)
    # One BLAS thread: the model's products are small (16 LS at a time), and OpenBLAS threads
    # that wake for each of them made the whole era ~6x slower on 2 cores (bench/era.py).
    blas = threadpool_limits(1, user_api="blas")
    try:
        for index, path in enumerate(paths):
            try:
                for table in _chunk_results(path, model, oms, rule):
                    parts.append(table.assign(_file=np.int32(index)))
                    bar.update(len(table))
            except (ValueError, OSError) as error:  # InputError is a ValueError
                message = str(error)
                if str(path) not in message:
                    message = f"{path}: {message}"
                failures.append(message)
                logger.error("era: skipped the rest of %s", message)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        blas.restore_original_limits()
        LOGGER.setLevel(level)
    results = pd.concat(parts, ignore_index=True) if parts else _empty_results()
    results, duplicate_problem = _drop_duplicates(results, paths)
    if duplicate_problem:
        failures.append(duplicate_problem)
    return EraRun(
        results=results.drop(columns="_file"),
        files=list(paths),
        failures=failures,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
    )


def _empty_results() -> pd.DataFrame:
    empty = results_table(np.zeros(0, np.int64), np.zeros(0, np.int64), _no_result())
    return empty.assign(pileup=np.zeros(0), _file=np.zeros(0, np.int32))


def _no_result():
    from mlserver_model.dftools import dcs_filter
    from mlserver_model.pixelring2nmf import PredictionResult

    return PredictionResult(
        flag=np.zeros(0, bool),
        metric=np.zeros(0, np.float32),
        anomaly_type=np.zeros(0, dtype="<U11"),
        anomalous_groups=np.zeros((0, 48), bool),
        dcs=dcs_filter(None, 0),
    )


def _drop_duplicates(results: pd.DataFrame, paths: Sequence[Path]) -> tuple[pd.DataFrame, str]:
    """Sort by (run, LS); an LS found in two files is kept once and reported."""
    results = results.sort_values(["run", "ls"], kind="stable", ignore_index=True)
    duplicated = results.duplicated(["run", "ls"], keep=False)
    if not duplicated.any():
        return results, ""
    twice = results[duplicated]
    files = sorted({str(paths[i]) for i in twice._file.unique()})
    examples = [tuple(map(int, pair)) for pair in twice[["run", "ls"]].drop_duplicates()[:5].values]
    message = (
        f"{len(twice) - len(twice.drop_duplicates(['run', 'ls']))} (run, ls) pair(s) appear in "
        f"more than one file ({', '.join(files)}), e.g. {examples}; kept the first occurrence"
    )
    return results[~results.duplicated(["run", "ls"], keep="first")], message


def write_era(
    out_dir: Path, era: EraRun, tables: EraTables, *, xlsx: bool, model_path: Path
) -> dict[str, Path]:
    """Per-LS results (parquet + CSV), each table as CSV, the XLSX and a JSON summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "results_parquet": out_dir / f"{RESULTS_STEM}.parquet",
        "results_csv": out_dir / f"{RESULTS_STEM}.csv",
    }
    era.results.to_parquet(paths["results_parquet"], index=False)
    era.results.to_csv(paths["results_csv"], index=False)
    for name, table in tables.sheets().items():
        paths[name] = out_dir / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    if xlsx:
        paths["xlsx"] = write_xlsx(out_dir / XLSX_NAME, tables)
    paths["summary"] = out_dir / SUMMARY_NAME
    paths["summary"].write_text(json.dumps(_summary(era, tables, model_path), indent=2) + "\n")
    return paths


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
            table.to_excel(writer, sheet_name=sheet, index=False)
            worksheet = writer.sheets[sheet]
            worksheet.freeze_panes = "A2"
            for i, column in enumerate(table.columns):
                longest = max([len(str(column)), *table[column].astype(str).str.len().head(2000)])
                letter = worksheet.cell(row=1, column=i + 1).column_letter
                worksheet.column_dimensions[letter].width = min(longest + 2, 80)
    return path


def _summary(era: EraRun, tables: EraTables, model_path: Path) -> dict:
    results = era.results
    return {
        "complete": era.complete,
        "problems": era.failures + (["interrupted by the user"] if era.interrupted else []),
        "files": [str(p) for p in era.files],
        "model": str(model_path),
        "n_ls": len(results),
        "n_runs": int(results.run.nunique()),
        "n_dcs_good": int(results.dcs_good.sum()),
        "n_flagged": int(results.flag.sum()),
        "rows_by_type": tables.condensed.Type.value_counts().to_dict(),
        "persistent": len(tables.persistent),
        "seconds": round(era.seconds, 2),
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
        status = " INTERRUPTED (results so far written)"
    return (
        f"era: {n_ls:,} LS of {results.run.nunique():,} run(s) from {len(era.files)} file(s) in "
        f"{era.seconds:.1f} s ({rate:,.0f} LS/s); DCS-good {int(results.dcs_good.sum()):,}; "
        f"flagged {int(results.flag.sum()):,}; ranges: {kinds}; persistent groups: "
        f"{len(tables.persistent)}; written to {out_dir}{status}"
    )


def run_era(args: argparse.Namespace) -> int:
    """CLI entry: read, judge, tabulate, write; exit 2 if any input could not be used."""
    from .outputs import output_folder

    output_folder(args.out, force=args.force, what="--out folder")  # before the work
    paths = parquet_inputs(args.parquet)
    oms = OmsLookup.read(args.oms) if args.oms else None
    model_path = Path(args.model or DEFAULT_MODEL_PATH)
    model = PixelRing2NMF.load(model_path)
    era = analyse_era(paths, model, oms, rule=args.rule, progress=not args.no_progress)
    rule = PersistenceRule(args.persistent_fraction, args.persistent_min_ls)
    tables = era_tables(era.results, rule)
    write_era(Path(args.out), era, tables, xlsx=args.xlsx, model_path=model_path)
    print(summary_line(era, tables, Path(args.out)))
    for problem in era.failures:
        print(f"pixelring2nmf era: error: {problem}", file=sys.stderr)
    if era.interrupted:
        return 130
    return 0 if era.complete else 2
