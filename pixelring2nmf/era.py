"""`pixelring2nmf era`: the model over a whole era, streamed, into the experts' spreadsheets.

An era is far larger than memory (31 kB per LS as int32, ~300k LS a year), so the maps are
read row group by row group (`parquet.iter_row_group`), judged by the model chunk by chunk
and dropped; only the per-LS results (~100 bytes each) are kept. Peak memory therefore does not
grow with the number of LS. Every decision is the model's own (`PixelRing2NMF.predict`, the same
call `predict` and the served handler make); this module only streams, collects and writes.

Data path: parquet footers -> tasks of (file, row groups) -> chunks of maps -> OMS columns of
the chunk -> model.predict -> per-LS results (`predict.results_table` + pileup) -> merged in
file order -> `tables.era_tables` -> CSV / parquet / XLSX.

The same three steps serve a run on this machine (`analyse_era`) and one on a Dask cluster
(`cluster.analyse_era_on_dask`): `plan_file` reads a footer, `judge_row_groups` judges one
task, `merge_results` puts the tasks' results together; only who runs the tasks differs. A
chunk never spans two row groups, so the results do not depend on how tasks were cut.

A file that cannot be opened is reported (file and problem) and skipped; a row group that
cannot be read is reported (file, row group and problem) and the others are still judged;
what was computed is always written, and the run is then said to be incomplete.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, LOGGER, PixelRing2NMF

from .oms import OMS_KEY_COLUMNS, align_oms, oms_index, read_oms_json
from .parquet import (
    RowGroupInfo,
    is_url,
    iter_row_group,
    open_dials_parquet,
    row_group_infos,
    split_row_groups,
)
from .predict import results_table
from .tables import EraTables, PersistenceRule, era_tables

CHUNK_LS = 1000  # LS judged at once: ~31 MB of int32 maps, the simulator's row-group size
# A local run's task: one row group of the simulator's files, so Ctrl-C loses at most that much.
TASK_LS = CHUNK_LS
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


Source = str | Path  # a local path, or a URL that workers open through fsspec


def parquet_inputs(inputs: Iterable[str | Path]) -> list[Source]:
    """Files as given, directories expanded to their *.parquet files (sorted, not recursive).

    URLs (root://, https://, file://...) are kept as given: the machines that judge them (a
    cluster's workers) open them, and this one may not even see that storage.
    """
    files: list[Source] = []
    for given in inputs:
        if is_url(str(given)):
            files.append(str(given))
            continue
        item = Path(given)
        if item.is_dir():
            found = sorted(item.glob("*.parquet"))
            if not found:
                raise FileNotFoundError(f"{item}: directory holds no *.parquet file")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"DIALS parquet not found: {item}")
    unique = dict.fromkeys(p if isinstance(p, str) else p.resolve() for p in files)
    return list(unique)


class OmsLookup:
    """OMS rows of several files, grouped by run so each chunk aligns against its runs only.

    Aligning every chunk against the whole era's OMS table would index ~100k rows a thousand
    LS at a time; the run groups are built once.
    """

    def __init__(self, frames: Sequence[tuple[Path, pd.DataFrame]]) -> None:
        tables = [table for _, table in frames]
        frame = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        try:
            # Checked as one table: an LS in two of the files is as wrong as one in a file twice.
            index = oms_index(frame)
        except ValueError as error:
            names = ", ".join(str(p) for p, _ in frames)
            raise ValueError(f"OMS file(s) {names}: {error}") from None
        self._empty = frame.iloc[:0]
        run_keys = index.get_level_values(OMS_KEY_COLUMNS[0]).to_numpy()
        self._by_run = {int(run): part for run, part in frame.groupby(run_keys, sort=False)}

    @classmethod
    def read(cls, paths: Sequence[Path]) -> OmsLookup:
        return cls([(Path(p), read_oms_json(p)) for p in paths])

    def runs_between(self, first: int, last: int) -> OmsLookup:
        """Only the rows of runs `first` to `last`: what a task of those runs needs, so a
        cluster receives the era's table once in total rather than once per worker."""
        part = object.__new__(OmsLookup)
        part._empty = self._empty
        part._by_run = {run: rows for run, rows in self._by_run.items() if first <= run <= last}
        return part

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
    files: list[Source]
    failures: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    ran_on: str = "this machine"  # or the Dask cluster that judged the tasks
    n_tasks: int = 0

    @property
    def complete(self) -> bool:
        return not self.failures and not self.interrupted


@dataclass(frozen=True)
class FilePlan:
    """A file's row groups (LS, runs) as its footer says; or why it could not be opened."""

    file_index: int  # position in the era's list of files: the order of the merge
    source: Source
    row_groups: tuple[RowGroupInfo, ...] = ()
    failure: str = ""

    @property
    def n_ls(self) -> int:
        return sum(info.n_ls for info in self.row_groups)


@dataclass(frozen=True)
class RowGroupTask:
    """The unit of work: these row groups of this file, judged in one go."""

    file_index: int
    source: Source
    row_groups: tuple[int, ...]
    n_ls: int
    runs: tuple[int, int] | None = None  # first and last run in them, if the footer says

    def describe(self) -> str:
        first, last = self.row_groups[0], self.row_groups[-1]
        groups = f"row group {first}" if first == last else f"row groups {first}-{last}"
        return f"{self.source}, {groups}"


@dataclass
class TaskResult:
    """Per-LS results of a task; `failures` name the row groups that could not be judged."""

    task: RowGroupTask
    results: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0  # spent judging, where the task ran (bench/era_scale.py)

    @classmethod
    def unjudged(cls, task: RowGroupTask, why: str) -> TaskResult:
        """A task none of whose LS could be judged (e.g. its workers kept dying)."""
        results = _empty_results().assign(_file=np.int32(task.file_index))
        return cls(task=task, results=results, failures=[f"{task.describe()}: {why}"])


def _pileup(oms_columns: dict[str, np.ndarray] | None, n_ls: int) -> np.ndarray:
    if oms_columns is None or "pileup" not in oms_columns:
        return np.full(n_ls, np.nan)
    return pd.to_numeric(pd.Series(oms_columns["pileup"]), errors="coerce").to_numpy(np.float64)


def _problem(source: Source, where: str, error: BaseException) -> str:
    """`where: problem`, without the file name the reader's message may already start with."""
    message = str(error)
    if message.startswith(f"{source}: "):
        message = message[len(f"{source}: ") :]
    elif where == str(source) and str(source) in message:
        return message  # e.g. "<file> is not a readable parquet file: ..."
    return f"{where}: {message}"


def _undecodable(error: Exception) -> Exception:
    """pyarrow says "Unexpected end of stream" of a damaged page: say what that means."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError | PermissionError):
        return OSError(f"cannot be decoded (a corrupt or truncated file?): {error}")
    return error


def plan_file(file_index: int, source: Source) -> FilePlan:
    """Read one footer where the tasks will run (a cluster's workers: the client may not see
    EOS at all); a file that cannot be opened becomes a failure naming it, not the era's end."""
    try:
        return FilePlan(file_index, source, tuple(row_group_infos(source)))
    except (ValueError, OSError) as error:  # InputError is a ValueError
        return FilePlan(file_index, source, failure=_problem(source, str(source), error))


def plan_tasks(plans: Iterable[FilePlan], task_ls: int) -> list[RowGroupTask]:
    """Tasks of whole row groups of up to `task_ls` LS, in file and row-group order."""
    tasks = []
    for plan in plans:
        sizes = [info.n_ls for info in plan.row_groups]
        for groups in split_row_groups(sizes, task_ls):
            infos = [plan.row_groups[g] for g in groups]
            n_ls = sum(info.n_ls for info in infos)
            runs = None
            if all(info.runs is not None for info in infos):
                runs = (min(i.runs[0] for i in infos), max(i.runs[1] for i in infos))
            tasks.append(RowGroupTask(plan.file_index, plan.source, groups, n_ls, runs))
    return tasks


def judge_row_groups(
    task: RowGroupTask,
    model: PixelRing2NMF,
    oms: OmsLookup | None,
    rule: str,
    on_chunk: Callable[[int], object] | None = None,
) -> TaskResult:
    """Judge these row groups of this file: the one unit of work of local and cluster runs.

    A row group that cannot be read or judged is a failure naming file and row group; the
    chunks judged before it and the row groups after it are kept, since nothing computed may
    be lost. `on_chunk(n_ls)` reports progress where the task runs in this process.
    """
    start = time.perf_counter()
    tables: list[pd.DataFrame] = []
    failures: list[str] = []
    try:
        with open_dials_parquet(task.source) as parquet_file:
            for row_group in task.row_groups:
                try:
                    chunks = iter_row_group(parquet_file, row_group, task.source, max_ls=CHUNK_LS)
                    for chunk in chunks:
                        columns = oms.columns_for(chunk.run, chunk.ls) if oms is not None else None
                        result = model.predict(chunk.maps, columns, rule=rule)
                        table = results_table(chunk.run, chunk.ls, result)
                        table["pileup"] = _pileup(columns, len(chunk))
                        tables.append(table)
                        if on_chunk is not None:
                            on_chunk(len(table))
                except (ValueError, OSError) as error:  # InputError is a ValueError
                    where = f"{task.source}, row group {row_group}"
                    failures.append(_problem(task.source, where, _undecodable(error)))
    except (ValueError, OSError) as error:  # the file itself would not open (any more)
        failures.append(_problem(task.source, task.describe(), error))
    results = pd.concat(tables, ignore_index=True) if tables else _empty_results()
    return TaskResult(
        task=task,
        results=results.assign(_file=np.int32(task.file_index)),
        failures=failures,
        seconds=time.perf_counter() - start,
    )


def merge_results(
    parts: Iterable[TaskResult],
    plans: Sequence[FilePlan],
    *,
    interrupted: bool = False,
    seconds: float = 0.0,
    ran_on: str = "this machine",
) -> EraRun:
    """One era from its tasks, whatever order they finished in: the same run gives the same
    results and messages locally and on any cluster."""
    ordered = sorted(parts, key=lambda part: (part.task.file_index, part.task.row_groups))
    failures = [(plan.file_index, -1, plan.failure) for plan in plans if plan.failure]
    for part in ordered:
        failures += [(part.task.file_index, part.task.row_groups[0], f) for f in part.failures]
    frames = [part.results for part in ordered if len(part.results)]
    results = pd.concat(frames, ignore_index=True) if frames else _empty_results()
    sources = [plan.source for plan in sorted(plans, key=lambda plan: plan.file_index)]
    results, duplicate_problem = _drop_duplicates(results, sources)
    problems = [message for *_, message in sorted(failures, key=lambda f: (f[0], f[1]))]
    if duplicate_problem:
        problems.append(duplicate_problem)
    return EraRun(
        results=results.drop(columns="_file"),
        files=sources,
        failures=problems,
        interrupted=interrupted,
        seconds=seconds,
        ran_on=ran_on,
        n_tasks=len(ordered),
    )


@contextmanager
def quiet_logger(logger_name: str) -> Iterator[None]:
    """Only warnings from `logger_name` while inside: its INFO lines, once per chunk, LS or
    worker, would bury the progress bar and the totals printed at the end."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def quiet_single_threaded_blas() -> Iterator[None]:
    """What judging an era needs from the process: one BLAS thread, no per-chunk INFO lines.

    One BLAS thread: the model's products are small (16 LS at a time), and OpenBLAS threads
    that wake for each of them made the whole era ~6x slower on 2 cores (bench/era.py). The
    pipeline's per-call [INFO] lines would be one per chunk; the era prints totals at the end.
    """
    from threadpoolctl import threadpool_limits

    with quiet_logger(LOGGER.name):
        blas = threadpool_limits(1, user_api="blas")
        try:
            yield
        finally:
            blas.restore_original_limits()


def progress_bar(total: int, enabled: bool):
    """The era's progress in LS, on stderr, whether the LS are judged here or on a cluster."""
    from tqdm import tqdm

    return tqdm(total=total, unit="LS", desc="era", disable=not enabled, mininterval=0.5)


def report_failures(result: TaskResult) -> None:
    """Say what could not be read as soon as it is known; the summary repeats it at the end."""
    for message in result.failures:
        logger.error("era: skipped %s", message)


def report_unopened(plans: Iterable[FilePlan]) -> None:
    """Say which files could not be opened before the long judging starts, not only after."""
    for plan in plans:
        if plan.failure:
            logger.error("era: skipped %s", plan.failure)


def analyse_era(
    paths: Sequence[Source],
    model: PixelRing2NMF,
    oms: OmsLookup | None = None,
    *,
    rule: str = "significance",
    progress: bool = True,
    task_ls: int = TASK_LS,
) -> EraRun:
    """Judge every LS of the files here; keep going past bad data, keep what was computed."""
    start = time.perf_counter()
    plans = [plan_file(index, source) for index, source in enumerate(paths)]
    report_unopened(plans)
    tasks = plan_tasks(plans, task_ls)
    parts: list[TaskResult] = []
    interrupted = False
    bar = progress_bar(sum(task.n_ls for task in tasks), progress)
    try:
        with quiet_single_threaded_blas():
            for task in tasks:
                parts.append(judge_row_groups(task, model, oms, rule, on_chunk=bar.update))
                report_failures(parts[-1])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return merge_results(parts, plans, interrupted=interrupted, seconds=time.perf_counter() - start)


def _empty_results() -> pd.DataFrame:
    empty = results_table(np.zeros(0, np.int64), np.zeros(0, np.int64), _no_result())
    return empty.assign(pileup=np.zeros(0), _file=np.zeros(0, np.int32))


def _no_result():
    from mlserver_model.dftools import dcs_filter
    from mlserver_model.geometry import N_GROUPS
    from mlserver_model.pixelring2nmf import PredictionResult

    return PredictionResult(
        flag=np.zeros(0, bool),
        metric=np.zeros(0, np.float32),
        anomaly_type=np.zeros(0, dtype="<U11"),
        anomalous_groups=np.zeros((0, N_GROUPS), bool),
        dcs=dcs_filter(None, 0),
    )


def _drop_duplicates(results: pd.DataFrame, paths: Sequence[Source]) -> tuple[pd.DataFrame, str]:
    """Sort by (run, LS); an LS found twice (in two files or two row groups) is kept once and
    reported."""
    results = results.sort_values(["run", "ls"], kind="stable", ignore_index=True)
    duplicated = results.duplicated(["run", "ls"], keep=False)
    if not duplicated.any():
        return results, ""
    twice = results[duplicated]
    files = sorted({str(paths[i]) for i in twice._file.unique()})
    examples = [tuple(map(int, pair)) for pair in twice[["run", "ls"]].drop_duplicates()[:5].values]
    where = f"more than one file ({', '.join(files)})" if len(files) > 1 else f"{files[0]} twice"
    message = (
        f"{len(twice) - len(twice.drop_duplicates(['run', 'ls']))} (run, ls) pair(s) appear in "
        f"{where}, e.g. {examples}; kept the first occurrence"
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
        paths[name] = table_csv(out_dir, name)
        table.to_csv(paths[name], index=False)
    if xlsx:
        paths["xlsx"] = write_xlsx(out_dir / XLSX_NAME, tables)
    paths["summary"] = out_dir / SUMMARY_NAME
    paths["summary"].write_text(json.dumps(_summary(era, tables, model_path), indent=2) + "\n")
    return paths


def table_csv(out_dir: Path, name: str) -> Path:
    """Where `write_era` puts table `name` (an `EraTables.sheets()` key): `plot --era` reads it
    back from there."""
    return out_dir / f"{name}.csv"


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
        "ran_on": era.ran_on,
        "tasks": era.n_tasks,
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
    where = "" if era.ran_on == "this machine" else f" on {era.ran_on}"
    if era.interrupted:
        status = " INTERRUPTED (results so far written)"
    return (
        f"era: {n_ls:,} LS of {results.run.nunique():,} run(s) from {len(era.files)} file(s) in "
        f"{era.seconds:.1f} s ({rate:,.0f} LS/s){where}; DCS-good {int(results.dcs_good.sum()):,}; "
        f"flagged {int(results.flag.sum()):,}; ranges: {kinds}; persistent groups: "
        f"{len(tables.persistent)}; written to {out_dir}{status}"
    )


def run_era(args: argparse.Namespace) -> int:
    """CLI entry: read, judge (here or on a Dask cluster), tabulate, write; exit 2 if any
    input could not be used."""
    from .outputs import output_folder

    output_folder(args.out, force=args.force, what="--out folder")  # before the work
    paths = parquet_inputs(args.parquet)
    oms = OmsLookup.read(args.oms) if args.oms else None
    model_path = Path(args.model or DEFAULT_MODEL_PATH)
    model = PixelRing2NMF.load(model_path)
    progress = not args.no_progress
    if args.task_ls is not None and args.task_ls < 1:
        raise ValueError(f"--task-ls must be a positive number of LS, got {args.task_ls}")
    if args.dask:
        try:
            from .cluster import analyse_era_on_dask, dask_client
        except ImportError as error:
            raise RuntimeError(
                f"--dask needs dask.distributed ({error}): pip install 'pixelring2nmf[dask]'"
            ) from None

        with dask_client(args.dask) as client:
            era = analyse_era_on_dask(
                client,
                paths,
                model,
                oms,
                rule=args.rule,
                progress=progress,
                task_ls=args.task_ls,
            )
    else:
        task_ls = args.task_ls or TASK_LS
        era = analyse_era(paths, model, oms, rule=args.rule, progress=progress, task_ls=task_ls)
    rule = PersistenceRule(args.persistent_fraction, args.persistent_min_ls)
    return write_and_report(era, rule, Path(args.out), xlsx=args.xlsx, model_path=model_path)


def write_and_report(
    era: EraRun, rule: PersistenceRule, out_dir: Path, *, xlsx: bool, model_path: Path
) -> int:
    """Tables, files and the summary of a run, wherever it was judged; its exit status."""
    tables = era_tables(era.results, rule)
    write_era(out_dir, era, tables, xlsx=xlsx, model_path=model_path)
    print(summary_line(era, tables, out_dir))
    for problem in era.failures:
        print(f"pixelring2nmf era: error: {problem}", file=sys.stderr)
    if era.interrupted:
        return 130
    return 0 if era.complete else 2
