"""`pixelring2nmf compare`: our era against the original's spreadsheets, in its exact layouts.

A small simulated era (3 runs of 250 LS with known anomalies) is judged by the session's model;
its tables, turned into the original's conventions (a whole quarter typed Multi-Disk, the
original's column names and value formats, any sheet name, values as Excel gives them back),
are the "original". Compared with the era they came from, every range must agree; each change
of a row (its disks, its LS), a dropped row and an added one must show as the matching
`only original` / `only ours` rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.io.original_sheets import LAYOUTS
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.compare import STATUSES

RING1_ROW = [390000, 5, 5, 1, "FPix_BmO_D1_ROG1", "-1", 1, "Single-Disk"]


@pytest.fixture(scope="module")
def small_era(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 runs x 250 LS, about 25 ranges of every type, judged in this process (< 1 s)."""
    base = tmp_path_factory.mktemp("compare_era")
    sim = simulator.simulate(base / "sim", runs=3, seed=21, ls_per_run=250, anomaly_rate=0.03)
    out = base / "era"
    args = ["era", "--parquet", str(sim["parquet"]), "--oms", str(sim["oms"])]
    args += ["--model", str(model_path), "--out", str(out), "--workers", "1", "--no-progress"]
    assert cli_main(args) == 0
    return out


def _as_original(era: Path) -> dict[str, pd.DataFrame]:
    """The era's three tables as the original wrote them: a whole quarter typed Multi-Disk."""
    read = {
        name: pd.read_csv(era / f"{name}.csv", keep_default_na=False, dtype={"Disk": str})
        for name in ("condensed", "powergroup", "per_ls")
    }
    read["condensed"]["Type"] = read["condensed"]["Type"].replace("Quarter", "Multi-Disk")
    for name in ("powergroup", "per_ls"):
        read[name]["Anomaly_Type"] = read[name]["Anomaly_Type"].replace("Quarter", "Multi-Disk")
    return read


def _split_by_run(era: Path) -> dict[str, pd.DataFrame]:
    """One sheet per layout, each holding different runs (sheet names as a user might pick)."""
    original = _as_original(era)
    runs = sorted(original["powergroup"].Run_Number.unique())
    assert len(runs) == 3
    condensed = original["condensed"]
    powergroup = original["powergroup"]
    per_ls = original["per_ls"]
    # a Ring 1 row, left out and counted
    ring1 = pd.DataFrame([RING1_ROW], columns=list(LAYOUTS["powergroup"]))
    return {
        "2025Z per LS": per_ls[per_ls.Run_Number == runs[0]],
        "Sheet1": pd.concat([powergroup[powergroup.Run_Number == runs[1]], ring1]),
        "condensed 390004": condensed[condensed.Run == runs[2]],
    }


def _write_xlsx(path: Path, sheets: dict[str, pd.DataFrame]) -> Path:
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for name, table in sheets.items():
            table.to_excel(writer, sheet_name=name, index=False)
    return path


def _compare(era: Path, original: list[Path], out: Path, *extra: str) -> pd.DataFrame:
    args = ["compare", "--era", str(era), "--original", *map(str, original), "--out", str(out)]
    assert cli_main([*args, *extra]) == 0
    return pd.read_csv(out / "compare.csv", keep_default_na=False)


def test_the_era_against_itself_agrees_range_by_range(small_era, tmp_path, capsys) -> None:
    workbook = _write_xlsx(tmp_path / "original.xlsx", _split_by_run(small_era))
    table = _compare(small_era, [workbook], tmp_path / "out", "--xlsx")
    ours = pd.read_csv(small_era / "powergroup.csv")
    assert set(ours.Anomaly_Type) == {"Single-Disk", "Multi-Disk", "Quarter"}
    assert len(table) == len(ours)
    assert (table.status == "agree").all(), table[table.status != "agree"].to_string()
    assert table.exact.all()
    assert (table.compared_ls == table.matched_ls).all()
    assert table.ours_ls.tolist() == [
        f"{a}-{b}" if a != b else str(a) for a, b in zip(ours.Start_LS, ours.End_LS, strict=True)
    ]
    # our Quarter is the original's Multi-Disk, and agrees
    quarters = table[table.ours_type == "Quarter"]
    assert len(quarters) >= 1 and (quarters.original_type == "Multi-Disk").all()
    # every layout was read, from its own sheet; the condensed one has no groups
    sources = table.original_source.str.split(":").str[1]
    assert set(sources) == {"2025Z per LS", "Sheet1", "condensed 390004"}
    assert (table[sources == "condensed 390004"].original_groups == "").all()
    assert table[sources == "2025Z per LS"].original_source.str.contains(r":rows? \d+").all()
    line = capsys.readouterr().out
    assert f"compare: {len(ours)} range(s) agree, 0 only original, 0 only ours" in line
    assert "1 Ring 1 row(s) left out" in line
    types = pd.read_csv(tmp_path / "out" / "compare_types.csv").set_index("Type")
    assert types.Original_Ranges.sum() == len(ours) == types.Original_Agree.sum()
    assert types.loc["Quarter", "Our_Agree"] == len(quarters)
    runs = pd.read_csv(tmp_path / "out" / "compare_runs.csv")
    assert runs.Run.tolist() == sorted(ours.Run_Number.unique())
    assert (runs.Original_LS == runs.Matched_LS).all() and (runs.Our_LS == runs.Matched_LS).all()
    workbook = pd.read_excel(tmp_path / "out" / "compare.xlsx", sheet_name=None)
    assert list(workbook) == ["Compare", "Runs", "Types"]
    assert len(workbook["Compare"]) == len(table)
    summary = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert summary["counts"]["agree"] == len(ours) and summary["era_state"] == "finished"
    assert {s["layout"] for s in summary["sheets"]} == set(LAYOUTS)


def test_changed_dropped_and_added_rows_show_on_their_side(small_era, tmp_path) -> None:
    original = _as_original(small_era)["powergroup"].reset_index(drop=True)
    single = original.index[original.Anomaly_Type == "Single-Disk"]
    moved, dropped, shifted = single[0], single[1], single[2]
    # disks changed: the same LS on the other side of the detector (no group, no disk shared)
    group = original.at[moved, "Powergroup"]
    other = group.replace("Bm", "Bx").replace("Bp", "Bm").replace("Bx", "Bp")
    original.at[moved, "Powergroup"] = other
    original.at[moved, "Disk"] = str(-int(original.at[moved, "Disk"]))
    # LS changed: moved 100 LS on, where nothing is
    n_ls = original.at[shifted, "Num_LS"]
    start = 1 if original.at[shifted, "Start_LS"] > 120 else 130
    assert not (
        (original.Run_Number == original.at[shifted, "Run_Number"])
        & (original.End_LS >= start)
        & (original.Start_LS <= start + n_ls - 1)
    ).any()
    original.loc[shifted, ["Start_LS", "End_LS"]] = [start, start + n_ls - 1]
    kept = original.drop(index=dropped)
    added = [int(original.Run_Number.iat[0]), 240, 240, 1, "FPix_BpO_D3_ROG1", "3", 2]
    lumisections = pd.read_parquet(small_era / "lumisections.parquet")
    assert lumisections.set_index(["run", "ls"]).dcs_good[(added[0], 240)]
    assert not (
        (original.Run_Number == added[0]) & (original.End_LS >= 240) & (original.Start_LS <= 240)
    ).any()
    kept = pd.concat([kept, pd.DataFrame([[*added, "Single-Disk"]], columns=kept.columns)])
    path = tmp_path / "changed.csv"
    kept.to_csv(path, index=False)
    table = _compare(small_era, [path], tmp_path / "out")

    n = len(original)
    assert (table.status == "agree").sum() == n - 3
    only_original = table[table.status == "only original"]
    only_ours = table[table.status == "only ours"]
    assert sorted(only_original.original_groups) == sorted(
        [other, original.at[shifted, "Powergroup"], "FPix_BpO_D3_ROG1"]
    )
    assert f"{start}-{start + n_ls - 1}" in only_original.original_ls.tolist()
    assert "240" in only_original.original_ls.tolist()
    ours = pd.read_csv(small_era / "powergroup.csv")
    assert sorted(only_ours.ours_groups) == sorted(ours.Powergroup[[moved, dropped, shifted]])
    # the changed disks: each side says what the other had at those LS
    row = only_original[only_original.original_groups == other].iloc[0]
    assert row.note == f"ours at these LS: Single-Disk on disks {ours.Disk[moved]}"
    row = only_ours[only_ours.ours_groups == group].iloc[0]
    assert row.note.startswith("original at these LS: Single-Disk")
    assert only_ours[only_ours.ours_groups != group].note.eq("").all()
    assert set(table.status) <= set(STATUSES)
