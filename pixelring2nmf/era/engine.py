"""The era engine: plan -> judge -> merge, on whichever executor the command chose.

An era is far larger than memory (31 kB per LS as int32, ~300k LS a year), so its maps are read
row group by row group where the tasks run, judged chunk by chunk and dropped; only the per-LS
results (~100 bytes each) come back. Every decision is the model's own
(`PixelRing2NMF.predict`, the call `predict` and the served handler make); the engine only
plans, collects and merges:

    sources -> executor.plan (footers) -> plan_tasks -> executor.judge (each task:
    judge_row_groups) -> merge_results -> EraRun

A file that cannot be opened, or a row group that cannot be read, is a failure that names it;
everything else is judged. An interrupt (Ctrl-C, SIGTERM) stops the tasks not yet started and
keeps every task that finished. An exception that is not about the data (a bug) also keeps
what was judged: the EraRun carries it, so that the command writes the results and then
shows the traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from ..errors import UserError
from ..io.results import MODEL_COLUMN
from ..model.periods import Coverage, ModelSet
from .executors import Executor
from .judge import TaskResult
from .merge import EraRun, merge_results
from .plan import FilePlan, Source, plan_tasks

INTERRUPTED_BY_USER = "Ctrl-C"


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal other than Ctrl-C (SIGTERM from a batch system), which the
    command line raises like Ctrl-C's KeyboardInterrupt; `args[0]` names the signal."""


def progress_bar(total: int, enabled: bool):
    """The era's progress in LS, on stderr, wherever the LS are judged."""
    from tqdm import tqdm

    return tqdm(total=total, unit="LS", desc="era", disable=not enabled, mininterval=0.5)


def analyse_era(
    sources: Sequence[Source],
    executor: Executor,
    *,
    progress: bool = True,
    task_ls: int | None = None,
    runs: Collection[int] | None = None,
    report: Callable[[str], object] | None = None,
    on_task: Callable[[TaskResult], object] | None = None,
    periods: ModelSet | None = None,
    check_plan: Callable[[FilePlan], object] | None = None,
) -> EraRun:
    """Judge every LS of `sources` (only the row groups that may hold `runs`, if given).

    `report(message)` is told at once of each file or row group that cannot be used (the
    summary repeats them at the end); `on_task(result)` sees every task as it arrives
    (bench/era_scale.py times them). `task_ls` None lets the executor size the tasks.
    `periods`: the model files, when the executor judges with several or leaves runs out:
    every run of the files is then checked against them before any LS is judged (a run
    covered by no model or by two raises their OptionError), and the results get the column
    `model` (the file that judged each LS; with one model too). `check_plan(plan)` sees every
    file's plan before any LS is judged (the command refuses a file of another ring there).
    """
    start = time.perf_counter()
    parts: list[TaskResult] = []
    interrupted = ""
    error: BaseException | None = None
    plans = []
    coverage: Coverage | None = None
    bar = None
    try:
        plans = executor.plan(sources)
        for plan in plans if check_plan is not None else ():
            if not plan.failure:
                check_plan(plan)
        if runs is not None:
            plans = [plan.with_runs(runs) for plan in plans]
        if periods is not None and periods.single is None:
            plans, coverage = _choose_models(plans, executor, periods)
        for message in (plan.failure for plan in plans if plan.failure):
            if report is not None:
                report(message)
        total = sum(plan.n_ls for plan in plans)
        tasks = plan_tasks(plans, task_ls or executor.default_task_ls(total))
        bar = progress_bar(sum(task.n_ls for task in tasks), progress)
        for part in executor.judge(tasks):
            parts.append(part)
            for message in part.failures:
                if report is not None:
                    report(message)
            bar.update(part.task.n_ls)
            if on_task is not None:
                on_task(part)
    except KeyboardInterrupt as stop:
        interrupted = stop.args[0] if isinstance(stop, Interrupted) else INTERRUPTED_BY_USER
        try:
            parts += executor.stop()
        except KeyboardInterrupt:  # asked twice: stop now, with what is already here
            getattr(executor, "kill", lambda: None)()
    except UserError as refused:
        if not parts:  # e.g. runs no model covers: refused before any LS was judged
            raise
        error = refused  # met while judging: kept with what was judged, as below
        executor.stop()
    except Exception as bug:  # not about the data: keep what was judged, then show it
        error = bug
        executor.stop()
    finally:
        if bar is not None:
            bar.close()
    era = merge_results(
        parts,
        plans,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
        ran_on=executor.describe(),
    )
    era.error = error
    if periods is not None:
        era.results[MODEL_COLUMN] = periods.paths_of(era.results.run.to_numpy())
        era.coverage = coverage
    return era


def _choose_models(
    plans: list[FilePlan], executor: Executor, periods: ModelSet
) -> tuple[list[FilePlan], Coverage]:
    """Check every run of the files against the models (before any LS is judged), then keep
    only the row groups that may hold a run to judge."""
    runs_per_file = executor.runs([plan for plan in plans if not plan.failure])
    every_run = sorted({run for runs in runs_per_file for run in runs})
    coverage = periods.check(every_run)
    judged = [run for run, i in zip(every_run, periods.index_of(every_run), strict=True) if i >= 0]
    return [plan.with_runs(judged) for plan in plans], coverage
