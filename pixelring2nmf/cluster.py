"""`era --dask`: the era analysis as tasks of (file, row groups) on a Dask cluster.

CMS analysts scale Python with `dask.distributed` (SWAN's Dask clusters, lxplus HTCondor through
dask-jobqueue; DOMAIN.md section 10), so the era runs there rather than on a scheduler of its
own. Nothing of the analysis lives here: the workers run `era.plan_file` (footers) and
`era.judge_row_groups` (the maps), the client merges with `era.merge_results` and writes with
`era.write_and_report`, exactly as a run on one machine does. This module only moves work:

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

dask is imported only by this module, which `era` imports only when `--dask` is used.
"""

from __future__ import annotations

import importlib.metadata
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import dask
import distributed
from distributed import Client, Future, KilledWorker, Worker, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from .era import (
    EraRun,
    FilePlan,
    OmsLookup,
    RowGroupTask,
    Source,
    TaskResult,
    judge_row_groups,
    merge_results,
    plan_file,
    plan_tasks,
    progress_bar,
    quiet_logger,
    quiet_single_threaded_blas,
    report_failures,
    report_unopened,
)

if TYPE_CHECKING:
    from mlserver_model.pixelring2nmf import PixelRing2NMF

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


@contextmanager
def dask_client(spec: str) -> Iterator[Client]:
    """A client of the cluster `spec` names; a `local:N` cluster ends with the client.

    `local:N` is N single-threaded worker processes on this machine, listening on loopback
    only: the analysis is CPU-bound Python, numpy and pyarrow, and processes do not contend
    for one interpreter lock as threads would. Anything else is the address of a running
    scheduler (tcp://, tls://; dask's configuration supplies any TLS credentials).
    """
    with ExitStack() as stack:
        stack.enter_context(quiet_logger("distributed"))
        if spec.startswith(LOCAL_PREFIX):
            cluster = stack.enter_context(_local_cluster(spec))
            address = cluster.scheduler_address
        else:
            address = spec
        try:
            client = stack.enter_context(
                Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            )
        except (OSError, TimeoutError) as error:
            raise RuntimeError(f"cannot reach the Dask scheduler at {address}: {error}") from None
        yield client


def _local_cluster(spec: str) -> distributed.LocalCluster:
    count = spec[len(LOCAL_PREFIX) :]
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--dask {spec}: expected local:N with N >= 1 worker processes")
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
    gives the worker process what the analysis needs: one BLAS thread, no per-chunk INFO lines.
    """

    def __init__(self, model: PixelRing2NMF) -> None:
        self.model = model
        self._settings = ExitStack()

    def __getstate__(self) -> dict:
        return {"model": self.model}  # not the worker's settings

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"])

    def setup(self, worker: Worker) -> None:
        self._settings.enter_context(quiet_single_threaded_blas())

    def teardown(self, worker: Worker) -> None:
        self._settings.close()


def _judge_on_worker(
    task: RowGroupTask, oms: OmsLookup | None, model_name: str, rule: str
) -> TaskResult:
    plugin = get_worker().plugins.get(model_name)
    if plugin is None:
        raise RuntimeError(
            f"worker has no model {model_name!r} (its plugin failed to load: does the "
            f"worker's environment have {PACKAGE} installed?)"
        )
    return judge_row_groups(task, plugin.model, oms, rule)


def _oms_of(task: RowGroupTask, oms: OmsLookup | None) -> OmsLookup | None:
    """The OMS rows a task needs travel with it: ~80 bytes per LS, once in total, where the
    whole table in every worker would be ~24 MB per worker for a year. A file without run
    statistics in its footer makes its tasks carry the whole table."""
    if oms is None or task.runs is None:
        return oms
    return oms.runs_between(*task.runs)


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
        raise RuntimeError(
            f"{len(wrong)} Dask worker(s) lack {PACKAGE} {ours} (the client's version): "
            f"{listed}; install it in the workers' environment"
        )


def auto_task_ls(total_ls: int, n_workers: int) -> int:
    """LS per task for an era of `total_ls` on `n_workers` (0 while an HTCondor cluster starts)."""
    per_task = total_ls // (TASKS_PER_WORKER * max(n_workers, 1))
    return max(MIN_TASK_LS, min(MAX_TASK_LS, per_task))


def _failed_task(task: RowGroupTask, error: BaseException) -> TaskResult:
    """What a task that raised on the cluster leaves: its LS unjudged, and why, named."""
    if isinstance(error, KilledWorker):
        why = (
            f"its worker died {error.allowed_failures + 1} times running it (out of memory? "
            "see the workers' logs)"
        )
    else:
        why = f"{type(error).__name__}: {error}"
    return TaskResult.unjudged(task, why)


def _plans(client: Client, sources: Sequence[Source]) -> list[FilePlan]:
    futures = client.map(plan_file, range(len(sources)), sources, pure=False)
    plans = []
    for index, future in enumerate(futures):
        try:
            plans.append(future.result())
        except (Exception, distributed.CancelledError) as error:
            message = f"{sources[index]}: could not read its footer on the cluster: {error}"
            plans.append(FilePlan(index, sources[index], failure=message))
    return plans


def analyse_era_on_dask(
    client: Client,
    paths: Sequence[Source],
    model: PixelRing2NMF,
    oms: OmsLookup | None = None,
    *,
    rule: str = "significance",
    progress: bool = True,
    task_ls: int | None = None,
    on_task: Callable[[TaskResult], object] | None = None,
) -> EraRun:
    """`era.analyse_era` with the tasks judged by the cluster's workers.

    `task_ls` None sizes tasks by the workers connected now (`auto_task_ls`). Results are
    merged in file and row-group order, not in the order tasks finish, so the era is the same
    as a run on one machine. `on_task` sees every task's result as it arrives
    (bench/era_scale.py times them).
    """
    start = time.perf_counter()
    check_workers(client)
    plans = _plans(client, paths)
    report_unopened(plans)
    if task_ls is None:
        total_ls = sum(plan.n_ls for plan in plans)
        task_ls = auto_task_ls(total_ls, len(client.nthreads()))
    tasks = plan_tasks(plans, task_ls)
    run_id = uuid.uuid4().hex[:12]
    model_name = f"{PACKAGE}-model-{run_id}"
    client.register_plugin(ModelOnWorkers(model), name=model_name)
    parts: list[TaskResult] = []
    interrupted = False
    bar = progress_bar(sum(task.n_ls for task in tasks), progress)
    futures: list[Future] = []
    try:
        # The tasks carry their OMS rows: ~80 bytes per LS in all, past the 10 MB at which
        # dask warns of a large graph once an era passes ~100k LS; that size is intended.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}):
            futures = client.map(
                _judge_on_worker,
                tasks,
                [_oms_of(task, oms) for task in tasks],
                model_name=model_name,
                rule=rule,
                key=[f"{PACKAGE}-judge-{run_id}-{i}" for i in range(len(tasks))],
            )
        task_of = {future.key: task for future, task in zip(futures, tasks, strict=True)}
        for future in distributed.as_completed(futures, loop=client.loop):
            task = task_of[future.key]
            try:
                part = future.result()
            except (Exception, distributed.CancelledError) as error:  # reported, not raised
                part = _failed_task(task, error)
            future.release()  # the client holds the merged frame, the cluster nothing
            parts.append(part)
            report_failures(part)
            bar.update(task.n_ls)
            if on_task is not None:
                on_task(part)
    except KeyboardInterrupt:
        interrupted = True
        client.cancel(futures)
    finally:
        bar.close()
        client.unregister_worker_plugin(model_name)
    return merge_results(
        parts,
        plans,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
        ran_on=describe_cluster(client),
    )
