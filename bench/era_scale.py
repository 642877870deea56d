"""`era --dask` on this machine, and what it projects for eras on 10-200 workers.

    python bench/era_scale.py [--n-ls 40000] [--workdir /tmp/pixelring2nmf-bench-era-scale]

An era of `--n-ls` LS (real-layout parquet, row groups of 1000 LS, runs of 1000 LS, the OMS
JSON) is simulated once and judged with the shipped model:

1. in this process without Dask (`era.engine.analyse_era` in-process, the reference), then the client-side
   work alone (`era_tables` + CSV/parquet writing) is timed: it runs once, after the tasks;
2. on `LocalCluster`s of 1 and 2 single-threaded worker processes with the default task size
   (`dask_executor.auto_task_ls`), 3 runs each taken in turns: LS/s of the analysis (plan, tasks,
   merge), cluster start apart;
3. on 1 worker with tasks of 100 and 500 LS (a copy of the era's first 5,000 LS in row
   groups of 100) and of 1, 2, 5 and 10 row groups of 1000, twice each: the time between
   successive task completions (the worker's time per task in steady state, scheduling and
   result transfer included); its median per task size is fitted as `overhead + n_LS x cost`
   by least squares (medians, because other work shares this machine's 2 cores);
4. each worker's RSS and peak RSS (VmHWM), and the client's cost to receive one LS of results.

Projection for N LS on W workers with tasks of s LS (stated with the numbers in BENCHMARKS.md):

    wall = fixed + max(ceil(ceil(N / s) / W) x (overhead + s x cost), N x receive) + N x client

`fixed` is the measured per-run cost (footers, sending the model, merging), `client` the
tables and files per LS, `receive` the client's deserialisation per LS. Not modelled: the
cluster's start (HTCondor jobs take minutes to start), and reading over the network (EOS)
instead of this machine's page cache.

This machine has 2 cores shared with other work: how busy it was is measured (load average,
and the CPU time others used while each measurement ran) and written with the results.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section
from era import simulated_era

from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.era.dask_executor import MAX_TASK_LS, DaskExecutor, auto_task_ls
from pixelring2nmf.era.engine import analyse_era
from pixelring2nmf.era.executors import InProcessExecutor
from pixelring2nmf.era.judge import TaskResult
from pixelring2nmf.era.merge import EraRun
from pixelring2nmf.era.output import EraFolder, EraStatus
from pixelring2nmf.era.plan import RowGroupTask, plan_file, plan_tasks
from pixelring2nmf.era.tables import PersistenceRule, era_tables
from pixelring2nmf.io.oms import OmsLookup

FIT_TASK_LS = (1000, 2000, 5000, 10000)  # on the era's file, row groups of 1000 LS
FINE_TASK_LS = (100, 500)  # on a copy of its first FINE_N_LS in row groups of 100 LS
FINE_N_LS = 5000
PROJECT_N_LS = (300_000, 3_000_000)
PROJECT_WORKERS = (10, 50, 200)
REPEATS = 3  # runs on 1 and on 2 workers, in turns


def fine_copy(source: Path, n_ls: int, row_group_ls: int) -> Path:
    """The first `n_ls` LS of `source` again, in small row groups: tasks below 1000 LS."""
    import pyarrow.parquet as pq

    path = source.with_name(f"first_{n_ls}_by_{row_group_ls}.parquet")
    if not path.exists():
        table = pq.read_table(source).slice(0, n_ls)
        pq.write_table(table, path, row_group_size=row_group_ls, compression="zstd")
    return path


class Load:
    """CPU used by processes other than ours while a measurement runs, in cores."""

    def __init__(self) -> None:
        self.loadavg = os.getloadavg()[0]
        self.start = time.perf_counter()
        self.busy = self._busy()
        self.ours = self._ours()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _ours() -> dict[int, float]:
        me = psutil.Process()
        cpu = {}
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return cpu

    def others_cores(self) -> float:
        """Cores others used on average: all busy CPU minus our process tree's."""
        wall = time.perf_counter() - self.start
        ours = sum(self.ours_seconds())
        return max(0.0, (self._busy() - self.busy - ours) / wall)

    def ours_seconds(self) -> tuple[float, float]:
        """CPU seconds of this process (client, and a LocalCluster's scheduler) and of its
        children (nannies and workers) since the start."""
        now = self._ours()
        me = os.getpid()
        used = {pid: now[pid] - self.ours.get(pid, 0.0) for pid in now}
        return used.get(me, 0.0), sum(v for pid, v in used.items() if pid != me)


def _worker_memory() -> dict:
    """Runs on each worker (sent by value: this script is __main__).

    The peak is VmHWM, the high-water mark of this process's own memory: `ru_maxrss` would
    also count the parent's pages a spawned process held between fork and exec.
    """
    import os

    from pixelring2nmf.validation.local_server import memory_mb

    mb = memory_mb(os.getpid())
    return {"rss_mb": mb["VmRSS"], "peak_mb": mb["VmHWM"]}


def local_cluster(stack: ExitStack, n_workers: int):
    """A LocalCluster and its client, closed by `stack`; and how long it took to start."""
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    cluster = stack.enter_context(
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
    )
    client = stack.enter_context(Client(cluster, set_as_default=False))
    return cluster, client, time.perf_counter() - start


def timed_dask_run(client, paths, model, oms, task_ls: int | None) -> dict:
    """One era on the cluster: total seconds, and per task (n_LS, completion time, compute s)."""
    arrivals: list[tuple[float, TaskResult]] = []
    load = Load()
    start = time.perf_counter()
    with DaskExecutor(client, model, oms) as executor:
        era = analyse_era(
            paths,
            executor,
            progress=False,
            task_ls=task_ls,
            on_task=lambda part: arrivals.append((time.perf_counter(), part)),
        )
    assert era.complete, era.failures
    client_cpu, cluster_cpu = load.ours_seconds()
    return {
        "client_cpu": client_cpu,
        "cluster_cpu": cluster_cpu,
        "seconds": era.seconds,
        "n_ls": len(era.results),
        "start": start,
        "arrivals": [(t, part.task.n_ls, part.seconds) for t, part in arrivals],
        "others": load.others_cores(),
        "loadavg": load.loadavg,
        "results": era.results,
        "n_tasks": era.n_tasks,
    }


def steady_tasks(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_LS, interval, compute seconds) of a run's tasks after its first completion.

    The first completion also holds the run's start (plugin, footers, the first task's
    warm-up), so it is left out; a worker judges its next task while the client receives the
    last one, so the interval between completions is the worker's time per task.
    """
    times = np.asarray([t for t, _, _ in run["arrivals"]])
    n_ls = np.asarray([n for _, n, _ in run["arrivals"]][1:], float)
    compute = np.asarray([c for _, _, c in run["arrivals"]][1:])
    return n_ls, np.diff(times), compute


def fit_overhead(runs: list[dict]) -> dict:
    """Least squares of the median time per task against the median LS per task, by size."""
    sizes = sorted({run["task_ls"] for run in runs})
    medians = {}
    for size in sizes:
        parts = [steady_tasks(run) for run in runs if run["task_ls"] == size]
        medians[size] = tuple(
            float(np.median(np.concatenate([p[i] for p in parts]))) for i in (0, 1, 2)
        )
    x = np.asarray([medians[s][0] for s in sizes])
    design = np.column_stack([np.ones_like(x), x])
    interval = np.asarray([medians[s][1] for s in sizes])
    compute = np.asarray([medians[s][2] for s in sizes])
    (overhead, cost), *_ = np.linalg.lstsq(design, interval, rcond=None)
    (compute_overhead, compute_cost), *_ = np.linalg.lstsq(design, compute, rcond=None)
    residual = interval - (overhead + cost * x)
    # standard errors of the two coefficients, from the residuals of the medians
    covariance = residual @ residual / (len(x) - 2) * np.linalg.inv(design.T @ design)
    overhead_se, cost_se = np.sqrt(np.diag(covariance))
    # what Dask adds to a task (scheduling, moving arguments and results): interval - compute
    beyond = np.concatenate([steady_tasks(run)[1] - steady_tasks(run)[2] for run in runs])
    return {
        "overhead_s": float(overhead),
        "cost_s": float(cost),
        "compute_overhead_s": float(compute_overhead),
        "compute_cost_s": float(compute_cost),
        "rms_s": float(np.sqrt(np.mean(residual**2))),
        "overhead_se_s": float(overhead_se),
        "cost_se_s": float(cost_se),
        "dask_s": float(np.median(beyond)),
        "medians": medians,
    }


def client_costs(era_results, out: Path, sample: TaskResult) -> dict:
    """Per LS on the client: tables + files once at the end, and receiving results."""
    start = time.perf_counter()
    tables = era_tables(era_results, PersistenceRule())
    era = EraRun(results=era_results, files=[])
    out.mkdir(parents=True, exist_ok=True)
    EraFolder(out, EraStatus()).write_results(era, tables, xlsx=False)
    client_s = (time.perf_counter() - start) / len(era_results)
    blob = pickle.dumps(sample, protocol=5)
    repeats = 5
    start = time.perf_counter()
    for _ in range(repeats):
        pickle.loads(blob)
    receive_s = (time.perf_counter() - start) / repeats / sample.task.n_ls
    return {
        "client_s": client_s,
        "receive_s": receive_s,
        "bytes_per_ls": len(blob) / sample.task.n_ls,
    }


def projection(fit: dict, costs: dict, n_ls: int, workers: int, task_ls: int) -> float:
    n_tasks = math.ceil(n_ls / task_ls)
    rounds = math.ceil(n_tasks / workers)
    overhead = max(fit["overhead_s"], 0.0)  # a fit within its error of 0 may come out below
    tasks_s = rounds * (overhead + task_ls * fit["cost_s"])
    return costs["fixed_s"] + max(tasks_s, n_ls * costs["receive_s"]) + n_ls * costs["client_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ls", type=int, default=40_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixelring2nmf-bench-era-scale"))
    args = parser.parse_args()
    paths = simulated_era(args.workdir, args.n_ls)
    files = [paths["parquet"]]
    model = PixelRing2NMF.load()
    oms = OmsLookup.read([paths["oms"]])
    # what a task of 5000 LS carries of the OMS table (DaskExecutor._oms_of), per LS
    task = plan_tasks([plan_file(0, paths["parquet"])], 5000)[0]
    oms_bytes_per_ls = len(pickle.dumps(oms.runs_between(*task.runs), protocol=5)) / task.n_ls
    file_kb_per_ls = paths["parquet"].stat().st_size / 1e3 / args.n_ls

    load = Load()
    local = analyse_era(files, InProcessExecutor(model, oms), progress=False)
    local_row = {
        "ls_per_s": len(local.results) / local.seconds,
        "others": load.others_cores(),
        "loadavg": load.loadavg,
    }
    print(f"local: {local_row['ls_per_s']:,.0f} LS/s, others used {local_row['others']:.2f} cores")

    rows, memory = [], {}
    with ExitStack() as stack:
        clusters = {n: local_cluster(stack, n) for n in (1, 2)}
        for n_workers, (_, client, _) in clusters.items():
            memory[f"idle, {n_workers} worker(s)"] = client.run(_worker_memory)
        # 1 and 2 workers in turns, so that a change in the other work on this machine
        # weighs on both alike
        runs: dict[int, list[dict]] = {1: [], 2: []}
        for _ in range(REPEATS):
            for n_workers, (_, client, _) in clusters.items():
                runs[n_workers].append(timed_dask_run(client, files, model, oms, None))
                assert runs[n_workers][-1]["results"].equals(local.results), "results differ"
                print(f"{n_workers} worker(s): {runs[n_workers][-1]['seconds']:.1f} s")
        for n_workers, (_, _, start_s) in clusters.items():
            rows.append(
                {
                    "workers": n_workers,
                    "start_s": start_s,
                    "ls_per_s": [run["n_ls"] / run["seconds"] for run in runs[n_workers]],
                    "others": [run["others"] for run in runs[n_workers]],
                    "loadavg": runs[n_workers][0]["loadavg"],
                    "n_tasks": runs[n_workers][0]["n_tasks"],
                    "client_cpu": [run["client_cpu"] for run in runs[n_workers]],
                    "cluster_cpu": [run["cluster_cpu"] for run in runs[n_workers]],
                }
            )
        _, client, _ = clusters[1]
        fit_runs: list[dict] = []
        # the run's own cost, apart from its LS: an era of one row group of 100 LS
        tiny = [fine_copy(paths["parquet"], FINE_TASK_LS[0], FINE_TASK_LS[0])]
        tiny_runs = [timed_dask_run(client, tiny, model, oms, None) for _ in range(REPEATS)]
        fixed_s = statistics.median(run["seconds"] - run["arrivals"][0][2] for run in tiny_runs)
        fine = [fine_copy(paths["parquet"], FINE_N_LS, FINE_TASK_LS[0])]
        sizes = [(fine, s) for s in FINE_TASK_LS] + [(files, s) for s in FIT_TASK_LS]
        for inputs, task_ls in sizes * 2:
            fit_runs.append(timed_dask_run(client, inputs, model, oms, task_ls))
            fit_runs[-1]["task_ls"] = task_ls
            print(f"  tasks of {task_ls} LS: {fit_runs[-1]['seconds']:.1f} s")
        for n_workers, (_, client, _) in clusters.items():
            memory[f"after the runs, {n_workers} worker(s)"] = client.run(_worker_memory)
    fit = fit_overhead(fit_runs)
    sample_run = next(run for run in fit_runs if run["task_ls"] == 5000)
    costs = {"fixed_s": fixed_s} | client_costs(
        local.results, args.workdir / "client_out", _sample_result(sample_run, local)
    )
    print(fit, costs)
    body = report(
        args.n_ls, file_kb_per_ls, oms_bytes_per_ls, local_row, rows, fit_runs, fit, costs, memory
    )
    write_section("era_scale", "Era analysis on Dask: `era --dask`, measured and projected", body)
    return 0


def _sample_result(run: dict, local) -> TaskResult:
    """A task's result of `run`'s size, rebuilt from the local results (for timing receipt)."""
    n = run["task_ls"]
    frame = local.results.iloc[:n].assign(_file=np.int32(0))
    return TaskResult(task=RowGroupTask(0, "x", tuple(range(n // 1000)), n), results=frame)


def report(
    n_ls, file_kb_per_ls, oms_bytes_per_ls, local_row, rows, fit_runs, fit, costs, memory
) -> str:
    lines = [
        f"`python bench/era_scale.py --n-ls {n_ls}` — one simulated era of {n_ls:,} LS (one",
        f"parquet of {file_kb_per_ls:.1f} kB per LS, row groups of 1000 LS, with its OMS JSON),",
        "the shipped model, `LocalCluster`s of single-threaded worker processes on this machine",
        "(loopback). Analysis time = plan + tasks + merge (what `era` reports), cluster start",
        "apart. Every cluster run's per-LS results were checked equal to the local run's.",
        "",
        '**Load.** This machine has 2 cores shared with another engineer\'s work: "others" is',
        "the CPU that processes other than this benchmark's used while each measurement ran",
        "(system busy time minus ours, in cores), with the 1-minute load average at its start.",
        "With about one core taken by others, speeds here vary by +-30 % from one run of this",
        "script to the next; each number below comes from one run.",
        "",
        "| run | LS/s (each run) | tasks | cluster start | CPU per run: client + scheduler / workers | LS per worker CPU-second | others used | load average |",
        "|---|---|---|---|---|---|---|---|",
        f"| in this process, no Dask (reference) | {local_row['ls_per_s']:,.0f} | - | - | - | - | "
        f"{local_row['others']:.2f} cores | {local_row['loadavg']:.2f} |",
    ]
    for row in rows:
        rates = " / ".join(f"**{r:,.0f}**" for r in row["ls_per_s"])
        others = " / ".join(f"{o:.2f}" for o in row["others"])
        cpu = f"{statistics.median(row['client_cpu']):.1f} s / {statistics.median(row['cluster_cpu']):.1f} s"
        lines.append(
            f"| `--dask local:{row['workers']}` (default task size) | {rates} | "
            f"{row['n_tasks']} | {row['start_s']:.1f} s | {cpu} (medians) | "
            f"{_per_cpu_second(row, n_ls):,.0f} | {others} cores | {row['loadavg']:.2f} |"
        )
    two = statistics.median(rows[1]["ls_per_s"]) / statistics.median(rows[0]["ls_per_s"])
    free = [2 - statistics.median(row["others"]) for row in rows]
    efficiency = _per_cpu_second(rows[1], n_ls) / _per_cpu_second(rows[0], n_ls)
    lines += [
        "",
        f"2 workers / 1 worker: **{two:.2f}x** in wall time (medians). The other work left this "
        f"benchmark ~{free[0]:.1f} cores during the 1-worker runs and ~{free[1]:.1f} during the "
        "2-worker runs, which also hold the client and scheduler, so the wall-time ratio says "
        "how busy the machine was more than what Dask does. Per CPU-second of the workers, two "
        f"workers judge **{efficiency:.2f}x** what one does"
        + (
            f": the work splits, {100 * max(0.0, 1 - efficiency):.0f} % lost per CPU-second "
            "(within this machine's noise)."
            if efficiency >= 0.9
            else ": two busy worker processes next to the other work oversubscribe the 2 cores, "
            "and a CPU-second buys less (shared caches, preemption) — a cost of this machine, "
            "not of more workers on more cores."
        ),
        "The per-task numbers below (one worker) are the ones that carry to a real cluster.",
        "",
        "**Per-task overhead and per-LS cost** (1 worker, each task size twice; the time between",
        "successive task completions, the first of each run left out; median per size):",
        "",
        "| tasks of | runs: analysis time | median time per task | of which inside the task | others used |",
        "|---|---|---|---|---|",
    ]
    for size, (_, interval, compute) in fit["medians"].items():
        runs = [run for run in fit_runs if run["task_ls"] == size]
        times = ", ".join(f"{run['seconds']:.1f} s" for run in runs)
        others = ", ".join(f"{run['others']:.2f}" for run in runs)
        lines.append(
            f"| {size:,} LS | {times} | {interval:.3f} s | {compute:.3f} s | {others} cores |"
        )
    lines += [
        "",
        f"Least squares over the medians: **overhead {fit['overhead_s'] * 1e3:.0f} ms per task "
        f"(± {fit['overhead_se_s'] * 1e3:.0f}), cost {fit['cost_s'] * 1e3:.3f} ms per LS** "
        f"(± {fit['cost_se_s'] * 1e3:.3f}; {1 / fit['cost_s']:,.0f} LS/s per worker in steady "
        f"state); rms residual {fit['rms_s'] * 1e3:.0f} ms. Inside the task alone "
        f"(`judge_row_groups`): {fit['compute_overhead_s'] * 1e3:.0f} ms + "
        f"{fit['compute_cost_s'] * 1e3:.3f} ms per LS, so most of the overhead is the task's own "
        "(opening the file, and the per-chunk work that row groups of 100 LS multiply: their "
        "LS cost more); what Dask adds per task (time per task minus time inside it, median): "
        f"**{fit['dask_s'] * 1e3:.0f} ms**. Fixed cost per run (footers, the model to the "
        "workers, submitting, merging; an era of one row group of 100 LS, its task's own time "
        f"taken off, median of {REPEATS}): **{costs['fixed_s']:.2f} s**.",
        f"Client, per LS: tables + CSV/parquet files {costs['client_s'] * 1e6:.1f} µs (once, "
        f"after the tasks); receiving results {costs['receive_s'] * 1e6:.2f} µs "
        f"({costs['bytes_per_ls']:.0f} bytes per LS on the wire).",
        "",
        "**Projection** for N LS on W workers, tasks of s LS (the default: "
        "`dask_executor.auto_task_ls`, about 4 per worker, 1,000-5,000 LS):",
        "",
        "`wall = fixed + max(ceil(ceil(N/s)/W) x (overhead + s x cost), N x receive) + N x client`",
        "",
        "| LS | workers | tasks of | wall | of which the client's tables + files | one worker alone |",
        "|---|---|---|---|---|---|",
    ]
    for n in PROJECT_N_LS:
        for w in PROJECT_WORKERS:
            s = auto_task_ls(n, w)
            lines.append(
                f"| {n:,} | {w} | {s:,} | **{_duration(projection(fit, costs, n, w, s))}** | "
                f"{_duration(n * costs['client_s'])} | "
                f"{_duration(projection(fit, costs, n, 1, MAX_TASK_LS))} |"
            )
    lines += [
        "",
        "Not in the model: the cluster's start (HTCondor jobs take minutes to start) and reading "
        f"from EOS instead of the page cache: at {file_kb_per_ls:.1f} kB per LS, a worker reading "
        f"50 MB/s adds {file_kb_per_ls / 50e3 * 1e3:.3f} ms per LS to the "
        f"{fit['cost_s'] * 1e3:.3f} ms above.",
        "",
        "**Worker memory** (each worker process: VmRSS now, VmHWM the peak over its life):",
        "",
        "| when | RSS per worker | peak RSS per worker |",
        "|---|---|---|",
    ]
    for when, answers in memory.items():
        rss = ", ".join(f"{a['rss_mb']:.0f}" for a in answers.values())
        peak = ", ".join(f"{a['peak_mb']:.0f}" for a in answers.values())
        lines.append(f"| {when} | {rss} MB | {peak} MB |")
    peak = max(a["peak_mb"] for answers in memory.values() for a in answers.values())
    lines += [
        "",
        f"Largest worker peak: **{peak:.0f} MB**, with tasks up to 10,000 LS (memory follows the "
        "1,000-LS chunk, not the task, nor the era). The OMS rows travel with each task "
        f"({oms_bytes_per_ls:.0f} bytes per LS, ~{5000 * oms_bytes_per_ls / 1e6:.1f} MB for a "
        "task of 5,000 LS), so a worker's memory does not grow with the era's OMS table either.",
    ]
    return "\n".join(lines)


def _per_cpu_second(row: dict, n_ls: int) -> float:
    """LS judged per CPU-second the workers used (median run): throughput without the load."""
    return n_ls / statistics.median(row["cluster_cpu"])


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


if __name__ == "__main__":
    sys.exit(main())
