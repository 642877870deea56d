"""`plot --era DIR --each-ls`: one PNG per anomalous LS of an era, drawn on every core.

The LS are those of the era's per-LS table (`per_ls.csv`: DCS-good LS with an anomalous group,
persistent-only LS left out), so the figures are the rows an expert reads. Each figure is the
one `plot --run R --ls L` draws (occupancy, reconstruction, significance, bad ROCs), from the
era's own inputs as era.json lists them (its parquet files, OMS files and model; each can be
given instead), judged again by the era's step `era.verdict.judge_lumisections`.

Work is split into tasks of up to TASK_LS LS of one run, so a worker reads a run's row groups
once per task; the tasks run in worker processes forked once with the model and the OMS table.
Every PNG is written under a temporary name and renamed (io.atomic), so Ctrl-C or SIGTERM stop
the drawing with finished PNGs and no half-written file: tasks not started are cancelled, the
running ones finish, and the index lists what was drawn. `index.csv` (run, ls, type, groups,
metric, file) follows the per-LS table, with the Metric of lumisections.*.

The main process reads only CSV and JSON before the workers are forked: pyarrow's thread pools
and fork do not mix (era/executors.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..era.executors import prepare_worker, worker_pool
from ..era.output import RESULTS_STEM
from ..era.stats import era_models, era_status, read_table
from ..era.verdict import judge_lumisections
from ..errors import DataError
from ..io.atomic import write_atomically
from ..io.parquet import iter_dials_parquet
from .draw import _pyplot, lumisection_figure
from .figures import dcs_note

logger = logging.getLogger(__name__)

INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("run", "ls", "type", "groups", "metric", "file")
TASK_LS = 8  # LS per task: a few seconds of drawing (Ctrl-C waits for no more), one read of the run


def figure_name(run: int, ls: int) -> str:
    """`run386661_ls0267.png`: sorted by run then LS in any file browser."""
    return f"run{run}_ls{ls:04d}.png"


@dataclass(frozen=True)
class EachLsTask:
    """Up to TASK_LS anomalous LS of one run, and where their figures go."""

    run: int
    ls: tuple[int, ...]
    targets: tuple[str, ...]
    model: str = ""  # which model judges the run, when the era had several (a key of `models`)


def anomalous_lumisections(era_dir: Path) -> pd.DataFrame:
    """The index rows to draw: the era's per-LS table with the Metric of lumisections.csv."""
    per_ls = read_table(era_dir, "per_ls")
    index = pd.DataFrame(
        {
            "run": per_ls.Run_Number.astype(np.int64),
            "ls": per_ls.Lumisection.astype(np.int64),
            "type": per_ls.Anomaly_Type.astype(str),
            "groups": per_ls.Powergroup.astype(str),
        }
    )
    csv = era_dir / f"{RESULTS_STEM}.csv"
    if not csv.is_file():
        raise DataError(f"{csv} not found: the era folder {era_dir} is not whole")
    metric = pd.read_csv(csv, usecols=["run", "ls", "metric"])
    index = index.merge(metric, on=["run", "ls"], how="left")
    index["file"] = [figure_name(r, s) for r, s in zip(index.run, index.ls, strict=True)]
    return index[list(INDEX_COLUMNS)]


def model_of_each_run(era_dir: Path, models: Sequence[str]) -> dict[int, str]:
    """Run -> the model file (one of `models`, as era.json names them) that judged it, from the
    `model` column of lumisections.csv, for an era judged by several models."""
    csv = era_dir / f"{RESULTS_STEM}.csv"
    header = pd.read_csv(csv, nrows=0).columns
    column = next((c for c in header if c.lower() == "model"), None)
    if column is None:
        raise DataError(
            f"era {era_dir} names {len(models)} models but {csv.name} does not say which judged "
            "each run: give the one to draw with --model"
        )
    by_name = {**{Path(m).name: m for m in models}, **{m: m for m in models}}
    runs = pd.read_csv(csv, usecols=["run", column]).drop_duplicates("run")
    chosen = {}
    for run, name in zip(runs.run, runs[column].astype(str), strict=True):
        if name not in by_name and Path(name).name not in by_name:
            raise DataError(f"run {run} of era {era_dir} was judged by {name}, not in era.json")
        chosen[int(run)] = by_name.get(name, by_name.get(Path(name).name, ""))
    return chosen


def era_inputs(era_dir: Path, status: dict) -> tuple[list[str], list[str], list[str]]:
    """The parquet sources, OMS files and model file(s) era.json lists."""
    sources = [str(s) for s in status.get("files", [])]
    oms = status.get("oms", {}).get("files", []) if isinstance(status.get("oms"), dict) else []
    return sources, [str(o) for o in oms], era_models(status)


def plan_tasks(
    index: pd.DataFrame,
    out_dir: Path,
    task_ls: int = TASK_LS,
    model_of_run: dict[int, str] | None = None,
) -> list[EachLsTask]:
    """Tasks of up to `task_ls` LS of one run, run by run (with the run's model key)."""
    tasks = []
    for run, part in index.groupby("run", sort=True):
        ls = part.ls.tolist()
        files = [str(out_dir / f) for f in part.file]
        for start in range(0, len(ls), task_ls):
            tasks.append(
                EachLsTask(
                    int(run),
                    tuple(int(x) for x in ls[start : start + task_ls]),
                    tuple(files[start : start + task_ls]),
                    (model_of_run or {}).get(int(run), ""),
                )
            )
    return tasks


# ---- the work of one task (in a worker, or in this process) -------------------------------------

_WORKER: dict[str, object] = {}


def _start_worker(model, oms, sources: Sequence[str], parent: int) -> None:
    """As the era's workers (signals left to the main process, death with it, one BLAS
    thread), holding what drawing needs."""
    prepare_worker(parent)
    _WORKER.update(model=model, oms=oms, sources=list(sources))


def _maps_of(sources: Sequence[str], run: int, wanted: Sequence[int]) -> dict[int, np.ndarray]:
    """The maps of these LS of `run`, the first copy of each (the toolkit's duplicate policy)."""
    found: dict[int, np.ndarray] = {}
    wanted_set = set(wanted)
    for source in sources:
        for chunk in iter_dials_parquet(source, runs=[run]):
            for i in np.flatnonzero((chunk.run == run) & np.isin(chunk.ls, list(wanted_set))):
                found.setdefault(int(chunk.ls[i]), chunk.maps[i])
        if len(found) == len(wanted_set):
            break
    return found


def draw_task(task: EachLsTask, model=None, oms=None, sources=None) -> list[tuple[int, str]]:
    """Draw and write the task's figures; (LS, problem) for each LS that could not be drawn."""
    model = model if model is not None else _WORKER["model"]
    if isinstance(model, dict):  # several models: the one that judged the run
        model = model[task.model]
    oms = oms if oms is not None else _WORKER.get("oms")
    sources = sources if sources is not None else _WORKER["sources"]
    plt = _pyplot()
    maps = _maps_of(sources, task.run, task.ls)
    problems = [(ls, "not in the era's parquet input(s)") for ls in task.ls if ls not in maps]
    present = [(ls, t) for ls, t in zip(task.ls, task.targets, strict=True) if ls in maps]
    if not present:
        return problems
    ls = np.array([x for x, _ in present], dtype=np.int64)
    run = np.full(len(ls), task.run, dtype=np.int64)
    _, result = judge_lumisections(
        np.stack([maps[x] for x in ls]), run, ls, model, oms, roc_maps=True
    )
    for i, (number, target) in enumerate(present):
        figure = lumisection_figure(
            maps[number],
            {name: values[i] for name, values in result.roc_maps.items()},
            result.anomalous_groups[i],
            run=task.run,
            ls=number,
            anomaly_type=str(result.anomaly_type[i]),
            metric=float(result.metric[i]),
            flag=bool(result.flag[i]),
            dcs_note=dcs_note(oms, task.run, number, result.dcs.failed_flags(i)).text,
            z_threshold=model.thresholds.z_threshold,
            geometry=model.geometry,
        )
        write_atomically(Path(target), lambda p, f=figure: f.savefig(p, dpi=90))
        plt.close(figure)
    return problems


def _draw_in_worker(task: EachLsTask) -> list[tuple[int, str]]:
    return draw_task(task)


# ---- the pool ----------------------------------------------------------------------------------


@dataclass
class EachLsRun:
    """What was drawn: the finished tasks' LS, the problems, and whether it was stopped."""

    drawn: set[tuple[int, int]]
    problems: list[str]
    interrupted: str = ""


def draw_each_ls(
    tasks: Sequence[EachLsTask],
    model,
    oms,
    sources: Sequence[str],
    workers: int,
    on_done: Callable[[EachLsTask], object] | None = None,
) -> EachLsRun:
    """Every task, on `workers` processes (1: here). Ctrl-C/SIGTERM: finished ones are kept."""
    outcome = EachLsRun(drawn=set(), problems=[])

    def finished(task: EachLsTask, problems: list[tuple[int, str]], report: bool = True) -> None:
        bad = {ls for ls, _ in problems}
        outcome.drawn |= {(task.run, ls) for ls in task.ls if ls not in bad}
        outcome.problems += [f"run {task.run}, LS {ls}: {why}" for ls, why in problems]
        if on_done is not None and report:
            on_done(task)

    if workers == 1 or len(tasks) <= 1:
        try:
            for task in tasks:
                finished(task, draw_task(task, model, oms, sources))
        except KeyboardInterrupt as stop:
            outcome.interrupted = stop.args[0] if stop.args else "Ctrl-C"
        return outcome
    pool = worker_pool(
        min(workers, len(tasks)), _start_worker, (model, oms, list(sources), os.getpid())
    )
    pending: dict[Future, EachLsTask] = {pool.submit(_draw_in_worker, t): t for t in tasks}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished(pending.pop(future), future.result())
    except KeyboardInterrupt as stop:
        outcome.interrupted = stop.args[0] if stop.args else "Ctrl-C"
        for future in pending:
            future.cancel()
        running = [f for f in pending if not f.cancelled()]
        wait(running)  # a task takes a few seconds; its PNGs are whole or absent
        for future in running:
            if future.exception() is None:  # stopping: no progress report any more
                finished(pending[future], future.result(), report=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcome


def write_index(path: Path, index: pd.DataFrame, drawn: set[tuple[int, int]]) -> pd.DataFrame:
    """index.csv: the rows whose figure was written, in the per-LS table's order."""
    keep = [(int(r), int(s)) in drawn for r, s in zip(index.run, index.ls, strict=True)]
    rows = index[np.asarray(keep, dtype=bool)]
    write_atomically(path, lambda p: rows.to_csv(p, index=False))
    return rows


def check_era(era_dir: Path) -> dict:
    """era.json, checked as `stats` checks it."""
    return era_status(era_dir)
