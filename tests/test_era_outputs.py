"""`era`'s folder never lies: every way a run ends leaves an era.json that says how and why.

Run on purpose with bad input, killed, terminated, interrupted, on a full disk, with OMS data
that cover nothing or part of the era, and with a bug planted inside judging. The processes
are real (`python -m pixelring2nmf.cli era ...`), and so are the signals, the files and, where
the machine allows a mount, the full disk (a small tmpfs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, cli_command

from mlserver_model.dftools import DCS_FLAGS
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era.output import output_names
from pixelring2nmf.io.results import ERA_RESULT_COLUMNS
from pixelring2nmf.sim import simulate as simulator

TABLES = ("condensed", "powergroup", "per_ls", "run_summary", "persistent")
POLL_S = 0.002  # between two looks at a folder or a pipe: observation, never a fixed wait


@pytest.fixture(scope="module")
def big_era(tmp_path_factory) -> dict[str, Path]:
    """24,000 LS in runs of 1,000: long enough to stop a run in the middle of its work."""
    out = tmp_path_factory.mktemp("big_era")
    return simulator.simulate(out, runs=24, seed=5, ls_per_run=1000)


@pytest.fixture(scope="module")
def big_reference(big_era, model_path, tmp_path_factory) -> pd.DataFrame:
    """The per-LS results of a complete run of the big era (in this process, one worker)."""
    out = tmp_path_factory.mktemp("big_reference")
    assert cli_main(era_args(big_era, model_path, out, "--workers", "1")) == 0
    return pd.read_parquet(out / "lumisections.parquet")


def era_args(era: dict[str, Path], model_path: Path, out: Path, *extra: str) -> list[str]:
    args = ["era", "--parquet", str(era["parquet"]), "--oms", str(era["oms"])]
    return [*args, "--model", str(model_path), "--out", str(out), *extra]


def status(out: Path) -> dict:
    return json.loads((out / "era.json").read_text())


def assert_tables_have_headers(out: Path) -> None:
    for name in TABLES:
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table.columns) >= 5, name  # the header row is there
    # ..., pileup, recorded_lumi, then the model column the engine appends
    assert len(pd.read_parquet(out / "lumisections.parquet").columns) == len(ERA_RESULT_COLUMNS) + 1


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the awaited moment never came"
        time.sleep(POLL_S)


# ---- nothing judged --------------------------------------------------------------------------


def _bad_input(kind: str, demo_files, tmp_path: Path) -> list[str]:
    parquet, oms = demo_files
    if kind == "empty parquet":
        empty = tmp_path / "empty.parquet"
        empty.write_bytes(b"")
        return ["--parquet", str(empty), "--oms", str(oms)]
    if kind == "truncated parquet":
        cut = tmp_path / "cut.parquet"
        cut.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])
        return ["--parquet", str(cut), "--oms", str(oms)]
    if kind == "CSV as --parquet":
        csv = tmp_path / "flags.csv"
        csv.write_text("run,ls\n1,2\n")
        return ["--parquet", str(csv), "--oms", str(oms)]
    columns = json.loads(oms.read_text())
    if kind == "text DCS flags":
        columns["beams_stable"] = ["true" if v else "false" for v in columns["beams_stable"]]
    else:  # a DCS flag missing
        del columns["tecm_ready"]
    bad_oms = tmp_path / "omsdata_bad.json"
    bad_oms.write_text(json.dumps(columns))
    return ["--parquet", str(parquet), "--oms", str(bad_oms)]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty parquet", "is not a readable parquet file"),
        ("truncated parquet", "is not a readable parquet file"),
        ("CSV as --parquet", "is not a readable parquet file"),
        ("text DCS flags", "DCS flag 'beams_stable' must hold bool/0/1/null values, got '"),
        ("missing DCS flag", "missing ['tecm_ready']"),
    ],
)
def test_nothing_judged_says_why_and_writes_every_table(
    kind, reason, demo_files, model_path, tmp_path
) -> None:
    out = tmp_path / "out"
    args = [*_bad_input(kind, demo_files, tmp_path), "--model", str(model_path)]
    done = subprocess.run(
        cli_command("era", *args, "--out", str(out), "--xlsx", "--no-progress"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and reason in done.stderr
    summary = status(out)
    assert summary["complete"] is False and reason in summary["reason"]
    assert_tables_have_headers(out)
    assert (out / "era.xlsx").is_file()


def test_an_input_with_no_ls_is_incomplete(demo_files, model_path, tmp_path, capsys) -> None:
    parquet, _ = demo_files
    empty = tmp_path / "no_rows.parquet"
    pq.write_table(pq.read_table(parquet).slice(0, 0), empty)
    args = ["era", "--parquet", str(empty), "--model", str(model_path), "--out", str(tmp_path)]
    assert cli_main([*args, "--no-progress", "--force"]) == 2
    assert "no LS to judge" in capsys.readouterr().err
    assert status(tmp_path)["complete"] is False
    assert_tables_have_headers(tmp_path)


# ---- OMS coverage ------------------------------------------------------------------------------


def _oms_variant(oms: Path, kind: str, tmp_path: Path) -> Path:
    columns = json.loads(oms.read_text())
    if kind == "none":
        columns["run_number"] = [run + 1 for run in columns["run_number"]]
    elif kind == "partial":
        keep = [i for i, ls in enumerate(columns["lumisection_number"]) if ls <= 300]
        columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    else:  # no DCS columns
        for flag in DCS_FLAGS:
            del columns[flag]
    path = tmp_path / f"oms_{kind.replace(' ', '_')}.json"
    path.write_text(json.dumps(columns))
    return path


@pytest.mark.parametrize(
    ("kind", "warning", "entry"),
    [
        ("none", "has no OMS data for any of the 750 LS", {"n_covered": 0}),
        ("partial", "covers 300 of 750 LS", {"runs_partly_covered": {"390000": [300, 750]}}),
        ("no DCS columns", "none of the 8 DCS flag columns", {"dcs_filter": "not applied"}),
        ("no --oms", "No OMS data given (--oms)", {"dcs_filter": "not applied"}),
    ],
)
def test_oms_coverage_is_said_and_recorded(
    kind, warning, entry, demo_files, model_path, tmp_path, capsys
) -> None:
    parquet, oms = demo_files
    args = ["era", "--parquet", str(parquet), "--model", str(model_path)]
    if kind != "no --oms":
        args += ["--oms", str(_oms_variant(oms, kind, tmp_path))]
    assert cli_main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "[WARNING]: " in capsys.readouterr().out
    summary = status(tmp_path / "out")
    assert any(warning in line for line in summary["warnings"]), summary["warnings"]
    for key, value in entry.items():
        assert str(summary["oms"][key]).startswith(str(value)), summary["oms"]


# ---- a bug inside judging ----------------------------------------------------------------------

PLANTED_BUG = """
import sys
import pixelring2nmf.era.verdict as verdict
real = verdict.results_table
calls = []
def results_table(*args):
    calls.append(1)
    if len(calls) == 3:
        raise ZeroDivisionError("planted inside judging")
    return real(*args)
verdict.results_table = results_table
from pixelring2nmf.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bug_inside_judging_is_a_traceback_and_exit_1(
    workers, big_era, model_path, tmp_path
) -> None:
    out = tmp_path / "out"
    args = era_args(big_era, model_path, out, "--workers", workers, "--no-progress")
    done = subprocess.run(
        [sys.executable, "-c", PLANTED_BUG, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ZeroDivisionError: planted inside judging" in done.stderr
    assert "error: planted" not in done.stderr  # never disguised as a user error
    summary = status(out)
    assert summary["complete"] is False and summary["state"] == "failed"
    assert summary["reason"] == "internal error: ZeroDivisionError: planted inside judging"
    assert_tables_have_headers(out)  # what was judged before the bug is kept


# ---- killed, terminated, interrupted ---------------------------------------------------------


def _start(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )


@pytest.mark.parametrize(
    "moment",
    ["era.json running", "lumisections.parquet", "lumisections.csv", "per_ls.csv", "era.xlsx"],
)
def test_sigkill_during_a_force_rerun_never_leaves_complete_true(
    moment, big_era, model_path, tmp_path
) -> None:
    out = tmp_path / "out"
    args = era_args(big_era, model_path, out, "--xlsx", "--no-progress", "--force")
    assert cli_main(args) == 0 and status(out)["complete"] is True  # a finished earlier run
    before = {name: (out / name).stat().st_mtime_ns for name in output_names()}
    rerun = _start(args)

    def reached() -> bool:
        path = out / ("era.json" if moment == "era.json running" else moment)
        with contextlib.suppress(OSError, ValueError):
            if path.stat().st_mtime_ns != before.get(path.name):
                return moment != "era.json running" or status(out)["state"] == "running"
        return rerun.poll() is not None  # finished before the moment could be seen

    wait_for(reached)
    rerun.kill()
    rerun.wait(timeout=60)
    rerun.stdout.close()
    rerun.stderr.close()
    summary = status(out)
    assert rerun.returncode == -signal.SIGKILL, "the rerun ended before the kill"
    for name in TABLES:  # a table that is there is whole (written, then renamed)
        path = out / f"{name}.csv"
        if path.exists():
            assert len(pd.read_csv(path).columns) >= 5
    if summary["complete"]:  # killed after its last write: then everything is this run's
        assert summary["state"] == "finished" and moment == "era.xlsx", (moment, summary)
        assert all((out / name).stat().st_mtime_ns > before[name] for name in output_names())
    else:
        assert summary["state"] == "running", (moment, summary)


def _read_progress(process: subprocess.Popen, seen: list[int]) -> None:
    """tqdm's `n/total` counts on stderr, as they come (a thread: the pipe must be drained)."""
    buffer = b""
    while chunk := process.stderr.read1(4096):
        buffer += chunk
        seen.extend(int(n) for n in re.findall(rb"(\d+)/\d+ \[", buffer))
        buffer = buffer[-200:]


@pytest.mark.parametrize(
    ("how", "options"),
    [
        ("SIGTERM", ["--workers", "1"]),
        ("SIGTERM", ["--workers", "2"]),
        ("Ctrl-C", ["--workers", "2"]),
        ("Ctrl-C", ["--dask", "local:2"]),
    ],
)
def test_an_interrupted_run_keeps_what_it_judged(
    how, options, big_era, big_reference, model_path, tmp_path
) -> None:
    out = tmp_path / "out"
    process = _start(era_args(big_era, model_path, out, *options), start_new_session=True)
    seen: list[int] = []
    reader = threading.Thread(target=_read_progress, args=(process, seen), daemon=True)
    reader.start()
    wait_for(lambda: (seen and seen[-1] >= 2000) or process.poll() is not None)
    assert process.poll() is None, "the run ended before it could be interrupted"
    if how == "SIGTERM":
        process.send_signal(signal.SIGTERM)  # to the main process only, as a batch system does
    else:
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    stdout = process.stdout.read().decode()
    process.wait(timeout=120)
    reader.join(timeout=10)
    assert process.returncode == 130
    assert f"INTERRUPTED by {how}" in stdout
    summary = status(out)
    assert summary["complete"] is False and summary["state"] == "interrupted"
    assert summary["reason"] == f"interrupted by {how}"
    kept = pd.read_parquet(out / "lumisections.parquet")
    assert 2000 <= len(kept) < len(big_reference)
    reference = big_reference.set_index(["run", "ls"]).loc[
        list(zip(kept.run, kept.ls, strict=True))
    ]
    pd.testing.assert_frame_equal(kept.set_index(["run", "ls"]), reference)


def test_ctrl_c_leaves_one_line_and_no_worker_traceback(big_era, model_path, tmp_path) -> None:
    out = tmp_path / "out"
    process = _start(
        era_args(big_era, model_path, out, "--dask", "local:2"), start_new_session=True
    )
    seen: list[int] = []
    errors: list[bytes] = []

    def read() -> None:
        while chunk := process.stderr.read1(4096):
            errors.append(chunk)
            seen.extend(int(n) for n in re.findall(rb"(\d+)/\d+ \[", chunk))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: (seen and seen[-1] >= 2000) or process.poll() is not None)
    os.killpg(process.pid, signal.SIGINT)
    process.stdout.read()
    process.wait(timeout=120)
    reader.join(timeout=10)
    text = b"".join(errors).decode(errors="replace")
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip() and "era:" not in line]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert lines == [], lines  # the summary is on stdout; stderr holds only the progress bar


# ---- a full disk -------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"no tmpfs here ({mounted.stderr.decode().strip()}): the injected case runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_one_line_and_keeps_the_finished_files(
    demo_files, model_path, tmp_path
) -> None:
    """A real full disk: a 48 kB tmpfs holds era.json and the parquet, not the CSV."""
    parquet, oms = demo_files
    with small_disk(tmp_path / "disk", "48k") as disk:
        out = disk / "out"
        done = subprocess.run(
            cli_command(
                "era",
                "--parquet",
                str(parquet),
                "--oms",
                str(oms),
                "--model",
                str(model_path),
                "--out",
                str(out),
                "--no-progress",
            ),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert f"cannot write {out / 'lumisections.csv'}: No space left on device" in line
        assert len(pd.read_parquet(out / "lumisections.parquet")) == 750  # kept, whole
        summary = status(out)
        assert summary["complete"] is False and summary["state"] == "failed"
        assert "No space left on device" in summary["reason"]
        assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_an_enospc_at_the_file_layer_is_one_line(
    demo_files, model_path, tmp_path, monkeypatch, capsys
):
    """Where no tmpfs can be mounted: the same failure, raised where files are renamed."""
    import pixelring2nmf.io.atomic as atomic

    parquet, oms = demo_files
    renames = []
    real_replace = os.replace

    def replace(source, target):
        renames.append(Path(target).name)
        if Path(target).name == "per_ls.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source))
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", replace)
    out = tmp_path / "out"
    args = ["era", "--parquet", str(parquet), "--oms", str(oms), "--model", str(model_path)]
    assert cli_main([*args, "--out", str(out), "--no-progress", "--workers", "1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot write {out / 'per_ls.csv'}: No space left on device" in line
    for name in ("lumisections.parquet", "lumisections.csv", "condensed.csv", "powergroup.csv"):
        assert (out / name).is_file(), name  # written before the failure, kept
    assert not (out / "per_ls.csv").exists()
    assert status(out)["state"] == "failed" and not status(out)["complete"]
    assert len(pd.read_csv(out / "lumisections.csv")) == 750
