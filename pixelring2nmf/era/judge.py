"""Judge: maps of lumisections -> the model's per-LS results, the one loop every command runs.

`judge_row_groups` runs the single step from maps to results (`verdict.judge_lumisections`, or
`verdict.judge_by_period` with models by period, or a joint era's pairing of both rings) over
the chunks of one task, wherever it runs. Data that cannot be read or judged (a damaged row
group, maps the model refuses) is a failure naming file and row group, and the task goes on
with the rest; anything else is a bug and is raised, so that it is seen with its traceback
rather than reported as bad data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlserver_model.errors import InputError
from mlserver_model.pixelring2nmf import PixelRing2NMF

from ..errors import DataError
from ..io.oms import OmsLookup
from ..io.parquet import iter_row_group, open_dials_parquet
from ..io.results import empty_results
from ..model.periods import ModelSet
from .joint import JointEra
from .plan import RowGroupTask, problem
from .verdict import judge_by_period, judge_lumisections

CHUNK_LS = 1000  # LS judged at once: ~31 MB of int32 maps, the simulator's row-group size
FILE_COLUMN = "_file"  # which input file an LS came from, until the merge has used it


@dataclass
class TaskResult:
    """Per-LS results of a task; `failures` name the row groups that could not be judged."""

    task: RowGroupTask
    results: pd.DataFrame
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0  # spent judging, where the task ran (bench/era_scale.py)
    peak_memory_mb: float = 0.0  # the peak RSS of the process that ran it, after the task

    @classmethod
    def unjudged(cls, task: RowGroupTask, why: str) -> TaskResult:
        """A task none of whose LS could be judged (e.g. its workers kept dying)."""
        results = empty_results().assign(**{FILE_COLUMN: np.int32(task.file_index)})
        return cls(task=task, results=results, failures=[f"{task.describe()}: {why}"])


def judge_row_groups(
    task: RowGroupTask,
    model: PixelRing2NMF | ModelSet | JointEra,
    oms: OmsLookup | None,
    on_chunk: Callable[[int], object] | None = None,
) -> TaskResult:
    """Judge these row groups of this file: the one unit of work of every executor.

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
                        if isinstance(model, JointEra):  # both rings: pair by (run, LS)
                            table = model.judge_chunk(chunk, task.source, oms)
                        elif isinstance(model, ModelSet):  # several models: split by period
                            table = judge_by_period(chunk.maps, chunk.run, chunk.ls, model, oms)
                        else:
                            table, _ = judge_lumisections(
                                chunk.maps, chunk.run, chunk.ls, model, oms
                            )
                        tables.append(table)
                        if on_chunk is not None:
                            on_chunk(len(table))
                except (DataError, InputError) as error:
                    where = f"{task.source}, row group {row_group}"
                    failures.append(problem(task.source, where, error))
    except DataError as error:  # the file itself would not open (any more)
        failures.append(problem(task.source, task.describe(), error))
    results = pd.concat(tables, ignore_index=True) if tables else empty_results()
    return TaskResult(
        task=task,
        results=results.assign(**{FILE_COLUMN: np.int32(task.file_index)}),
        failures=failures,
        seconds=time.perf_counter() - start,
        peak_memory_mb=peak_memory_mb(),
    )


def peak_memory_mb() -> float:
    """This process's peak resident memory so far (MB): what a worker needs to be given."""
    try:
        import resource
    except ImportError:  # not on a Unix
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
