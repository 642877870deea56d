"""`pixelring2nmf era` on real parquet files: truth, formats, XLSX, predict, the served model.

The truth test needs a model that knows the simulated detector: the session's `model_path`
(conftest), which the shared server also serves. Comparisons with `predict` and with the served
model are LS by LS, never against numbers of one model file.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, cli_command, outputs_by_name

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.geometry import GROUP_ID_MAP, group_index
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era import tables
from pixelring2nmf.io.oms import OmsLookup
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.truthcheck import compare_with_truth


def _truth(era_sim: dict[str, Path]) -> pd.DataFrame:
    return pd.read_csv(era_sim["truth"], keep_default_na=False)


def test_tables_match_the_injected_anomalies(era_sim, era_out, model_path) -> None:
    from mlserver_model.pixelring2nmf import PixelRing2NMF

    powergroup = pd.read_csv(era_out / "powergroup.csv")
    comparison = compare_with_truth(
        powergroup, _truth(era_sim), PixelRing2NMF.load(model_path).unjudged_groups
    )
    assert all(comparison.injected[k] > 0 for k in ("Multi-Disk", "Quarter", "Single-Disk"))
    assert comparison.missed.empty, comparison.missed.to_string()
    assert comparison.false_rows.empty, comparison.false_rows.to_string()
    # the condensed table has the same ranges, one row each
    condensed = pd.read_csv(era_out / "condensed.csv")
    assert condensed[["Run", "First LS", "Last LS"]].values.tolist() == (
        powergroup[["Run_Number", "Start_LS", "End_LS"]].values.tolist()
    )


def test_tables_have_the_original_columns_and_value_formats(era_out) -> None:
    condensed = pd.read_csv(era_out / "condensed.csv")
    powergroup = pd.read_csv(era_out / "powergroup.csv")
    per_ls = pd.read_csv(era_out / "per_ls.csv")
    assert tuple(condensed.columns) == tables.CONDENSED_COLUMNS
    assert tuple(powergroup.columns) == tables.POWERGROUP_COLUMNS
    assert tuple(per_ls.columns) == tables.PER_LS_COLUMNS
    assert (condensed["Barrel/Forward"] == "Forward").all()
    assert (condensed["Row/Quarter"] == "Ring 2").all()
    assert condensed["Layer/Disk"].str.fullmatch(r"Disk -?[123](:-?[123])*").all()
    assert (condensed["Total LS"] == condensed["Last LS"] - condensed["First LS"] + 1).all()
    assert powergroup.Disk.astype(str).str.fullmatch(r"-?[123](:-?[123])*").all()
    assert (powergroup.Ring_Num == 2).all() and (per_ls.Ring_Num == 2).all()
    group = r"FPix_B[mp][IO]_D[123]_ROG[1-4]"
    assert powergroup.Powergroup.str.fullmatch(f"{group}(:{group})*").all()
    # every LS of the per-LS table lies in a range of the power-group table, with its groups
    for row in per_ls.itertuples():
        match = powergroup[
            (powergroup.Run_Number == row.Run_Number)
            & (powergroup.Start_LS <= row.Lumisection)
            & (powergroup.End_LS >= row.Lumisection)
        ]
        assert match.Powergroup.tolist() == [row.Powergroup]
    assert per_ls.shape[0] == powergroup.Num_LS.sum()


def test_run_summary_counts_every_ls(era_sim, era_out) -> None:
    summary = pd.read_csv(era_out / "run_summary.csv", keep_default_na=False)
    results = pd.read_parquet(era_out / "lumisections.parquet")
    assert summary.LS.sum() == len(results)
    assert summary.Flagged_LS.sum() == results.flag.sum()
    assert summary.DCS_Good_LS.sum() == results.dcs_good.sum()
    assert (summary.Persistent_Groups == "").all()  # nothing persists in this era
    oms = json.loads(era_sim["oms"].read_text())
    known = {
        (r, ls): p
        for r, ls, p in zip(
            oms["run_number"], oms["lumisection_number"], oms["pileup"], strict=True
        )
        if p is not None
    }
    pileup = [known.get((r, ls), np.nan) for r, ls in zip(results.run, results.ls, strict=True)]
    np.testing.assert_allclose(results.pileup.to_numpy(), pileup)


def test_xlsx_opens_with_pandas_and_holds_every_table(era_out) -> None:
    sheets = pd.read_excel(era_out / "era.xlsx", sheet_name=None)
    assert list(sheets) == ["Condensed", "Power groups", "Per LS", "Run summary", "Persistent"]
    for sheet, stem in (("Condensed", "condensed"), ("Power groups", "powergroup")):
        csv = pd.read_csv(era_out / f"{stem}.csv")
        pd.testing.assert_frame_equal(sheets[sheet], csv, check_dtype=False)
    assert len(sheets["Per LS"]) == len(pd.read_csv(era_out / "per_ls.csv"))


def test_per_ls_results_are_those_of_predict(era_sim, era_out, model_path, tmp_path) -> None:
    csv = tmp_path / "predict.csv"
    assert (
        cli_main(
            [
                "predict",
                "--parquet",
                str(era_sim["parquet"]),
                "--oms",
                str(era_sim["oms"]),
                "--model",
                str(model_path),
                "--out",
                str(csv),
            ]
        )
        == 0
    )
    predicted = pd.read_csv(csv, keep_default_na=False)
    era = pd.read_parquet(era_out / "lumisections.parquet")
    assert len(era) == len(predicted) > 3000
    columns = ["run", "ls", "flag", "type", "groups", "dcs_good", "dcs_failed"]
    pd.testing.assert_frame_equal(era[columns], predicted[columns], check_dtype=False)
    np.testing.assert_allclose(era.metric, predicted.metric, atol=1e-4)
    assert era.flag.sum() > 0


def test_era_matches_the_served_model_for_every_ls(
    demo_files, demo_body, demo_data, served_model, model_path, tmp_path
) -> None:
    """The session's model as MLServer serves it, on the demo run with OMS, LS by LS."""
    parquet, oms = demo_files
    args = ["era", "--parquet", str(parquet), "--oms", str(oms), "--model", str(model_path)]
    assert cli_main([*args, "--out", str(tmp_path), "--no-progress"]) == 0
    era = pd.read_parquet(tmp_path / "lumisections.parquet").set_index(["run", "ls"])
    body = json.loads(demo_body)
    body["outputs"] = [{"name": n} for n in ("Flag", "Metric", "AnomalyType", "Groups")]
    answer = served_model.infer(body)
    assert answer.status_code == 200, answer.text[:1000]
    served = outputs_by_name(answer.json())
    keys = list(
        zip(np.asarray(demo_data["run_number"]), np.asarray(demo_data["ls_number"]), strict=True)
    )
    ours = era.loc[keys]
    assert len(ours) == len(keys) == 750
    assert ours.flag.tolist() == served["Flag"]["data"]
    np.testing.assert_allclose(ours.metric, served["Metric"]["data"], atol=1e-4)
    assert ours.type.tolist() == served["AnomalyType"]["data"]
    assert ours.groups.tolist() == served["Groups"]["data"]
    assert ours.flag.sum() >= 1


def _run_with_dead_group(
    path: Path, dead: str, extra: str, extra_ls: range, n_ls: int = 200
) -> Path:
    """One clean run in which `dead` is dead at every LS and `extra` dies at `extra_ls`."""
    sim = simulator.simulate_run(
        391500, n_ls, simulator.default_detector(), np.random.default_rng(4), anomalies="none"
    )
    maps = sim.maps.copy()
    maps[:, GROUP_ID_MAP == group_index(dead)] = 0
    rows = np.flatnonzero(np.isin(sim.ls, list(extra_ls)))
    maps[np.ix_(rows, *np.nonzero(GROUP_ID_MAP == group_index(extra)))] = 0
    return simulator.write_dials_parquet(path, maps, sim.run, sim.ls)


def test_a_group_dead_all_run_is_reported_once_as_persistent(model_path, tmp_path) -> None:
    dead, extra = "FPix_BpI_D2_ROG3", "FPix_BpI_D2_ROG1"  # same disk: a Single-Disk pair
    parquet = _run_with_dead_group(tmp_path / "dead.parquet", dead, extra, range(50, 53))
    out = tmp_path / "out"
    args = ["era", "--parquet", str(parquet), "--model", str(model_path), "--out", str(out)]
    assert cli_main([*args, "--no-progress"]) == 0
    persistent = pd.read_csv(out / "persistent.csv")
    assert persistent[["Run_Number", "Powergroup"]].values.tolist() == [[391500, dead]]
    assert persistent.Fraction.iloc[0] > 0.9
    powergroup = pd.read_csv(out / "powergroup.csv")
    # hundreds of LS with only the dead group are not rows; the LS with one more group are
    assert powergroup[["Start_LS", "End_LS"]].values.tolist() == [[50, 52]]
    assert set(powergroup.Powergroup.iloc[0].split(":")) == {dead, extra}
    summary = pd.read_csv(out / "run_summary.csv")
    assert summary.Persistent_Groups.tolist() == [dead]


def test_bad_file_is_named_and_what_was_computed_is_kept(era_sim, model_path, tmp_path) -> None:
    bad = tmp_path / "inputs" / "broken.parquet"
    bad.parent.mkdir()
    bad.write_text("not a parquet file")
    out = tmp_path / "out"
    command = cli_command(
        "era", "--parquet", str(era_sim["parquet"]), str(bad), "--model", str(model_path)
    )
    done = subprocess.run(
        [*command, "--out", str(out), "--no-progress"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2
    assert "broken.parquet" in done.stderr and "not a readable parquet" in done.stderr
    assert "Traceback" not in done.stderr
    results = pd.read_parquet(out / "lumisections.parquet")
    assert len(results) > 3000  # the good file's LS were all written
    assert json.loads((out / "era.json").read_text())["complete"] is False
    assert "INCOMPLETE" in done.stdout


def test_missing_input_is_a_clear_error(tmp_path) -> None:
    done = subprocess.run(
        cli_command("era", "--parquet", str(tmp_path / "nope"), "--out", str(tmp_path / "o")),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert re.search(r"not found: .*nope", done.stderr) and "Traceback" not in done.stderr


def _oms_file(path: Path, runs: list[int], ls: list[float]) -> Path:
    path.write_text(json.dumps({"run_number": runs, "lumisection_number": ls}))
    return path


def test_oms_files_are_checked_as_one_table_and_named(tmp_path) -> None:
    """An LS in two OMS files is as ambiguous as one listed twice in a file."""
    first = _oms_file(tmp_path / "a.json", [1, 1], [1, 2])
    second = _oms_file(tmp_path / "b.json", [1, 2], [2, 1])
    with pytest.raises(ValueError, match=r"a\.json, .*b\.json: .*1 duplicated \(run, ls\)"):
        OmsLookup.read([first, second])
    fractional = _oms_file(tmp_path / "c.json", [2], [1.5])
    with pytest.raises(ValueError, match=r"c\.json: OMS column 'lumisection_number' must hold"):
        OmsLookup.read([first, fractional])
    lookup = OmsLookup.read([first, _oms_file(tmp_path / "d.json", [2], [1])])
    columns = lookup.columns_for(np.array([2, 1, 3]), np.array([1, 2, 1]))
    assert columns["lumisection_number"].tolist() == [1, 2, None]


def test_ranges_split_on_a_changed_set_and_on_gaps() -> None:
    a, b = "FPix_BmI_D2_ROG2", "FPix_BmI_D3_ROG2"
    results = pd.DataFrame(
        {
            "run": [1] * 7 + [2],
            "ls": [10, 11, 12, 13, 15, 16, 17, 1],
            "flag": [True, True, True, False, False, False, False, False],
            "metric": [5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "type": ["Multi-Disk"] * 3 + ["Single-Disk"] * 2 + ["none", "Single-Disk", "none"],
            "groups": [f"{a};{b}"] * 3 + [a, a, "", a, ""],
            "dcs_good": [True] * 8,
        }
    )
    out = tables.era_tables(results)
    assert out.powergroup[["Start_LS", "End_LS", "Num_LS"]].values.tolist() == [
        [10, 12, 3],
        [13, 13, 1],  # one group fewer: a new row
        [15, 15, 1],  # LS 14 has no data: a new row
        [17, 17, 1],
    ]
    first = out.powergroup.iloc[0]
    assert first.Powergroup == f"{a}:{b}" and first.Disk == "-2:-3"
    assert out.condensed["Layer/Disk"].tolist() == ["Disk -2:-3", "Disk -2", "Disk -2", "Disk -2"]
    assert tables.disks_of("FPix_BpO_D3_ROG1;FPix_BmO_D1_ROG1;FPix_BpO_D1_ROG1") == "-1:1:3"


REAL_OMS = REPO.parent / "shared" / "reference" / "omsdata_Run2024I-v1.json"


@pytest.mark.skipif(not REAL_OMS.is_file(), reason=f"no real OMS file at {REAL_OMS}")
def test_real_oms_file_of_2024i_drives_the_dcs_filter_and_pileup(model_path, tmp_path) -> None:
    """Maps placed at the real (run, LS) of three 2024I runs; DCS and pileup from the real file."""
    oms = pd.DataFrame(json.loads(REAL_OMS.read_text()))
    runs = oms.run_number.value_counts().index[:3].tolist()
    real = oms[oms.run_number.isin(runs)]
    detector = simulator.default_detector()
    rng = np.random.default_rng(2)
    expected = simulator.expected_maps(detector, np.full(len(real), 600.0))
    maps = insert_cross(simulator.sample_maps(expected, rng))
    parquet = simulator.write_dials_parquet(
        tmp_path / "real_keys.parquet", maps, real.run_number.to_numpy(), real.lumisection_number
    )
    out = tmp_path / "out"
    args = ["era", "--parquet", str(parquet), "--oms", str(REAL_OMS), "--model", str(model_path)]
    assert cli_main([*args, "--out", str(out), "--no-progress"]) == 0
    summary = pd.read_csv(out / "run_summary.csv").set_index("Run_Number")
    flags = real[list(DCS_FLAGS)]
    good = flags.apply(lambda column: column.map(lambda v: v is True)).all(axis=1)
    expected_good = good.groupby(real.run_number).sum()
    assert summary.loc[runs, "DCS_Good_LS"].tolist() == expected_good.loc[runs].tolist()
    assert 0 < expected_good.sum() < len(real)  # the real file has DCS-bad LS in these runs
    results = pd.read_parquet(out / "lumisections.parquet")
    merged = results.merge(
        real, left_on=["run", "ls"], right_on=["run_number", "lumisection_number"]
    )
    assert len(merged) == len(real)
    np.testing.assert_allclose(
        merged.pileup_x, pd.to_numeric(merged.pileup_y, errors="coerce"), equal_nan=True
    )


def test_a_file_saved_the_way_cmsdials_users_save_it(era_sim, era_out, model_path, tmp_path):
    """`.to_pandas().to_parquet()` of cmsdials results: nested Python float lists, one row group."""
    import pyarrow.parquet as pq

    rows = pq.read_table(era_sim["parquet"]).slice(1000, 300).to_pylist()
    for row in rows:  # cmsdials' model declares data: list[list[float]]
        row["data"] = [[float(v) for v in line] for line in row["data"]]
    saved = tmp_path / "from_cmsdials.parquet"
    pd.DataFrame(rows).to_parquet(saved)
    assert pq.ParquetFile(saved).metadata.num_row_groups == 1
    out = tmp_path / "out"
    args = ["era", "--parquet", str(saved), "--oms", str(era_sim["oms"])]
    assert cli_main([*args, "--model", str(model_path), "--out", str(out), "--no-progress"]) == 0
    mine = pd.read_parquet(out / "lumisections.parquet")
    reference = pd.read_parquet(era_out / "lumisections.parquet").merge(mine[["run", "ls"]])
    assert len(mine) == 300
    pd.testing.assert_frame_equal(mine, reference)


def test_a_non_empty_out_folder_is_refused_before_the_work(era_sim, era_out, capsys) -> None:
    before = (era_out / "lumisections.parquet").stat().st_mtime_ns
    args = ["era", "--parquet", str(era_sim["parquet"]), "--out", str(era_out), "--no-progress"]
    assert cli_main(args) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (era_out / "lumisections.parquet").stat().st_mtime_ns == before
