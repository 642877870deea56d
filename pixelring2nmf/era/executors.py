"""Executors: who runs an era's tasks. The analysis (plan, judge, merge) does not know which.

- `InProcessExecutor`: this process, one task after the other (`era --workers 1`).
- `ProcessExecutor`: N worker processes of this machine (`era --workers N`, default every
  core). The workers are forked once, before any task, and inherit the model and the OMS
  table, so nothing but the tasks (a file name and row-group numbers) and their results
  (~70 bytes per LS) crosses between processes. Each worker reads its own row groups: the
  decoding, which costs as much as the model, is spread over the cores too.
- `DaskExecutor` (era/dask_executor.py): the workers of a Dask cluster, behind this interface.

Interruption: Ctrl-C reaches every process of the terminal's process group, SIGTERM may too
(batch systems), but only the main process decides how to stop: workers ignore both signals,
finish the task they hold, and die with the main process if it is killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from mlserver_model.nmf2d import single_blas_thread
from mlserver_model.pixelring2nmf import PixelRing2NMF

from ..io.oms import OmsLookup
from ..model.periods import ModelSet
from .judge import TaskResult, judge_row_groups
from .plan import FilePlan, RowGroupTask, Source, plan_file, plan_runs

# A local task: one row group of the simulator's files, so an interrupt loses at most that.
TASK_LS = 1000


def available_cores() -> int:
    """The cores this process may run on (a batch slot may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Executor(ABC):
    """Runs the plan and judge steps of an era's tasks somewhere, and says where."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def describe(self) -> str:
        """Where the tasks ran, for the summary line and era.json ('this machine (2 processes)')."""

    @abstractmethod
    def plan(self, sources: Sequence[Source]) -> list[FilePlan]:
        """Every file's footer, in the order of `sources`."""

    def default_task_ls(self, total_ls: int) -> int:
        return TASK_LS

    def runs(self, plans: Sequence[FilePlan]) -> list[list[int]]:
        """Every file's runs (plan.plan_runs), where the footers were read: which models an era
        with several needs, checked before any LS is judged."""
        return [plan_runs(plan) for plan in plans]

    @abstractmethod
    def judge(self, tasks: Sequence[RowGroupTask]) -> Iterator[TaskResult]:
        """The tasks' results as they finish. An exception of a task that is not about its
        data (a bug) is raised here, with the traceback of where it happened."""

    def stop(self) -> list[TaskResult]:
        """After an interrupt: start nothing new; the results of tasks that still finished."""
        return []

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the workers."""


class InProcessExecutor(Executor):
    """Every task in this process, in order: `--workers 1`, and the reference for the others."""

    def __init__(self, model: PixelRing2NMF | ModelSet, oms: OmsLookup | None) -> None:
        self.model, self.oms = model, oms

    def describe(self) -> str:
        return "this machine (1 process)"

    def plan(self, sources: Sequence[Source]) -> list[FilePlan]:
        return [plan_file(index, source) for index, source in enumerate(sources)]

    def judge(self, tasks: Sequence[RowGroupTask]) -> Iterator[TaskResult]:
        for task in tasks:
            yield judge_row_groups(task, self.model, self.oms)


# The model and OMS table of a worker process, set once when it starts.
_WORKER: dict[str, object] = {}


def _start_worker(model: PixelRing2NMF | ModelSet, oms: OmsLookup | None, parent: int) -> None:
    prepare_worker(parent)
    _WORKER.update(model=model, oms=oms)


def prepare_worker(parent: int) -> None:
    """What every worker process of the toolkit needs, once: the main process decides when to
    stop (no KeyboardInterrupt tracebacks from every worker on Ctrl-C), the worker dies with
    it, one BLAS thread (the model's products are small: more threads only spin)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    single_blas_thread()


def worker_pool(
    workers: int, initializer: Callable[..., None], initargs: tuple
) -> ProcessPoolExecutor:
    """`workers` processes that run `initializer(*initargs)` once each (it calls
    `prepare_worker`). Forked where possible: the workers start in milliseconds and share the
    model's pages with this process; elsewhere (macOS, Windows) spawn pickles it per worker."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs
    )


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (a SIGKILLed `era` leaves no orphan
    busy judging); elsewhere the worker ends when its task queue closes."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _judge_in_worker(task: RowGroupTask) -> TaskResult:
    return judge_row_groups(task, _WORKER["model"], _WORKER["oms"])


class ProcessExecutor(Executor):
    """`workers` processes of this machine, forked once with the model and the OMS table."""

    def __init__(
        self, model: PixelRing2NMF | ModelSet, oms: OmsLookup | None, workers: int
    ) -> None:
        self.workers = workers
        self._pool = worker_pool(workers, _start_worker, (model, oms, os.getpid()))
        self._pending: dict[Future, RowGroupTask] = {}

    def describe(self) -> str:
        return f"this machine ({self.workers} processes)"

    def plan(self, sources: Sequence[Source]) -> list[FilePlan]:
        # the footers are read by the workers: this process then never touches pyarrow before
        # they are forked (pyarrow's thread pools and fork do not mix)
        return list(self._pool.map(plan_file, range(len(sources)), sources))

    def runs(self, plans: Sequence[FilePlan]) -> list[list[int]]:
        return list(self._pool.map(plan_runs, plans))

    def judge(self, tasks: Sequence[RowGroupTask]) -> Iterator[TaskResult]:
        self._pending = {self._pool.submit(_judge_in_worker, task): task for task in tasks}
        while self._pending:
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in done:
                del self._pending[future]
                yield future.result()

    def stop(self) -> list[TaskResult]:
        """Cancel the tasks not yet started, wait for those running (a task takes well under a
        second), and return the results of every task that finished but was not yet taken."""
        for future in self._pending:
            future.cancel()
        unfinished = [future for future in self._pending if not future.cancelled()]
        wait(unfinished)
        finished = [f for f in unfinished if f.done() and f.exception() is None]
        self._pending = {}
        return [future.result() for future in finished]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def kill(self) -> None:
        """Stop the workers at once (a second Ctrl-C): their running tasks are lost."""
        for process in list(getattr(self._pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
