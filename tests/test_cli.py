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
    assert code == 2
    assert "the model reads the Ring 2 ME" in err and "PXRing_1" in err


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
