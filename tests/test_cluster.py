"""`era --dask` on real `LocalCluster`s of worker processes: same files as a local run, a worker
killed mid-run, a corrupt file among good ones.

Nothing is mocked: the workers are separate processes that open the parquet files themselves,
get the model through the era's worker plugin, and die by SIGKILL. The kill is triggered by the
worker itself when a task starts executing on it (a worker plugin watching its transitions),
so the test never waits on a clock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era.dask_executor import auto_task_ls
from pixelring2nmf.era.plan import plan_tasks
from pixelring2nmf.io.parquet import split_row_groups

TABLES = ("condensed", "powergroup", "per_ls", "run_summary", "persistent", "lumisections")
# era.json keys that say how and when, not what (the processes' peak memory too: it depends on
# what ran in the process before)
RUN_SPECIFIC = ("seconds", "ran_on", "tasks", "started_at", "ended_at", "peak_memory_mb")
CERTIFICATION = ("golden.json", "flagged.json")

# The kill plugin below is defined in this test module, which the workers cannot import:
# send its class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def assert_same_outputs(ours: Path, reference: Path) -> None:
    """Byte-identical CSV tables, identical per-LS results, the same summary."""
    for name in TABLES:
        assert (ours / f"{name}.csv").read_bytes() == (reference / f"{name}.csv").read_bytes(), name
    for name in CERTIFICATION:
        assert (ours / name).read_bytes() == (reference / name).read_bytes(), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(ours / "lumisections.parquet"),
        pd.read_parquet(reference / "lumisections.parquet"),
    )
    summaries = [json.loads((out / "era.json").read_text()) for out in (ours, reference)]
    for summary in summaries:
        for key in RUN_SPECIFIC:
            summary.pop(key)
        # the same files, whether or not this run was also asked for the workbook
        summary["outputs"] = [name for name in summary["outputs"] if name != "era.xlsx"]
    assert summaries[0] == summaries[1]


def era_args(parquet: list[str], oms: Path, model_path: Path, out: Path) -> list[str]:
    args = ["era", "--parquet", *parquet, "--oms", str(oms), "--model", str(model_path)]
    return [*args, "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, Client]]:
    """Two single-threaded worker processes on loopback: the `--dask ADDRESS` of these tests."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as local,
        Client(local, set_as_default=False) as client,
    ):
        yield local.scheduler_address, client


def test_row_groups_are_split_whole_and_in_order() -> None:
    assert split_row_groups([700, 700, 0, 700, 2500, 100], 1500) == [(0, 1), (3,), (4,), (5,)]
    assert split_row_groups([1000] * 4, 1) == [(0,), (1,), (2,), (3,)]
    assert split_row_groups([1000] * 4, 10**6) == [(0, 1, 2, 3)]
    assert split_row_groups([], 5) == []
    # about 4 tasks per worker, whole row groups of 1000 to 5000 LS, also with no worker yet
    assert auto_task_ls(300_000, 200) == 1000
    assert auto_task_ls(300_000, 50) == 1500
    assert auto_task_ls(3_000_000, 10) == auto_task_ls(40_000, 0) == 5000


def test_local_dask_cluster_writes_the_files_of_a_local_run(
    era_sim, era_out, model_path, tmp_path
) -> None:
    """`era --dask local:2` on the simulated era, one row group per task, both workers busy."""
    out = tmp_path / "dask"
    args = era_args([str(era_sim["parquet"].parent)], era_sim["oms"], model_path, out)
    assert cli_main([*args, "--xlsx", "--dask", "local:2", "--task-ls", "1000"]) == 0
    assert_same_outputs(out, era_out)
    summary = json.loads((out / "era.json").read_text())
    assert summary["ran_on"].startswith("dask tcp://127.0.0.1:") and summary["tasks"] > 2
    for sheet, table in pd.read_excel(out / "era.xlsx", sheet_name=None).items():
        reference = pd.read_excel(era_out / "era.xlsx", sheet_name=sheet)
        pd.testing.assert_frame_equal(table, reference)


class KillOnSecondTask(WorkerPlugin):
    """SIGKILLs its own worker process when that worker starts its second era task.

    Only once per cluster: the first worker to get there creates `flag` (O_EXCL, atomic
    across processes) and writes its PID and the task into it; the worker the nanny starts
    in its place sees the flag and lives.
    """

    def __init__(self, flag: str) -> None:
        self.flag = flag
        self.started = 0

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or "-judge-" not in str(key):
            return
        self.started += 1
        if self.started < 2:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {key}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_nothing(
    cluster, era_sim, era_out, model_path, tmp_path
) -> None:
    address, client = cluster
    pids_before = set(client.run(os.getpid).values())
    flag = tmp_path / "killed"
    client.register_plugin(KillOnSecondTask(str(flag)), name="kill-on-second-task")
    try:
        out = tmp_path / "dask"
        args = era_args([str(era_sim["parquet"].parent)], era_sim["oms"], model_path, out)
        assert cli_main([*args, "--dask", address, "--task-ls", "1000"]) == 0
    finally:
        client.unregister_worker_plugin("kill-on-second-task")
    killed_pid, killed_task = flag.read_text().split()
    assert int(killed_pid) in pids_before
    assert int(killed_pid) not in client.run(os.getpid).values()  # it really died
    assert "-judge-" in killed_task
    assert_same_outputs(out, era_out)  # its task was judged again elsewhere


def _shifted_copy(source: Path, path: Path, n_ls: int, run_offset: int) -> Path:
    """The first `n_ls` LS of `source` under other run numbers, in row groups of n_ls // 3."""
    table = pq.read_table(source).slice(0, n_ls)
    runs = pc.add(table.column("run_number"), pa.scalar(run_offset, pa.int64()))
    table = table.set_column(table.schema.get_field_index("run_number"), "run_number", runs)
    pq.write_table(table, path, row_group_size=n_ls // 3, compression="zstd")
    return path


def _damage_row_group(path: Path, row_group: int) -> None:
    """Flip bytes inside the compressed maps of one row group, as a bad disk or copy would."""
    metadata = pq.ParquetFile(path).metadata
    column = next(
        i for i in range(metadata.num_columns) if metadata.schema.column(i).path.startswith("data.")
    )
    chunk = metadata.row_group(row_group).column(column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    raw = bytearray(path.read_bytes())
    middle = start + chunk.total_compressed_size // 2
    raw[middle : middle + 64] = bytes(b ^ 0x5A for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))


def test_a_corrupt_file_is_named_and_the_good_files_are_written(
    cluster, era_sim, model_path, tmp_path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    extra = _shifted_copy(era_sim["parquet"], inputs / "extra.parquet", 900, 5000)
    corrupt = _shifted_copy(era_sim["parquet"], inputs / "corrupt.parquet", 900, 7000)
    _damage_row_group(corrupt, 1)
    broken = inputs / "broken.parquet"
    broken.write_text("not a parquet file")
    # the good extra file as a URL: workers open it through fsspec
    parquet = [str(era_sim["parquet"]), extra.as_uri(), str(corrupt), str(broken)]
    address, _ = cluster

    outcomes = {}
    for where, extra_args in (("local", []), ("dask", ["--dask", address, "--task-ls", "600"])):
        out = tmp_path / where
        args = era_args(parquet, era_sim["oms"], model_path, out)
        assert cli_main([*args, *extra_args]) == 2
        outcomes[where] = out
    assert_same_outputs(outcomes["dask"], outcomes["local"])

    summary = json.loads((outcomes["dask"] / "era.json").read_text())
    assert summary["complete"] is False
    problems = summary["problems"]
    assert len(problems) == 2, problems
    assert f"{corrupt}, row group 1: cannot be decoded" in problems[0]
    assert problems[1].startswith(f"{broken} is not a readable parquet file")
    results = pd.read_parquet(outcomes["dask"] / "lumisections.parquet")
    n_sim = pq.ParquetFile(era_sim["parquet"]).metadata.num_rows
    by_run_offset = results.run // 1000 * 1000 - results.run.min() // 1000 * 1000
    assert (by_run_offset == 0).sum() == n_sim  # every LS of the good files
    assert (by_run_offset == 5000).sum() == 900
    corrupt_ls = results[by_run_offset == 7000].ls.to_numpy()
    first = pq.read_table(corrupt, columns=["ls_number"]).column(0).to_numpy()
    expected = np.concatenate([first[:300], first[600:]])  # row groups 0 and 2 of it
    np.testing.assert_array_equal(np.sort(corrupt_ls), np.sort(expected))


def test_tasks_follow_files_and_row_groups(era_sim) -> None:
    from pixelring2nmf.era.plan import plan_file

    plans = [plan_file(0, era_sim["parquet"]), plan_file(1, "file:///nowhere/x.parquet")]
    assert plans[1].failure == "DIALS parquet not found: file:///nowhere/x.parquet"
    tasks = plan_tasks(plans, 1500)
    assert [t.file_index for t in tasks] == [0] * len(tasks)
    assert sum(t.n_ls for t in tasks) == pq.ParquetFile(era_sim["parquet"]).metadata.num_rows
    assert [g for t in tasks for g in t.row_groups] == list(range(len(plans[0].row_groups)))
    runs = pq.read_table(era_sim["parquet"], columns=["run_number"]).column(0).to_numpy()
    assert tasks[0].runs == (runs.min(), runs[tasks[0].n_ls - 1])


def test_a_bad_dask_spec_is_a_clear_error(era_sim, tmp_path, capsys) -> None:
    args = ["era", "--parquet", str(era_sim["parquet"]), "--out", str(tmp_path / "o")]
    assert cli_main([*args, "--dask", "local:none", "--no-progress"]) == 2
    assert "expected local:N with N >= 1" in capsys.readouterr().err
