"""Certification outputs of `era`: golden.json, flagged.json, recorded luminosity, OMS links.

A small simulated era (3 runs of 250 LS, many anomalies) is judged with and without its OMS
file, and with an OMS file that lacks the luminosity and holds one run with no DCS-good LS.
Everything is checked against lumisections.* and against the OMS JSON file itself.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from mlserver_model.dftools import DCS_FLAGS
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era.certification import (
    NO_LUMI_WARNING,
    NO_OMS_GOLDEN_WARNING,
    certification_json,
    ls_ranges,
)
from pixelring2nmf.era.output import output_names
from pixelring2nmf.sim import simulate as simulator

LUMI = "recorded_lumi_per_lumisection"


@pytest.fixture(scope="module")
def small_era(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cert_sim")
    return simulator.simulate(out, runs=3, seed=18, ls_per_run=250, anomaly_rate=0.04)


def _era(small_era, model_path: Path, out: Path, oms: Path | None) -> Path:
    args = ["era", "--parquet", str(small_era["parquet"]), "--model", str(model_path)]
    args += ["--out", str(out), "--xlsx", "--no-progress", "--workers", "1"]
    args += ["--oms", str(oms)] if oms is not None else []
    assert cli_main(args) == 0
    return out


@pytest.fixture(scope="module")
def with_oms(small_era, model_path, tmp_path_factory) -> Path:
    return _era(small_era, model_path, tmp_path_factory.mktemp("cert_oms"), small_era["oms"])


@pytest.fixture(scope="module")
def without_oms(small_era, model_path, tmp_path_factory) -> Path:
    return _era(small_era, model_path, tmp_path_factory.mktemp("cert_no_oms"), None)


def _load(out: Path, name: str) -> dict[str, list[list[int]]]:
    return json.loads((out / name).read_text())


def _expand(ranges: dict[str, list[list[int]]]) -> set[tuple[int, int]]:
    return {
        (int(run), ls) for run, spans in ranges.items() for a, b in spans for ls in range(a, b + 1)
    }


def _check_format(ranges: dict[str, list[list[int]]]) -> None:
    """Keys are run numbers as strings, ascending; ranges inclusive, sorted, merged."""
    runs = list(ranges)
    assert runs == sorted(runs, key=int) and all(run.isdigit() for run in runs)
    for spans in ranges.values():
        assert spans, "a run with no LS of the kind is left out, not listed empty"
        for first, last in spans:
            assert isinstance(first, int) and isinstance(last, int) and first <= last
        for (_, last), (first, _) in itertools.pairwise(spans):
            assert first > last + 1  # sorted, disjoint, and never two touching ranges


def _oms_table(path: Path) -> pd.DataFrame:
    raw = json.loads(path.read_text())
    table = pd.DataFrame(raw)
    table["good"] = np.logical_and.reduce([table[f].eq(True).to_numpy() for f in DCS_FLAGS])
    return table.rename(columns={"run_number": "run", "lumisection_number": "ls"})


def test_ls_ranges_are_inclusive_and_merged() -> None:
    assert ls_ranges(np.array([1, 2, 3, 5, 7, 8, 9])) == [[1, 3], [5, 5], [7, 9]]
    assert ls_ranges(np.array([], dtype=int)) == []
    results = pd.DataFrame({"run": [2, 1, 1, 1], "ls": [4, 3, 1, 2], "x": [1, 1, 0, 1]})
    assert certification_json(results, results.x == 1) == {"1": [[2, 3]], "2": [[4, 4]]}


def test_golden_and_flagged_partition_the_dcs_good_ls(with_oms, small_era) -> None:
    lumis = pd.read_parquet(with_oms / "lumisections.parquet")
    golden, flagged = _load(with_oms, "golden.json"), _load(with_oms, "flagged.json")
    _check_format(golden)
    _check_format(flagged)
    keys = set(zip(lumis.run.tolist(), lumis.ls.tolist(), strict=True))
    good = set(map(tuple, lumis.loc[lumis.dcs_good, ["run", "ls"]].to_numpy().tolist()))
    assert set(map(tuple, lumis.loc[lumis.flag, ["run", "ls"]].to_numpy().tolist())) == _expand(
        flagged
    )
    assert _expand(golden) | _expand(flagged) == good
    assert not _expand(golden) & _expand(flagged)
    assert len(flagged) >= 2 and sum(lumis.flag) > 0  # the era has flags to certify away
    # and DCS-good is what the OMS file says, not what the tables assumed
    oms = _oms_table(small_era["oms"])
    oms_good = set(map(tuple, oms.loc[oms.good, ["run", "ls"]].to_numpy().tolist()))
    assert good == oms_good & keys
    # LS the OMS file has but the data lack were never judged: in neither file
    assert (set(map(tuple, oms[["run", "ls"]].to_numpy().tolist())) - keys).isdisjoint(
        _expand(golden) | _expand(flagged)
    )


def test_files_are_listed_and_era_json_comes_last(with_oms) -> None:
    assert {"golden.json", "flagged.json"} <= set(output_names())
    assert output_names()[-1] == "era.json"
    status = json.loads((with_oms / "era.json").read_text())
    assert {"golden.json", "flagged.json"} <= set(status["outputs"])
    assert status["oms"]["certification_grade"] is True
    assert status["oms"]["recorded_lumi"] == "read (pb^-1)"
    last = (with_oms / "era.json").stat().st_mtime_ns
    assert all((with_oms / name).stat().st_mtime_ns <= last for name in status["outputs"])


def test_recorded_lumi_per_ls_range_and_run_is_the_oms_sum(with_oms, small_era) -> None:
    oms = _oms_table(small_era["oms"]).set_index(["run", "ls"])
    lumis = pd.read_parquet(with_oms / "lumisections.parquet")
    assert list(lumis.columns)[-2:] == ["recorded_lumi", "model"]  # the engine appends model
    expected = oms[LUMI].reindex(pd.MultiIndex.from_frame(lumis[["run", "ls"]])).to_numpy()
    np.testing.assert_allclose(lumis.recorded_lumi.to_numpy(), expected)

    def oms_sum(run: int, first: int, last: int, only: set | None = None) -> float:
        rows = oms.loc[run].loc[first:last]
        if only is not None:
            rows = rows[[(run, ls) in only for ls in rows.index]]
        return float(rows[LUMI].sum())

    powergroup = pd.read_csv(with_oms / "powergroup.csv")
    condensed = pd.read_csv(with_oms / "condensed.csv")
    assert list(powergroup.columns)[-1] == "Recorded_Lumi_pb"
    assert list(condensed.columns)[-1] == "Recorded Lumi (pb^-1)"
    assert len(powergroup) >= 5
    for row in powergroup.itertuples():
        want = oms_sum(row.Run_Number, row.Start_LS, row.End_LS)
        assert row.Recorded_Lumi_pb == pytest.approx(want, abs=1e-5)
    np.testing.assert_allclose(condensed["Recorded Lumi (pb^-1)"], powergroup.Recorded_Lumi_pb)

    summary = pd.read_csv(with_oms / "run_summary.csv")
    assert list(summary.columns)[-4:] == [
        "Same-Disk_LS",
        "DCS_Good_Lumi_pb",
        "Flagged_Lumi_pb",
        "Model",  # the model that judged the run, last (models by period)
    ]
    good = set(map(tuple, lumis.loc[lumis.dcs_good, ["run", "ls"]].to_numpy().tolist()))
    flagged = set(map(tuple, lumis.loc[lumis.flag, ["run", "ls"]].to_numpy().tolist()))
    for row in summary.itertuples():
        assert row.DCS_Good_Lumi_pb == pytest.approx(oms_sum(row.Run_Number, 1, 10**6, good))
        assert row.Flagged_Lumi_pb == pytest.approx(oms_sum(row.Run_Number, 1, 10**6, flagged))
        assert 0 < row.Flagged_Lumi_pb < row.DCS_Good_Lumi_pb


def test_xlsx_run_cells_link_to_the_oms_run_report(with_oms) -> None:
    workbook = openpyxl.load_workbook(with_oms / "era.xlsx")
    checked = 0
    for sheet in ("Condensed", "Power groups", "Per LS", "Run summary"):
        worksheet = workbook[sheet]
        assert worksheet["A1"].value in ("Run", "Run_Number")
        for (cell,) in worksheet.iter_rows(min_row=2, max_col=1):
            target = f"https://cmsoms.cern.ch/cms/runs/report?cms_run={cell.value}"
            assert cell.hyperlink is not None and cell.hyperlink.target == target
            checked += 1
    assert checked >= 10


def test_without_oms_every_ls_is_dcs_good_and_lumi_is_empty(without_oms) -> None:
    lumis = pd.read_parquet(without_oms / "lumisections.parquet")
    assert lumis.dcs_good.all() and lumis.recorded_lumi.isna().all()
    golden = _expand(_load(without_oms, "golden.json"))
    assert golden == set(map(tuple, lumis.loc[~lumis.flag, ["run", "ls"]].to_numpy().tolist()))
    status = json.loads((without_oms / "era.json").read_text())
    assert NO_OMS_GOLDEN_WARNING in status["warnings"]
    assert NO_LUMI_WARNING in status["warnings"]
    assert status["oms"]["certification_grade"] is False
    assert status["oms"]["recorded_lumi"].startswith("absent")
    powergroup = pd.read_csv(without_oms / "powergroup.csv")
    assert len(powergroup) and powergroup.Recorded_Lumi_pb.isna().all()  # empty, never 0
    summary = pd.read_csv(without_oms / "run_summary.csv")
    assert summary.DCS_Good_Lumi_pb.isna().all() and summary.Flagged_Lumi_pb.isna().all()


def test_oms_without_lumi_and_a_run_with_no_good_ls(small_era, model_path, tmp_path) -> None:
    raw = json.loads(small_era["oms"].read_text())
    del raw[LUMI]
    dark = raw["run_number"][0]  # the first run: DCS off all along
    raw["beams_stable"] = [
        False if run == dark else value
        for run, value in zip(raw["run_number"], raw["beams_stable"], strict=True)
    ]
    oms = tmp_path / "oms.json"
    oms.write_text(json.dumps(raw))
    out = _era(small_era, model_path, tmp_path / "out", oms)
    golden, flagged = _load(out, "golden.json"), _load(out, "flagged.json")
    assert str(dark) not in golden and str(dark) not in flagged  # left out, not []
    assert len(golden) == 2
    status = json.loads((out / "era.json").read_text())
    assert NO_LUMI_WARNING in status["warnings"] and NO_OMS_GOLDEN_WARNING not in status["warnings"]
    assert status["oms"]["certification_grade"] is True
    assert pd.read_parquet(out / "lumisections.parquet").recorded_lumi.isna().all()
    summary = pd.read_csv(out / "run_summary.csv")
    assert summary.loc[summary.Run_Number == dark, "DCS_Good_LS"].item() == 0
    assert summary.DCS_Good_Lumi_pb.isna().all()
