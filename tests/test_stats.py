"""`pixelring2nmf stats` and `plot --era DIR --each-ls` on small simulated eras.

Two era folders judged by the session's model (conftest `model_path`, trained on the default
simulated detector, in which FPix_BmO_D1_ROG2 is dead: the model cannot judge it):
- era A: two simulated runs with anomalies of every kind, with OMS data (pileup known);
- era B: one simulated run, and a run in which FPix_BpI_D2_ROG3 is dead all run (persistent)
  and FPix_BpI_D2_ROG1 dies at LS 50-52, without OMS data (pileup NaN).
The counts `stats` writes are checked against counts made here from the era's own tables.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlserver_model.geometry import GROUP_ID_MAP, GROUP_NAMES, group_index
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era import stats
from pixelring2nmf.sim import simulate as simulator

MODEL_DEAD = "FPix_BmO_D1_ROG2"  # dead in the simulated detector: the model cannot judge it
PERSISTENT = "FPix_BpI_D2_ROG3"  # dead all of run 391500 (era B)
EXTRA = "FPix_BpI_D2_ROG1"  # dies at LS 50-52 of run 391500, on top of the persistent one
DEAD_RUN = 391500


def _era(out: Path, parquet: list[Path], model_path: Path, oms: Path | None = None) -> Path:
    args = ["era", "--parquet", *map(str, parquet), "--model", str(model_path)]
    args += ["--out", str(out), "--workers", "1", "--no-progress"]
    if oms is not None:
        args += ["--oms", str(oms)]
    assert cli_main(args) == 0
    return out


def _dead_run(path: Path, n_ls: int = 120) -> Path:
    sim = simulator.simulate_run(
        DEAD_RUN, n_ls, simulator.default_detector(), np.random.default_rng(4), anomalies="none"
    )
    maps = sim.maps.copy()
    maps[:, GROUP_ID_MAP == group_index(PERSISTENT)] = 0
    rows = np.flatnonzero(np.isin(sim.ls, [50, 51, 52]))
    maps[np.ix_(rows, *np.nonzero(GROUP_ID_MAP == group_index(EXTRA)))] = 0
    return simulator.write_dials_parquet(path, maps, sim.run, sim.ls)


@pytest.fixture(scope="module")
def eras(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stats_eras")
    sim_a = simulator.simulate(root / "sim_a", runs=2, seed=31, ls_per_run=200, anomaly_rate=0.03)
    era_a = _era(root / "eraA", [sim_a["parquet"]], model_path, sim_a["oms"])
    sim_b = simulator.simulate(
        root / "sim_b", runs=1, seed=32, ls_per_run=200, first_run=390100, anomaly_rate=0.03
    )
    dead = _dead_run(root / "dead.parquet")
    era_b = _era(root / "eraB", [sim_b["parquet"], dead], model_path)
    return era_a, era_b


@pytest.fixture(scope="module")
def stats_out(eras: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "out"
    assert cli_main(["stats", "--era", *map(str, eras), "--out", str(out), "--xlsx"]) == 0
    return out


def _expected_counts(eras: tuple[Path, Path]) -> tuple[Counter, Counter]:
    """(group, type) -> LS and -> ranges, from the eras' tables, persistent pairs left out."""
    ls_counts: Counter = Counter()
    range_counts: Counter = Counter()
    for era in eras:
        persistent = pd.read_csv(era / "persistent.csv")
        skip = set(zip(persistent.Run_Number, persistent.Powergroup, strict=True))
        for name, counts in (("per_ls", ls_counts), ("powergroup", range_counts)):
            table = pd.read_csv(era / f"{name}.csv")
            for run, groups, kind in zip(
                table.Run_Number, table.Powergroup, table.Anomaly_Type, strict=True
            ):
                for group in groups.split(":"):
                    if (run, group) not in skip:
                        counts[group, kind] += 1
    return ls_counts, range_counts


def test_powergroups_counts_are_what_the_era_tables_imply(eras, stats_out) -> None:
    table = pd.read_csv(stats_out / "powergroups.csv", keep_default_na=False, na_values=[""])
    assert table.Powergroup.tolist() == GROUP_NAMES
    ls_counts, range_counts = _expected_counts(eras)
    assert sum(ls_counts.values()) > 20  # the eras hold anomalies of several kinds
    assert {kind for _, kind in ls_counts} >= {"Single-Disk", "Multi-Disk", "Quarter"}
    judged = table[table.Powergroup != MODEL_DEAD].set_index("Powergroup")
    for kind in ("Single-Disk", "Same-Disk", "Multi-Disk", "Quarter"):
        expected_ls = [ls_counts[g, kind] for g in judged.index]
        expected_ranges = [range_counts[g, kind] for g in judged.index]
        assert judged[f"{kind}_LS"].astype(int).tolist() == expected_ls, kind
        assert judged[f"{kind}_Ranges"].astype(int).tolist() == expected_ranges, kind
    assert judged.Anomalous_LS.sum() == sum(ls_counts.values())
    # the extra group of the dead run is counted, the persistent one not in that run
    era_b_per_ls = pd.read_csv(eras[1] / "per_ls.csv")
    dead_run_rows = era_b_per_ls[era_b_per_ls.Run_Number == DEAD_RUN]
    assert dead_run_rows.Lumisection.tolist() == [50, 51, 52]
    assert dead_run_rows.Powergroup.str.contains(PERSISTENT).all()
    assert judged.loc[EXTRA, "Anomalous_LS"] >= 3
    assert ls_counts[PERSISTENT, "Single-Disk"] == judged.loc[PERSISTENT, "Single-Disk_LS"]
    assert judged.loc[PERSISTENT, "Persistent_Runs"] == 1


def test_known_dead_groups_are_left_out_and_listed(stats_out) -> None:
    table = pd.read_csv(stats_out / "powergroups.csv", keep_default_na=False, na_values=[""])
    row = table[table.Powergroup == MODEL_DEAD].iloc[0]
    assert pd.isna(row.Anomalous_LS) and pd.isna(row["Multi-Disk_LS"])  # not a healthy zero
    assert row.Status.startswith("dead")
    assert (table.Status[table.Powergroup != MODEL_DEAD] != row.Status).all()
    dead = pd.read_csv(stats_out / "dead_groups.csv")
    assert tuple(dead.columns) == stats.DEAD_COLUMNS
    listed = dict(zip(dead.Powergroup, dead.Kind, strict=True))
    assert listed == {MODEL_DEAD: stats.DEAD_MODEL, PERSISTENT: stats.DEAD_PERSISTENT}
    assert dead.set_index("Powergroup").loc[PERSISTENT, "Runs"] == str(DEAD_RUN)


def test_figures_are_valid_pngs_of_a_readable_size(stats_out) -> None:
    from PIL import Image

    for name in ("powergroups_heatmap", "powergroups_histogram", "pileup"):
        path = stats_out / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.width >= 800 and image.height >= 500, (name, image.size)
        assert 20_000 < path.stat().st_size < 1_500_000, name


def test_merged_workbook_highlights_multi_disk_rows(eras, stats_out) -> None:
    from openpyxl import load_workbook

    workbook = load_workbook(stats_out / "stats.xlsx")
    condensed = workbook["Condensed"]
    header = [cell.value for cell in condensed[1]]
    assert header[0] == "Era"
    rows = list(condensed.iter_rows(min_row=2, values_only=True))
    expected = sum(len(pd.read_csv(era / "condensed.csv")) for era in eras)
    assert len(rows) == expected
    assert {row[0] for row in rows} == {era.name for era in eras}
    type_column = header.index("Type")
    kinds = set()
    for i, row in enumerate(rows, start=2):
        fill = condensed.cell(row=i, column=1).fill.start_color.rgb
        kinds.add(row[type_column])
        if row[type_column] == "Multi-Disk":
            assert str(fill).endswith(stats.ROW_FILLS["Multi-Disk"]), (row, fill)
        elif row[type_column] == "Single-Disk":
            assert not str(fill).endswith(("FFC7CE", "E4D7F5")), (row, fill)
    assert {"Multi-Disk", "Single-Disk"} <= kinds
    per_ls = workbook["Per LS"]
    assert per_ls.max_row - 1 == sum(len(pd.read_csv(era / "per_ls.csv")) for era in eras)
    assert "Power group stats" in workbook.sheetnames and "Dead groups" in workbook.sheetnames


def test_pdf_figures_and_a_pileup_figure_that_says_it_has_none(eras, tmp_path) -> None:
    out = tmp_path / "pdf"
    assert cli_main(["stats", "--era", str(eras[1]), "--out", str(out), "--format", "pdf"]) == 0
    for name in ("powergroups_heatmap", "powergroups_histogram", "pileup"):
        data = (out / f"{name}.pdf").read_bytes()
        assert data[:5] == b"%PDF-" and len(data) > 5_000
    assert not list(out.glob("*.png"))
    # era B was judged without OMS: no pileup, and the figure says why
    from pixelring2nmf.plots.stats_figures import pileup_figure

    good, anomalous = stats.pileup_samples([stats.read_era_folder(eras[1])])
    assert len(good) > 100 and good.pileup.isna().all()
    figure = pileup_figure(good, anomalous, "era B")
    texts = " ".join(t.get_text() for t in figure.axes[0].texts)
    assert "no pileup" in texts and "OMS" in texts


def test_types_found_in_the_tables_get_columns() -> None:
    per_ls = pd.DataFrame(
        {
            "Run_Number": [1, 1, 1],
            "Lumisection": [5, 6, 9],
            "Powergroup": [
                "FPix_BmO_D2_ROG2",
                "FPix_BmO_D2_ROG2",
                "FPix_BpI_D1_ROG1:FPix_BpI_D2_ROG1",
            ],
            "Anomaly_Type": ["Same-Disk", "Same-Disk", "Some-New-Type"],
        }
    )
    ranges = pd.DataFrame(
        {
            "Run_Number": [1, 1],
            "Powergroup": ["FPix_BmO_D2_ROG2", "FPix_BpI_D1_ROG1:FPix_BpI_D2_ROG1"],
            "Anomaly_Type": ["Same-Disk", "Some-New-Type"],
        }
    )
    era = stats.EraFolderData(
        path=Path("x"),
        label="x",
        status={},
        tables={"per_ls": per_ls, "powergroup": ranges, "persistent": pd.DataFrame()},
        results=pd.DataFrame({"run": [1], "ls": [5]}),
    )
    table, dead = stats.powergroup_stats([era], {MODEL_DEAD: ["m.joblib"]})
    table = table.set_index("Powergroup")
    assert table.loc["FPix_BmO_D2_ROG2", "Same-Disk_LS"] == 2
    assert table.loc["FPix_BmO_D2_ROG2", "Same-Disk_Ranges"] == 1
    assert table.loc["FPix_BpI_D2_ROG1", "Some-New-Type_LS"] == 1
    assert table["Same-Disk_LS"].sum() == 2
    assert dead.Powergroup.tolist() == [MODEL_DEAD]


@pytest.mark.parametrize("problem", ["missing", "no era.json", "interrupted"])
def test_a_bad_era_folder_is_one_line_and_exit_2(eras, tmp_path, capsys, problem) -> None:
    folder = tmp_path / "era"
    if problem != "missing":
        folder.mkdir()
    if problem == "interrupted":
        status = {"complete": False, "state": "interrupted", "reason": "interrupted by Ctrl-C"}
        (folder / "era.json").write_text(json.dumps(status))
    capsys.readouterr()
    code = cli_main(["stats", "--era", str(eras[0]), str(folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(folder) in err, err
    assert {"missing": "not found", "no era.json": "era.json", "interrupted": "not complete"}[
        problem
    ] in err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_an_existing_out_folder_needs_force(eras, stats_out, capsys) -> None:
    before = (stats_out / "powergroups.csv").stat().st_mtime_ns
    assert cli_main(["stats", "--era", str(eras[0]), "--out", str(stats_out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (stats_out / "powergroups.csv").stat().st_mtime_ns == before


# ---- plot --era DIR --each-ls -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_era(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean run with a Single-Disk LS (10) and a two-LS Multi-Disk (30-31): 3 LS to draw."""
    root = tmp_path_factory.mktemp("each_ls")
    sim = simulator.simulate_run(
        392000, 60, simulator.default_detector(), np.random.default_rng(7), anomalies="none"
    )
    maps = sim.maps.copy()
    single = GROUP_ID_MAP == group_index("FPix_BpO_D2_ROG3")
    multi = np.isin(GROUP_ID_MAP, [group_index(f"FPix_BmI_D{d}_ROG1") for d in (1, 2)])
    maps[np.ix_(np.flatnonzero(sim.ls == 10), *np.nonzero(single))] = 0
    maps[np.ix_(np.flatnonzero(np.isin(sim.ls, [30, 31])), *np.nonzero(multi))] = 0
    parquet = simulator.write_dials_parquet(root / "small.parquet", maps, sim.run, sim.ls)
    return _era(root / "era", [parquet], model_path)


def test_each_ls_draws_one_png_per_anomalous_ls_with_an_index(small_era, tmp_path) -> None:
    out = tmp_path / "each"
    args = ["plot", "--era", str(small_era), "--each-ls", "--out", str(out), "--workers", "2"]
    assert cli_main(args) == 0
    per_ls = pd.read_csv(small_era / "per_ls.csv")
    assert per_ls[["Lumisection", "Anomaly_Type"]].values.tolist() == [
        [10, "Single-Disk"],
        [30, "Multi-Disk"],
        [31, "Multi-Disk"],
    ]
    index = pd.read_csv(out / "index.csv")
    assert tuple(index.columns) == ("run", "ls", "type", "groups", "metric", "file")
    assert index[["run", "ls", "type", "groups"]].values.tolist() == (
        per_ls[["Run_Number", "Lumisection", "Anomaly_Type", "Powergroup"]].values.tolist()
    )
    assert index.file.tolist() == [f"run392000_ls{ls:04d}.png" for ls in (10, 30, 31)]
    results = pd.read_csv(small_era / "lumisections.csv").set_index("ls")
    assert index.metric.tolist() == results.metric.loc[index.ls].tolist()
    assert index.metric.iloc[1] > 0  # the Multi-Disk LS has a Metric
    pngs = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert pngs == index.file.tolist()  # and nothing half-written beside them
    assert sorted(p.name for p in out.iterdir()) == sorted([*pngs, "index.csv"])
    for name in pngs:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # a second run into the same folder is refused without --force
    assert cli_main(args) == 2


def test_each_ls_needs_an_era_and_its_inputs(small_era, tmp_path, capsys) -> None:
    out = tmp_path / "each"
    assert cli_main(["plot", "--each-ls", "--out", str(out)]) == 2
    assert "--era" in capsys.readouterr().err
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in small_era.iterdir():
        (moved / path.name).write_bytes(path.read_bytes())
    status = json.loads((moved / "era.json").read_text())
    status["files"] = [str(tmp_path / "gone.parquet")]
    (moved / "era.json").write_text(json.dumps(status))
    assert cli_main(["plot", "--era", str(moved), "--each-ls", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--parquet" in err and "gone.parquet" in err


def test_an_incomplete_era_is_read_with_a_warning(eras, tmp_path, capsys) -> None:
    copy = tmp_path / "eraA"
    copy.mkdir()
    for path in eras[0].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    status = json.loads((copy / "era.json").read_text())
    status.update(complete=False, state="incomplete", reason="broken.parquet: unreadable")
    (copy / "era.json").write_text(json.dumps(status))
    capsys.readouterr()
    assert cli_main(["stats", "--era", str(copy), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "incomplete" in out and "broken.parquet" in out
    table = pd.read_csv(tmp_path / "out" / "powergroups.csv")
    assert (
        table.Anomalous_LS.sum()
        == pd.read_csv(copy / "per_ls.csv").Powergroup.str.split(":").str.len().sum()
    )


def test_each_ls_stopped_keeps_whole_pngs_and_an_index_of_them(
    small_era, model_path, tmp_path
) -> None:
    from mlserver_model.pixelring2nmf import PixelRing2NMF
    from pixelring2nmf.plots import each_ls

    out = tmp_path / "each"
    out.mkdir()
    index = each_ls.anomalous_lumisections(small_era)
    tasks = each_ls.plan_tasks(index, out, task_ls=1)
    assert len(tasks) == 3
    sources = each_ls.era_inputs(small_era, each_ls.check_era(small_era))[0]

    def stop(task) -> None:
        raise KeyboardInterrupt("Ctrl-C")

    model = PixelRing2NMF.load(model_path)
    outcome = each_ls.draw_each_ls(tasks, model, None, sources, workers=2, on_done=stop)
    assert outcome.interrupted == "Ctrl-C"
    assert 1 <= len(outcome.drawn) <= 3
    rows = each_ls.write_index(out / "index.csv", index, outcome.drawn)
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([*rows.file, "index.csv"])  # no temporary file left
    assert set(zip(rows.run, rows.ls, strict=True)) == outcome.drawn


def test_each_ls_finds_the_model_of_each_run_when_the_era_had_several(small_era, tmp_path) -> None:
    from pixelring2nmf.plots import each_ls

    era = tmp_path / "era"
    era.mkdir()
    for path in small_era.iterdir():
        (era / path.name).write_bytes(path.read_bytes())
    models = ["/models/2025_early.joblib", "/models/2025_late.joblib"]
    results = pd.read_csv(era / "lumisections.csv")
    results.drop(columns="model").to_csv(era / "lumisections.csv", index=False)  # an older era
    with pytest.raises(Exception, match="--model"):  # which model judged a run is not said
        each_ls.model_of_each_run(era, models)
    results = pd.read_csv(era / "lumisections.csv").assign(model="2025_late.joblib")
    results.to_csv(era / "lumisections.csv", index=False)
    assert each_ls.model_of_each_run(era, models) == {392000: models[1]}
    index = each_ls.anomalous_lumisections(era)
    tasks = each_ls.plan_tasks(index, tmp_path, model_of_run={392000: models[1]})
    assert {task.model for task in tasks} == {models[1]}
