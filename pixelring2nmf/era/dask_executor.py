"""`era --dask`: the era's tasks on the workers of a Dask cluster, behind the executor interface.

CMS analysts scale Python with `dask.distributed` (SWAN's Dask clusters, lxplus HTCondor through
dask-jobqueue; docs/domain.md), so the era runs there rather than on a scheduler of its own.
Nothing of the analysis lives here: the workers run `plan.plan_file` (footers) and
`judge.judge_row_groups` (the maps), exactly as local worker processes do. This module only
moves work:

- the model travels once to each worker, inside a worker plugin (workers that join later, or
  replace a dead one, get it when they register); each task carries the OMS rows of its runs
  only (known from the row groups' statistics), so the era's OMS table crosses the network
  once in all, not once per worker;
- workers open the parquet files themselves (paths on a shared filesystem, or URLs through
  fsspec such as root:// on EOS); only ~70 bytes of results per LS come back, never a map;
- a task whose worker dies is rerun elsewhere by the scheduler (up to
  `distributed.scheduler.allowed-failures` deaths, 3 by default); bad data does not raise on
  the worker but comes back as a failure naming file and row group, with the results of the
  task's other row groups, so the run keeps everything that could be judged.

This is the only module that imports dask; the command line imports it only for `--dask`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import dask
import distributed
from distributed import Client, Future, KilledWorker, Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from mlserver_model.nmf2d import single_blas_thread
from mlserver_model.pixelring2nmf import PixelRing2NMF

from ..errors import OptionError, RemoteError
from ..io.oms import OmsLookup
from ..model.periods import ModelSet
from .executors import Executor
from .judge import TaskResult, judge_row_groups
from .plan import FilePlan, RowGroupTask, Source, plan_file, plan_runs

LOCAL_PREFIX = "local:"
# LS per task on a cluster, unless --task-ls says otherwise: about TASKS_PER_WORKER tasks per
# worker, so the last tasks even out across workers, between one row group of the simulator
# and of DIALS downloads (MIN_TASK_LS) and ~1 s of work (MAX_TASK_LS), beyond which the
# per-task overhead (tens of ms, BENCHMARKS.md "era_scale") is already negligible.
MIN_TASK_LS = 1000
MAX_TASK_LS = 5000
TASKS_PER_WORKER = 4
CONNECT_TIMEOUT_S = 30
PACKAGE = "pixelring2nmf"
_LOGGING_VARIABLE = "DASK_LOGGING__DISTRIBUTED"


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from `logger_name` while inside: distributed's INFO and WARNING lines (a
    cluster starting, tasks cancelled by Ctrl-C) would bury the progress bar and the summary."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started inside inherit an ignored SIGINT (Python then installs no
    KeyboardInterrupt handler): Ctrl-C stops the run through this process alone, without a
    traceback from every local worker."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _quiet_local_workers() -> Iterator[None]:
    """Local worker processes, started or restarted while inside, log errors only: their
    notes on tasks cancelled by Ctrl-C would follow the summary line (dask reads its logging
    configuration from the environment when each process starts)."""
    previous = os.environ.get(_LOGGING_VARIABLE)
    os.environ[_LOGGING_VARIABLE] = "error"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_LOGGING_VARIABLE, None)
        else:
            os.environ[_LOGGING_VARIABLE] = previous


@contextmanager
def dask_client(spec: str) -> Iterator[Client]:
    """A client of the cluster `spec` names; a `local:N` cluster ends with the client.

    `local:N` is N single-threaded worker processes on this machine, listening on loopback
    only: the analysis is CPU-bound Python, numpy and pyarrow, and processes do not contend
    for one interpreter lock as threads would. Anything else is the address of a running
    scheduler (tcp://, tls://; dask's configuration supplies any TLS credentials).
    """
    with ExitStack() as stack:
        stack.enter_context(_quiet("distributed"))
        if spec.startswith(LOCAL_PREFIX):
            stack.enter_context(_quiet_local_workers())
            stack.enter_context(dask.config.set(_forked_workers()))
            with _children_ignore_sigint():
                cluster = stack.enter_context(_local_cluster(spec))
            address = cluster.scheduler_address
        else:
            address = spec
        try:
            client = stack.enter_context(
                Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            )
        except (OSError, TimeoutError) as error:
            raise RemoteError(f"cannot reach the Dask scheduler at {address}: {error}") from None
        yield client


def _forked_workers() -> dict:
    """Local workers forked from this process rather than spawned: they start with the
    model's libraries already imported, which saved ~2 s of a 76,000-LS era on 2 cores
    (BENCHMARKS.md, era), where spawning re-imports numpy, pandas, pyarrow and the toolkit in
    every worker. Where fork does not exist, dask's default (spawn) stays."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return {}
    return {"distributed.worker.multiprocessing-method": "fork"}


def _local_cluster(spec: str) -> distributed.LocalCluster:
    count = spec[len(LOCAL_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise OptionError(f"--dask {spec}: expected local:N with N >= 1 worker processes")
    return distributed.LocalCluster(
        n_workers=int(count),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:8787",  # with bokeh installed; another port if taken
    )


class ModelOnWorkers(WorkerPlugin):
    """The model of one era run, held by every worker.

    Sent once per worker (the scheduler keeps the plugin and hands it to workers that register
    later, such as the one that replaces a dead worker), instead of once per task. `setup` also
    gives the worker process one BLAS thread, as every process that runs the model has.
    """

    def __init__(self, model: PixelRing2NMF | ModelSet) -> None:
        self.model = model

    def setup(self, worker: Worker) -> None:
        single_blas_thread()


def _judge_on_worker(task: RowGroupTask, oms: OmsLookup | None, model_name: str) -> TaskResult:
    plugin = get_worker().plugins.get(model_name)
    if plugin is None:
        raise RuntimeError(
            f"worker has no model {model_name!r} (its plugin failed to load: does the "
            f"worker's environment have {PACKAGE} installed?)"
        )
    return judge_row_groups(task, plugin.model, oms)


def describe_cluster(client: Client) -> str:
    """`dask tcp://host:8786 (N workers)`: where a run was judged, for era.json."""
    n_workers = len(client.nthreads())
    return f"dask {client.scheduler.address} ({n_workers} worker{'' if n_workers == 1 else 's'})"


def check_workers(client: Client) -> None:
    """Fail before any work if a connected worker cannot import this package.

    Task functions travel by reference, so a worker without pixelring2nmf (or with another
    version) would fail every task; the check costs one round trip. Workers that join later
    are not checked: their tasks fail with the import error, naming the task.
    """
    ours = importlib.metadata.version(PACKAGE)
    answers = client.run(importlib.metadata.version, PACKAGE, on_error="return")
    wrong = {
        worker: (f"missing ({answer})" if isinstance(answer, Exception) else answer)
        for worker, answer in answers.items()
        if answer != ours
    }
    if wrong:
        listed = ", ".join(f"{worker}: {found}" for worker, found in sorted(wrong.items())[:5])
        raise RemoteError(
            f"{len(wrong)} Dask worker(s) lack {PACKAGE} {ours} (the client's version): "
            f"{listed}; install it in the workers' environment"
        )


def auto_task_ls(total_ls: int, n_workers: int) -> int:
    """LS per task for an era of `total_ls` on `n_workers` (0 while an HTCondor cluster starts)."""
    per_task = total_ls // (TASKS_PER_WORKER * max(n_workers, 1))
    return max(MIN_TASK_LS, min(MAX_TASK_LS, per_task))


def _failed_task(task: RowGroupTask, error: BaseException) -> TaskResult:
    """What a task that died with its workers leaves: its LS unjudged, and why, named."""
    why = (
        f"its worker died {error.allowed_failures + 1} times running it (out of memory? "
        "see the workers' logs)"
    )
    return TaskResult.unjudged(task, why)


class DaskExecutor(Executor):
    """The tasks on a Dask cluster's workers; the model sent once per worker (a plugin)."""

    def __init__(
        self, client: Client, model: PixelRing2NMF | ModelSet, oms: OmsLookup | None
    ) -> None:
        self.client, self.oms = client, oms
        check_workers(client)
        run_id = uuid.uuid4().hex[:12]
        self._run_id = run_id
        self._model_name = f"{PACKAGE}-model-{run_id}"
        client.register_plugin(ModelOnWorkers(model), name=self._model_name)
        self._futures: list[Future] = []

    def describe(self) -> str:
        return describe_cluster(self.client)

    def plan(self, sources: Sequence[Source]) -> list[FilePlan]:
        futures = self.client.map(plan_file, range(len(sources)), sources, pure=False)
        plans = []
        for index, future in enumerate(futures):
            try:
                plans.append(future.result())
            except (Exception, distributed.CancelledError) as error:
                message = f"{sources[index]}: could not read its footer on the cluster: {error}"
                plans.append(FilePlan(index, sources[index], failure=message))
        return plans

    def default_task_ls(self, total_ls: int) -> int:
        return auto_task_ls(total_ls, len(self.client.nthreads()))

    def runs(self, plans: Sequence[FilePlan]) -> list[list[int]]:
        """The files' runs, read by the workers (they see the storage; the client may not)."""
        return self.client.gather(self.client.map(plan_runs, plans, pure=False))

    def _oms_of(self, task: RowGroupTask) -> OmsLookup | None:
        """The OMS rows a task needs travel with it: ~80 bytes per LS, once in total, where the
        whole table in every worker would be ~24 MB per worker for a year. A file without run
        statistics in its footer makes its tasks carry the whole table."""
        if self.oms is None or task.runs is None:
            return self.oms
        return self.oms.runs_between(*task.runs)

    def judge(self, tasks: Sequence[RowGroupTask]) -> Iterator[TaskResult]:
        # The tasks carry their OMS rows: ~80 bytes per LS in all, past the 10 MB at which
        # dask warns of a large graph once an era passes ~100k LS; that size is intended.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}):
            self._futures = self.client.map(
                _judge_on_worker,
                tasks,
                [self._oms_of(task) for task in tasks],
                model_name=self._model_name,
                key=[f"{PACKAGE}-judge-{self._run_id}-{i}" for i in range(len(tasks))],
            )
        task_of = {future.key: task for future, task in zip(self._futures, tasks, strict=True)}
        for future in distributed.as_completed(self._futures, loop=self.client.loop):
            try:
                part = future.result()
            except KilledWorker as error:  # reported like bad data: the others go on
                part = _failed_task(task_of[future.key], error)
            future.release()  # the client holds the merged frame, the cluster nothing
            yield part

    def stop(self) -> list[TaskResult]:
        with contextlib.suppress(Exception):
            self.client.cancel(self._futures)
        return []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.unregister_worker_plugin(self._model_name)
