"""`pixelring2nmf compare`: our era against the original's spreadsheets, in its exact layouts.

A small simulated era (3 runs of 250 LS with known anomalies) is judged by the session's model;
its tables, turned into the original's conventions (a whole quarter typed Multi-Disk, the
original's column names and value formats, any sheet name, values as Excel gives them back),
are the "original". Compared with the era they came from, every range must agree; each change
of a row (its disks, its LS), a dropped row and an added one must show as the matching
`only original` / `only ours` rows.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli_command

from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.io.original_sheets import LAYOUTS, read_original
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
    # only the original's columns: ours add luminosity after them
    read = {name: table[list(LAYOUTS[name])] for name, table in read.items()}
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


def test_ranges_split_differently_agree_at_ls_level(small_era, tmp_path) -> None:
    """The original's range in two rows against our one: one anomaly, both rows named."""
    original = _as_original(small_era)["powergroup"].reset_index(drop=True)
    i = original.index[original.Num_LS >= 4][0]
    first, last = original.at[i, "Start_LS"], original.at[i, "End_LS"]
    second = original.loc[[i]].assign(Start_LS=first + 2, Num_LS=last - first - 1)
    original.loc[i, ["End_LS", "Num_LS"]] = [first + 1, 2]
    original = pd.concat([original, second], ignore_index=True)
    path = _write_xlsx(tmp_path / "split.xlsx", {"Power groups": original})
    table = _compare(small_era, [path], tmp_path / "out")
    assert (table.status == "agree").all() and len(table) == len(original) - 1
    row = table[table.original_ls.str.contains(";")].iloc[0]
    assert row.original_ls == f"{first}-{first + 1}; {first + 2}-{last}"
    assert row.ours_ls == f"{first}-{last}"
    assert row.matched_ls == row.compared_ls == last - first + 1
    assert not row.exact and table.exact.sum() == len(table) - 1
    assert row.note == ""
    # one LS more on the original's side, where we saw nothing: still the same anomaly
    good = pd.read_parquet(small_era / "lumisections.parquet").set_index(["run", "ls"]).dcs_good
    taken = set(zip(original.Run_Number, original.Start_LS, strict=True))
    j = next(
        k
        for k in original.index[: len(original) - 1]
        if k != i
        and (original.at[k, "Run_Number"], original.at[k, "End_LS"] + 1) not in taken
        and good.get((original.at[k, "Run_Number"], original.at[k, "End_LS"] + 1), False)
    )
    after = (original.at[j, "Run_Number"], original.at[j, "End_LS"] + 1)
    original.loc[j, ["End_LS", "Num_LS"]] += 1
    path = _write_xlsx(tmp_path / "longer.xlsx", {"Power groups": original})
    table = _compare(small_era, [path], tmp_path / "out", "--force")
    assert (table.status == "agree").all()
    longer = table[table.original_ls == f"{original.at[j, 'Start_LS']}-{after[1]}"]
    assert longer.note.tolist() == ["1 LS unmatched"] and not longer.exact.iat[0]


def test_quarter_and_same_disk_agree_with_the_original_typing(small_era, tmp_path) -> None:
    """Ours Quarter vs their Multi-Disk, ours Same-Disk vs their Single-Disk: agreement; our
    Single-Disk vs their Multi-Disk at the same LS and disks is not."""
    era = tmp_path / "era"
    shutil.copytree(small_era, era)
    ours = pd.read_csv(era / "powergroup.csv", keep_default_na=False, dtype={"Disk": str})
    single = ours.index[ours.Anomaly_Type == "Single-Disk"]
    ours.loc[single[0], "Anomaly_Type"] = "Same-Disk"  # an era that types Same-Disk
    ours.to_csv(era / "powergroup.csv", index=False)
    original = _as_original(small_era)["powergroup"]
    original.loc[single[1], "Anomaly_Type"] = "Multi-Disk"
    path = _write_xlsx(tmp_path / "o.xlsx", {"x": original})
    table = _compare(era, [path], tmp_path / "out")
    assert (table.status == "agree").sum() == len(ours) - 1
    same = table[table.ours_type == "Same-Disk"]
    assert same.status.tolist() == ["agree"] and same.original_type.tolist() == ["Single-Disk"]
    assert (table[table.ours_type == "Quarter"].original_type == "Multi-Disk").all()
    assert (table[table.ours_type == "Quarter"].status == "agree").all()
    changed = table[table.status != "agree"]
    assert sorted(changed.status) == ["only original", "only ours"]
    assert changed.note.str.contains("at these LS: (?:Single|Multi)-Disk").all()


def test_values_as_excel_and_csv_give_them(small_era, tmp_path) -> None:
    """Ints as floats or strings, 'Disk -2:-3' or '-2:-3', spaces, a title row, CSV files."""
    original = _as_original(small_era)
    condensed = original["condensed"].astype(str)
    condensed["Run"] = condensed["Run"] + ".0 "
    condensed["Layer/Disk"] = "  " + condensed["Layer/Disk"].str.replace("Disk ", "")
    title = pd.DataFrame([["The original's Run2025Z, condensed"] + [""] * 7])
    csv = tmp_path / "condensed.csv"
    with csv.open("w") as stream:
        title.to_csv(stream, index=False, header=False)
        condensed.to_csv(stream, index=False)
    per_ls = original["per_ls"].astype({"Run_Number": float, "Lumisection": float})
    per_ls["Anomaly_Type"] = per_ls["Anomaly_Type"].str.lower()
    xlsx = _write_xlsx(tmp_path / "per_ls.xlsx", {"Run2025Z": per_ls, "empty": pd.DataFrame()})
    sheets = read_original([csv])
    ours = pd.read_csv(small_era / "powergroup.csv")
    assert sheets.ranges[["run", "first_ls", "last_ls"]].values.tolist() == (
        ours[["Run_Number", "Start_LS", "End_LS"]].values.tolist()
    )
    assert sheets.ranges.source.iat[0] == "condensed.csv:row 3"  # title row 1, header row 2
    sheets = read_original([xlsx])
    assert sheets.empty_sheets == ["per_ls.xlsx:empty"]
    assert sheets.ranges.groups.tolist() == ours.Powergroup.tolist()  # per-LS rows joined
    assert set(sheets.ranges.type) == {"Single-Disk", "Multi-Disk"}
    table = _compare(small_era, [csv, xlsx], tmp_path / "out")
    assert (table.status == "agree").all() and len(table) == len(ours)
    # a CSV saved by Excel in a semicolon locale, with its byte-order mark
    semicolon = tmp_path / "powergroup.csv"
    original["powergroup"].to_csv(semicolon, sep=";", index=False, encoding="utf-8-sig")
    assert semicolon.read_bytes().startswith(b"\xef\xbb\xbfRun_Number;Start_LS")
    sheets = read_original([semicolon])
    assert sheets.ranges.groups.tolist() == ours.Powergroup.tolist()


def test_excel_clock_times_and_disk_spellings() -> None:
    """Excel turns a typed '1:2' into 01:02:00; every spelling gives the original's disks."""
    from pixelring2nmf.io.original_sheets import _disks

    assert _disks(dt.time(1, 2)) == "1:2" and _disks(dt.time(1, 2, 3)) == "1:2:3"
    assert _disks("Disk -3:-2") == "-2:-3" == _disks(" -2:-3 ")
    assert _disks(3) == "3" == _disks(3.0) == _disks("Disk 3")
    for bad in ("Disk 4", "0", "a:b", 2.5):
        with pytest.raises(ValueError):
            _disks(bad)


def test_what_is_not_compared_is_counted_with_its_reason(small_era, tmp_path, capsys) -> None:
    original = _as_original(small_era)["powergroup"]
    runs = sorted(original.Run_Number.unique())
    lumisections = pd.read_parquet(small_era / "lumisections.parquet")
    bad = lumisections[~lumisections.dcs_good].iloc[0]
    extra = [
        [999999, 10, 12, 3, "FPix_BpO_D3_ROG1", "3", 2, "Single-Disk"],  # a run we did not judge
        [int(bad.run), int(bad.ls), int(bad.ls), 1, "FPix_BpO_D3_ROG1", "3", 2, "Single-Disk"],
    ]
    assert int(bad.run) != runs[2]
    without_last = original[original.Run_Number != runs[2]]
    given = pd.concat([without_last, pd.DataFrame(extra, columns=original.columns)])
    path = _write_xlsx(tmp_path / "o.xlsx", {"pg": given})
    table = _compare(small_era, [path], tmp_path / "out")
    n_last = int((original.Run_Number == runs[2]).sum())
    assert (table.status == "agree").all() and len(table) == len(without_last)
    skipped = pd.read_csv(tmp_path / "out" / "not_compared.csv")
    assert sorted(skipped.reason.unique()) == sorted(
        ["run not in the era", "LS DCS-bad in the era", "run not in the original's files"]
    )
    assert (skipped[skipped.side == "ours"].run == runs[2]).sum() == n_last
    line = capsys.readouterr().out
    assert "2 original range(s) not compared" in line
    assert f"{n_last} of ours not compared (run not in the original's files: {n_last})" in line
    # --runs says the original judged the last run too: our ranges there are ours alone
    table = _compare(
        small_era, [path], tmp_path / "out", "--force", "--runs", f"{runs[0]}:{runs[2]}"
    )
    assert (table.status == "only ours").sum() == n_last
    assert (table[table.status == "only ours"].run == runs[2]).all()
    summary = pd.read_csv(tmp_path / "out" / "compare_runs.csv").set_index("Run")
    assert summary.loc[runs[2], "Only_Ours"] == n_last and not summary.loc[999999, "Compared"]


def test_persistent_groups_of_the_era_are_not_compared(small_era, tmp_path) -> None:
    """An original row in a group our era reports as persistent (and so leaves out of its
    ranges) is counted apart, not `only original`."""
    era = tmp_path / "era"
    shutil.copytree(small_era, era)
    ours = pd.read_csv(era / "powergroup.csv", keep_default_na=False, dtype={"Disk": str})
    single = ours[ours.Anomaly_Type == "Single-Disk"].iloc[0]
    persistent = pd.read_csv(era / "persistent.csv")
    row = dict.fromkeys(persistent.columns, 0)
    row.update(Run_Number=single.Run_Number, Powergroup=single.Powergroup, Disk=single.Disk)
    pd.DataFrame([row]).to_csv(era / "persistent.csv", index=False)
    left = ours[~((ours.Run_Number == single.Run_Number) & (ours.Powergroup == single.Powergroup))]
    left.to_csv(era / "powergroup.csv", index=False)
    path = _write_xlsx(tmp_path / "o.xlsx", {"pg": _as_original(small_era)["powergroup"]})
    table = _compare(era, [path], tmp_path / "out")
    assert (table.status == "agree").all() and len(table) == len(left)
    skipped = pd.read_csv(tmp_path / "out" / "not_compared.csv")
    assert set(skipped.reason) == {"persistent group in the era (persistent.csv)"}
    assert len(skipped) == len(ours) - len(left)


@pytest.mark.parametrize(
    ("state", "complete", "ok"),
    [("finished", True, True), ("incomplete", False, True), ("interrupted", False, False)],
)
def test_an_era_that_is_not_complete_is_refused(small_era, tmp_path, capsys, state, complete, ok):
    era = tmp_path / "era"
    shutil.copytree(small_era, era)
    status = json.loads((era / "era.json").read_text())
    (era / "era.json").write_text(json.dumps({**status, "state": state, "complete": complete}))
    path = _write_xlsx(tmp_path / "o.xlsx", {"pg": _as_original(small_era)["powergroup"]})
    args = ["compare", "--era", str(era), "--original", str(path), "--out", str(tmp_path / "o")]
    assert cli_main(args) == (0 if ok else 2)
    captured = capsys.readouterr()
    if state == "incomplete":
        assert "[WARNING]: era" in captured.out and "is incomplete" in captured.out
    if not ok:
        assert captured.err.strip().splitlines() == [
            f"pixelring2nmf compare: error: {era}: the era is not complete (era.json says state "
            f"'{state}'); rerun `era` before comparing"
        ]
        assert not (tmp_path / "o" / "compare.csv").exists()


def _bad_condensed(tmp_path: Path, column: str, value: object) -> Path:
    table = pd.DataFrame(
        [[390000, 14, 20, 7, "Forward", "Disk -2", "Ring 2", "Single-Disk"]] * 2,
        columns=list(LAYOUTS["condensed"]),
    ).astype(object)
    table.at[1, column] = value
    return _write_xlsx(tmp_path / "bad.xlsx", {"Cond": table})


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("Layer/Disk", "Disk 4", "sheet 'Cond', row 3, column 'Layer/Disk': expected disks in"),
        ("Total LS", 8, "row 3, column 'Total LS': 8 LS, but the range 14-20 holds 7"),
        ("Type", "Double-Disk", "row 3, column 'Type': expected an anomaly type"),
        ("Run", "3904x", "row 3, column 'Run': expected an integer, got '3904x'"),
        ("First LS", None, "row 3, column 'First LS': empty"),
        ("Barrel/Forward", "Barrel", "row 3, column 'Barrel/Forward': expected 'Forward'"),
        ("Row/Quarter", "Ring 3", "row 3, column 'Row/Quarter': expected 'Ring 2' or 'Ring 1'"),
    ],
)
def test_a_bad_value_is_one_line_naming_file_sheet_row_column(
    small_era, tmp_path, capsys, column, value, message
) -> None:
    path = _bad_condensed(tmp_path, column, value)
    args = ["compare", "--era", str(small_era), "--original", str(path)]
    assert cli_main([*args, "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"pixelring2nmf compare: error: {path}, ") and message in line


def test_a_file_in_no_layout_is_refused_by_the_command(small_era, tmp_path) -> None:
    """The console script, as users run it: one line naming the file and sheet, exit 2."""
    path = _write_xlsx(
        tmp_path / "notes.xlsx",
        {"ok": _as_original(small_era)["per_ls"], "Notes": pd.DataFrame({"Run": [1], "Why": [2]})},
    )
    command = cli_command("compare", "--era", str(small_era), "--original", str(path))
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"pixelring2nmf compare: error: {path}, sheet 'Notes': not one of")
    assert "['Run', 'Why']" in line
    # and an existing --out is kept without --force
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "compare.csv").write_text("mine\n")
    args = ["compare", "--era", str(small_era), "--original", str(path), "--out"]
    assert cli_main([*args, str(tmp_path / "kept")]) == 2
    assert (tmp_path / "kept" / "compare.csv").read_text() == "mine\n"


def test_condensed_rows_match_by_disks(small_era, tmp_path) -> None:
    """Without groups (the condensed layout), the disks decide: another disk is another
    anomaly, a disk shared is the same one."""
    condensed = _as_original(small_era)["condensed"].reset_index(drop=True)
    single = condensed.index[condensed.Type == "Single-Disk"]
    disk = condensed.at[single[0], "Layer/Disk"]
    other = "Disk 3" if disk != "Disk 3" else "Disk -3"
    condensed.at[single[0], "Layer/Disk"] = other
    multi = condensed.index[condensed["Layer/Disk"].str.count(":") == 1][0]
    first = condensed.at[multi, "Layer/Disk"].split(":")[0]
    condensed.at[multi, "Layer/Disk"] = first  # one disk of two: still the same anomaly
    path = _write_xlsx(tmp_path / "c.xlsx", {"Condensed": condensed})
    table = _compare(small_era, [path], tmp_path / "out")
    assert sorted(table.status[table.status != "agree"]) == ["only original", "only ours"]
    assert table[table.status == "only original"].original_disks.tolist() == [other[5:]]
    assert table[table.status == "only ours"].ours_disks.tolist() == [disk[5:]]
    assert (table.status == "agree").sum() == len(condensed) - 1
    assert not table[table.original_disks == first[5:]].exact.iat[0]
