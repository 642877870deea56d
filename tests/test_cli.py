"""The command line as a hurried user meets it: clear messages, no lost work, no surprises.

Each test runs `pixelring2nmf` in-process (`cli.main`) on real files and checks the exit code
and what it printed: errors end with one line naming the file and the problem (exit 2), and
outputs are checked before the work starts.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, cli_command

from mlserver_model import __version__
from pixelring2nmf import cli


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelring2nmf {__version__}"


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []
    assert len(subparsers.choices) >= 7


def test_predict_without_oms_says_the_dcs_filter_was_skipped(demo_files, tmp_path, capsys):
    parquet, _ = demo_files
    code, out, _ = run(capsys, "predict", "--parquet", parquet)
    assert code == 0
    assert "[WARNING]: No OMS data given (--oms): the DCS filter was skipped" in out


def test_predict_with_the_oms_file_of_another_run_warns(demo_files, tmp_path, capsys):
    parquet, oms = demo_files
    columns = json.loads(oms.read_text())
    columns["run_number"] = [r + 1 for r in columns["run_number"]]
    other = tmp_path / "omsdata_other.json"
    other.write_text(json.dumps(columns))
    code, out, _ = run(capsys, "predict", "--parquet", parquet, "--oms", other)
    assert code == 0
    assert f"{other} has no OMS data for any of the 750 LS (runs [390000])" in out
    assert "selected 0 out of 750 lumisections" in out


def test_predict_refuses_a_fractional_ls_number(demo_files, tmp_path, capsys):
    """LS 1.5 would otherwise be read as LS 1 and lend it DCS flags it does not have."""
    parquet, oms = demo_files
    columns = json.loads(oms.read_text())
    columns["lumisection_number"][3] = 1.5
    fractional = tmp_path / "omsdata_fractional.json"
    fractional.write_text(json.dumps(columns))
    code, out, err = run(capsys, "predict", "--parquet", parquet, "--oms", fractional)
    assert code == 2
    assert (
        "OMS column 'lumisection_number' must hold integers, found 1 non-integer value(s), "
        "e.g. 1.5" in err
    )
    assert "Traceback" not in err and "Flagging results" not in out


def test_log_lines_have_one_prefix(demo_files, capsys) -> None:
    parquet, oms = demo_files
    code, out, _ = run(capsys, "predict", "--parquet", parquet, "--oms", oms)
    assert code == 0
    lines = [line for line in out.splitlines() if "Flagging results" in line]
    assert len(lines) == 2 and all(line.startswith("[INFO]: Flagging") for line in lines)
    assert "[pixelring2nmf]" not in out and "[INFO]: [INFO]" not in out


def test_predict_creates_the_output_folder_first(demo_files, tmp_path, capsys) -> None:
    parquet, oms = demo_files
    out_csv = tmp_path / "new" / "deeper" / "flags.csv"
    code, _, _ = run(capsys, "predict", "--parquet", parquet, "--oms", oms, "--out", out_csv)
    assert code == 0 and len(pd.read_csv(out_csv)) == 750


def test_an_unwritable_output_fails_before_the_work(demo_files, tmp_path, capsys) -> None:
    parquet, _ = demo_files
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = run(capsys, "predict", "--parquet", parquet, "--out", blocker / "flags.csv")
    assert code == 2
    assert f"cannot create the folder {blocker}" in err
    assert "Flagging results" not in out  # nothing was computed, so nothing was lost


@pytest.mark.parametrize("what", ["parquet as --oms", "folder as --parquet", "folder as --oms"])
def test_wrong_kinds_of_file_are_named(demo_files, tmp_path, capsys, what: str) -> None:
    parquet, oms = demo_files
    args = {
        "parquet as --oms": ("--parquet", parquet, "--oms", parquet),
        "folder as --parquet": ("--parquet", parquet.parent, "--oms", oms),
        "folder as --oms": ("--parquet", parquet, "--oms", oms.parent),
    }[what]
    code, _, err = run(capsys, "predict", *args)
    expected = {
        "parquet as --oms": f"{parquet} is not an OMS JSON file: it is binary",
        "folder as --parquet": f"{parquet.parent} is a folder: give the DIALS parquet file(s)",
        "folder as --oms": f"{oms.parent} is a folder: give the OMS JSON file",
    }[what]
    assert code == 2 and expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_ring1_me_is_refused(demo_files, tmp_path, capsys) -> None:
    parquet, _ = demo_files
    table = pq.read_table(parquet)
    ring1 = table.column("me").to_pylist()[0].replace("PXRing_2", "PXRing_1")
    relabelled = table.set_column(
        table.schema.get_field_index("me"), "me", pa.array([ring1] * len(table))
    )
    path = tmp_path / "ring1.parquet"
    pq.write_table(relabelled, path)
    code, _, err = run(capsys, "predict", "--parquet", path)
    assert code == 2  # the Ring 1 ME in Ring 2's binning: the file contradicts itself
    assert "expected y_bin = 92 for every row of the Ring 1 ME" in err and "[140.0]" in err


def test_simulate_refuses_a_non_empty_folder_without_force(tmp_path, capsys) -> None:
    out = tmp_path / "sim"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    args = ("simulate", "--out", out, "--runs", "1", "--ls-per-run", "40", "--clean")
    code, _, err = run(capsys, *args)
    assert code == 2 and f"{out} is not empty; pass --force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, _ = run(capsys, *args, "--force")
    assert code == 0 and (out / "truth.csv").exists() and (out / "notes.txt").exists()


def test_train_refuses_to_overwrite_reports_the_fit_and_takes_truth_csv(tmp_path, capsys):
    sim = tmp_path / "sim"
    code, _, _ = run(capsys, "simulate", "--out", sim, "--runs", "1", "--ls-per-run", "300")
    assert code == 0
    (parquet,) = sim.glob("*.parquet")
    model = tmp_path / "model.joblib"
    model.write_bytes(b"an older model")
    args = ("train", "--parquet", parquet, "--oms", sim / "omsdata_Run2025Z-v1.json")
    args += ("--exclude", sim / "truth.csv", "--passes", "20", "--out", model)
    code, _, err = run(capsys, *args)
    assert code == 2 and "--force" in err and model.read_bytes() == b"an older model"
    code, out, _ = run(capsys, *args, "--force")
    assert code == 0
    assert "Fit report:" in out and "reconstruction error" in out and "model error eps" in out
    assert "LS used per run: 390000: " in out
    truth = pd.read_csv(sim / "truth.csv")
    from mlserver_model.pixelring2nmf import PixelRing2NMF

    exclusions = PixelRing2NMF.load(model).metadata["training"]["exclusions"]
    assert len(exclusions) == len(truth)  # every anomalous LS of truth.csv left out


def test_serve_on_a_busy_port_fails_in_one_line(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            cli_command("serve", "--port", str(port)),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr and "Loaded" not in out.stdout


def test_the_figure_script_runs_as_the_readme_says(tmp_path) -> None:
    """README: `.venv/bin/python docs/make_figures.py` (the right panel needs the reference)."""
    out = tmp_path / "figure.png"
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "make_figures.py"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 10_000


# ---- the error policy: one line for what the user can fix, a traceback for a bug -----------


def test_a_bug_in_a_command_is_a_traceback_and_exit_1(demo_files) -> None:
    """An internal error is never reported as the user's bad input (one line, exit 2)."""
    parquet, _ = demo_files
    planted = (
        "import sys, pixelring2nmf.io.results as r\n"
        "def broken(*args): raise ValueError('planted: a shape bug')\n"
        "r.results_table = broken\n"
        "from pixelring2nmf.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", planted, "predict", "--parquet", str(parquet)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: planted: a shape bug" in done.stderr
    assert "error: planted" not in done.stderr


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere.parquet"
    code, _, err = run(capsys, "predict", "--parquet", missing)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "-v", "predict", "--parquet", missing)
    assert code == 2 and "Traceback" in err and "DataError" in err
    assert (
        err.strip().splitlines()[-1]
        == f"pixelring2nmf predict: error: DIALS parquet not found: {missing}"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--port", "80000"), "expected a TCP port in 1..65535, got 80000"),
        (("era", "--parquet", "x", "--out", "y", "--workers", "0"), "expected a positive integer"),
        (("simulate", "--out", "y", "--anomaly-rate", "-1"), "expected a finite number >= 0"),
        (
            ("era", "--parquet", "x", "--out", "y", "--workers", "2", "--dask", "local:2"),
            "not allowed with argument",
        ),
    ],
)
def test_an_impossible_option_is_one_usage_error(capsys, args, message) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(list(args))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly(demo_files) -> None:
    """`predict ... | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    parquet, oms = demo_files
    command = " ".join(cli_command("predict", "--parquet", str(parquet), "--oms", str(oms)))
    done = subprocess.run(
        f"{command} | head -1; echo status=${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.stdout.splitlines()[0].startswith("[INFO]: Flagging results (before filtering)")
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.stdout.splitlines()[-1] in ("status=0", "status=141")


def test_predict_refuses_to_overwrite_without_force(demo_files, tmp_path, capsys) -> None:
    parquet, oms = demo_files
    out = tmp_path / "flags.csv"
    out.write_text("someone's results")
    code, _, err = run(capsys, "predict", "--parquet", parquet, "--oms", oms, "--out", out)
    assert code == 2 and f"--out {out} exists; pass --force" in err
    assert out.read_text() == "someone's results"
    code, _, _ = run(capsys, "predict", "--parquet", parquet, "--oms", oms, "--out", out, "--force")
    assert code == 0 and len(pd.read_csv(out)) == 750


def test_a_wrong_exclusion_file_is_a_short_message(demo_files, tmp_path, capsys) -> None:
    """Given the parquet (or any large file) as --exclude, the message names the file and the
    columns it needs, and stays short (not the file's content)."""
    parquet, oms = demo_files
    args = ("train", "--parquet", parquet, "--oms", oms, "--out", tmp_path / "m.joblib")
    for wrong in (parquet, oms):
        code, _, err = run(capsys, *args, "--exclude", wrong)
        assert code == 2 and str(wrong) in err
        assert len(err) < 600, len(err)
        assert len(err.strip().splitlines()) == 1
