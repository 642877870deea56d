"""Merge: the tasks' results, in whatever order they finished, into one era.

The same inputs give the same era whether its tasks ran here, in worker processes or on a Dask
cluster: results are put back in file and row-group order, then sorted by (run, LS), and an LS
found more than once keeps its first copy (io/keys.py: the toolkit's one duplicate policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..io.keys import examples, repeated_mask
from ..io.results import empty_results
from ..model.periods import Coverage
from .judge import FILE_COLUMN, TaskResult
from .plan import FilePlan, Source


@dataclass
class EraRun:
    """Per-LS results of an era and what went wrong while reading it."""

    results: pd.DataFrame
    files: list[Source]
    failures: list[str] = field(default_factory=list)
    interrupted: str = ""  # how the run was stopped ("Ctrl-C", "SIGTERM"), if it was
    seconds: float = 0.0
    ran_on: str = "this machine"  # where the tasks ran: processes here or a Dask cluster
    n_tasks: int = 0
    error: BaseException | None = None  # a bug met while judging (the results are still kept)
    worker_peak_memory_mb: float = 0.0  # the largest peak RSS of the processes that judged
    coverage: Coverage | None = None  # with several models: runs left out, or skipped

    @property
    def complete(self) -> bool:
        judged = len(self.results) > 0
        return judged and not (self.failures or self.interrupted or self.error)


def merge_results(
    parts: Iterable[TaskResult],
    plans: Sequence[FilePlan],
    *,
    interrupted: str = "",
    seconds: float = 0.0,
    ran_on: str = "this machine",
) -> EraRun:
    """One era from its tasks: results in input order, each LS once, every problem named."""
    ordered = sorted(parts, key=lambda part: (part.task.file_index, part.task.row_groups))
    failures = [(plan.file_index, -1, plan.failure) for plan in plans if plan.failure]
    for part in ordered:
        failures += [(part.task.file_index, part.task.row_groups[0], f) for f in part.failures]
    frames = [part.results for part in ordered if len(part.results)]
    results = pd.concat(frames, ignore_index=True) if frames else empty_results()
    sources = [plan.source for plan in sorted(plans, key=lambda plan: plan.file_index)]
    results, repeated_problem = first_copies(results, sources)
    problems = [message for *_, message in sorted(failures, key=lambda f: (f[0], f[1]))]
    if repeated_problem:
        problems.append(repeated_problem)
    return EraRun(
        results=results.drop(columns=FILE_COLUMN, errors="ignore"),
        files=sources,
        failures=problems,
        interrupted=interrupted,
        seconds=seconds,
        ran_on=ran_on,
        n_tasks=len(ordered),
        worker_peak_memory_mb=max((part.peak_memory_mb for part in ordered), default=0.0),
    )


def first_copies(results: pd.DataFrame, sources: Sequence[Source]) -> tuple[pd.DataFrame, str]:
    """Results sorted by (run, LS), each LS from its first copy in input order; and, if any
    copy was dropped, the message that says how many and in which files."""
    repeated = repeated_mask(results.run.to_numpy(), results.ls.to_numpy())
    kept = results[~repeated] if repeated.any() else results
    kept = kept.sort_values(["run", "ls"], kind="stable", ignore_index=True)
    if not repeated.any():
        return kept, ""
    involved = results[results.duplicated(["run", "ls"], keep=False)]
    files = sorted({str(sources[i]) for i in involved[FILE_COLUMN].unique()})
    shown = examples(results.run.to_numpy(), results.ls.to_numpy(), repeated)
    return kept, (
        f"{int(repeated.sum())} repeated (run, ls) row(s) in {', '.join(files)}, e.g. {shown}; "
        "each LS was judged from its first copy (files in the order given, then file order)"
    )
