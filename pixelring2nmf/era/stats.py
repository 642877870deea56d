"""Statistics per power group over one or several era folders (`pixelring2nmf stats`).

The experts judge an era, and compare eras, by where the anomalies fall in the detector: which
power groups drop out, how often, in which kind of anomaly, at which pileup. Everything here is
read back from the folders `era` wrote (its per-LS and per-range tables, lumisections.* for the
pileup and the DCS state); nothing is judged again.

What is counted, for each of the 48 groups and each anomaly type:
- `<Type>_LS`: the LS of the era's per-LS table (`per_ls.csv`) in which the group is anomalous;
- `<Type>_Ranges`: the rows of the era's range table (`powergroup.csv`) that name the group
  (a range is a stretch of LS with one set of anomalous groups, as in the original's tables).
`Anomalous_LS` and `Ranges` are the totals over the types.

Known-dead groups are left out, because their counts would say nothing about the detector:
- a group the model cannot judge (fewer live ROCs in its components than the model's
  `min_live_rocs`: `PixelRing2NMF.unjudged_groups`) is never anomalous, and a zero there
  would read as "healthy": its counts are left empty and its `Status` says why;
- a group persistently anomalous in a run (the era's `persistent.csv`: most DCS-good LS of the
  run) is a dead group the model does not know: its LS and ranges of that run are not
  counted (the era already left out the LS in which it was the only anomalous group).
Both kinds are listed in `dead_groups.csv`, and named on the figures.

A run found in several era folders is counted once, from the first folder that holds it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.geometry import (
    ANOMALY_MULTI_DISK,
    ANOMALY_QUARTER,
    ANOMALY_SINGLE_DISK,
    GROUP_DISK,
    GROUP_NAMES,
    GROUP_ROG,
)

from ..errors import DataError
from ..io.workbook import write_readable_sheet
from .output import FINISHED, INCOMPLETE, RESULTS_STEM, SUMMARY_NAME, XLSX_SHEETS, table_csv

logger = logging.getLogger(__name__)

SAME_DISK = "Same-Disk"  # helper D's type: one disk of a Multi-Disk candidate, partner dead
# the types with their own columns, in the order a reader wants them; any other type found in
# the tables gets its columns after these
KNOWN_TYPES = (ANOMALY_SINGLE_DISK, SAME_DISK, ANOMALY_MULTI_DISK, ANOMALY_QUARTER)
JUDGED = "judged"
POWERGROUPS_NAME = "powergroups.csv"
DEAD_GROUPS_NAME = "dead_groups.csv"
DEAD_COLUMNS = ("Powergroup", "Disk", "Kind", "Reason", "Eras", "Runs")
DEAD_MODEL = "model"  # the model cannot judge the group
DEAD_PERSISTENT = "persistent"  # anomalous in most DCS-good LS of a run
ERA_COLUMN = "Era"
# the tables stats reads; any further table of an era folder goes into the merged workbook
REQUIRED_TABLES = ("condensed", "powergroup", "per_ls", "run_summary", "persistent")
# the type column of each table, for the workbook's highlighted rows
TYPE_COLUMNS = ("Type", "Anomaly_Type")


@dataclass
class EraFolderData:
    """One era folder read back: its status, tables and per-LS results."""

    path: Path
    label: str
    status: dict
    tables: dict[str, pd.DataFrame]
    results: pd.DataFrame
    models: list[str] = field(default_factory=list)

    @property
    def ring(self) -> str:
        """The ring(s) its model judged, as era.json says ('Ring 2' when it says none)."""
        return str(self.status.get("ring", "Ring 2"))

    @property
    def runs(self) -> set[int]:
        return set(self.results.run.unique().tolist()) if len(self.results) else set()


def era_models(status: dict) -> list[str]:
    """The model file(s) era.json names: `model` (one path, or a list) and `models`."""
    found: list[str] = []
    for key in ("model", "models"):
        value = status.get(key)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, dict):  # {"path": ..., ...} entries, should a list carry them
                item = item.get("path") or item.get("file")
            if isinstance(item, str) and item and item not in found:
                found.append(item)
    return found


def era_status(path: str | Path) -> dict:
    """era.json of an `era` output folder, checked: a missing folder, one without era.json or
    one whose era did not end is refused (DataError, one line).

    `incomplete` (some input could not be judged, but what was judged is whole) is read with a
    warning; `running`, `interrupted` and `failed` are refused: their tables may lack runs.
    """
    path = Path(path)
    summary = path / SUMMARY_NAME
    if not path.is_dir():
        raise DataError(f"era folder {path} not found")
    if not summary.is_file():
        raise DataError(f"{path} has no {SUMMARY_NAME}: not an output folder of `era`")
    try:
        status = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{summary} cannot be read: {error}") from None
    if not isinstance(status, dict):
        raise DataError(f"{summary} is not an era status (a JSON object)")
    state = status.get("state", "")
    if state == INCOMPLETE:
        logger.warning(
            "era %s is incomplete (%s): its judged LS are used",
            path,
            status.get("reason", "no reason given"),
        )
    elif not (status.get("complete") is True and state == FINISHED):
        reason = f": {status['reason']}" if status.get("reason") else ""
        raise DataError(f"era {path} is not complete (state {state or 'unknown'}{reason})")
    return status


def read_table(path: Path, name: str) -> pd.DataFrame:
    """Table `name` (an `EraTables.sheets()` key) of an era folder, from its CSV."""
    csv = table_csv(path, name)
    if not csv.is_file():
        raise DataError(f"{csv} not found: the era folder {path} is not whole")
    return pd.read_csv(csv, keep_default_na=False, na_values=[""])


def read_era_folder(path: str | Path, label: str | None = None) -> EraFolderData:
    """An `era` output folder (`era_status` checks it), its tables and per-LS results."""
    path = Path(path)
    status = era_status(path)
    tables = {
        name: read_table(path, name)
        for name in XLSX_SHEETS
        if name in REQUIRED_TABLES or table_csv(path, name).is_file()
    }
    return EraFolderData(
        path=path,
        label=label or path.name,
        status=status,
        tables=tables,
        results=_read_results(path),
        models=era_models(status),
    )


def _read_results(path: Path) -> pd.DataFrame:
    parquet = path / f"{RESULTS_STEM}.parquet"
    csv = path / f"{RESULTS_STEM}.csv"
    columns = ["run", "ls", "dcs_good", "type", "groups", "pileup"]
    if parquet.is_file():
        frame = pd.read_parquet(parquet)
    elif csv.is_file():
        frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    else:
        raise DataError(f"{parquet} not found: the era folder {path} is not whole")
    if "pileup" not in frame.columns:
        frame["pileup"] = np.nan
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{parquet} lacks column(s) {missing}")
    frame["groups"] = frame["groups"].fillna("").astype(str)
    return frame


def read_eras(paths: Sequence[str | Path]) -> list[EraFolderData]:
    """Every folder, each labelled by its name (its path where two names are alike)."""
    paths = [Path(p) for p in paths]
    names = [p.name or str(p) for p in paths]
    labels = [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]
    return [read_era_folder(p, label) for p, label in zip(paths, labels, strict=True)]


def first_era_of_runs(eras: Sequence[EraFolderData]) -> dict[int, str]:
    """Run -> the label of the first era that holds it (a run is counted once)."""
    owner: dict[int, str] = {}
    repeated: set[int] = set()
    for era in eras:
        for run in sorted(era.runs):
            if run in owner:
                repeated.add(run)
            else:
                owner[run] = era.label
    if repeated:
        shown = ", ".join(str(r) for r in sorted(repeated)[:10])
        more = f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
        logger.warning(
            "stats: run(s) %s%s are in several era folders: counted once, from the first",
            shown,
            more,
        )
    return owner


# ---- known-dead groups ---------------------------------------------------------------------------


def model_dead_groups(model_files: Sequence[str | Path]) -> dict[str, list[str]]:
    """Group -> the model files that cannot judge it (`unjudged_groups`); unreadable files are
    said and skipped (the persistent groups still mark what is dead)."""
    from mlserver_model.joint import load_model

    dead: dict[str, list[str]] = {}
    for path in model_files:
        try:
            model = load_model(path)
        except Exception as error:  # a moved or foreign file: say so, keep going
            logger.warning(
                "stats: model %s cannot be read (%s): its dead groups are not known; pass "
                "--model FILE to name it",
                path,
                error,
            )
            continue
        for g in np.flatnonzero(model.unjudged_groups):
            dead.setdefault(GROUP_NAMES[g], []).append(str(path))
    return dead


def persistent_pairs(eras: Sequence[EraFolderData], owner: dict[int, str]) -> pd.DataFrame:
    """(Era, Run_Number, Powergroup) of every persistent group of a counted run."""
    frames = []
    for era in eras:
        table = era.tables["persistent"]
        if len(table):
            rows = table[[owner.get(int(r)) == era.label for r in table.Run_Number]]
            frames.append(rows[["Run_Number", "Powergroup"]].assign(**{ERA_COLUMN: era.label}))
    if not frames:
        return pd.DataFrame(columns=[ERA_COLUMN, "Run_Number", "Powergroup"])
    return pd.concat(frames, ignore_index=True)


def dead_groups_table(
    model_dead: dict[str, list[str]], persistent: pd.DataFrame, eras: Sequence[EraFolderData]
) -> pd.DataFrame:
    """`Powergroup, Disk, Kind, Reason, Eras, Runs`: one row per group the model cannot judge,
    one per group persistent in some run (with those runs)."""
    disk_of = dict(zip(GROUP_NAMES, GROUP_DISK.tolist(), strict=True))
    rows = []
    for name in GROUP_NAMES:
        if name in model_dead:
            files = model_dead[name]
            eras_of = [e.label for e in eras if set(e.models) & set(files)] or [
                e.label for e in eras
            ]
            rows.append(
                (
                    name,
                    disk_of[name],
                    DEAD_MODEL,
                    "the model cannot judge it (too few live ROCs in its components): "
                    + ", ".join(Path(f).name for f in files),
                    ";".join(eras_of),
                    "all",
                )
            )
    for name, part in persistent.groupby("Powergroup", sort=False):
        runs = sorted(part.Run_Number.astype(int).unique().tolist())
        rows.append(
            (
                name,
                disk_of[name],
                DEAD_PERSISTENT,
                f"anomalous in most DCS-good LS of {len(runs)} run(s): "
                "a dead group the model does not know; not counted in those runs",
                ";".join(dict.fromkeys(part[ERA_COLUMN])),
                ";".join(str(r) for r in runs),
            )
        )
    table = pd.DataFrame(rows, columns=list(DEAD_COLUMNS))
    order = {name: i for i, name in enumerate(GROUP_NAMES)}
    return table.sort_values(
        ["Kind", "Powergroup"], key=lambda s: s.map(order) if s.name == "Powergroup" else s
    ).reset_index(drop=True)


# ---- counts ------------------------------------------------------------------------------------


def _exploded(
    eras: Sequence[EraFolderData],
    owner: dict[int, str],
    table: str,
    persistent: pd.DataFrame,
) -> pd.DataFrame:
    """(Run_Number, Powergroup, Anomaly_Type) per group named in a row of `table` of the
    counted runs, without the persistent (run, group) pairs."""
    frames = []
    for era in eras:
        rows = era.tables[table]
        if not len(rows):
            continue
        rows = rows[[owner.get(int(r)) == era.label for r in rows.Run_Number]]
        frames.append(rows[["Run_Number", "Powergroup", "Anomaly_Type"]])
    if not frames:
        return pd.DataFrame(columns=["Run_Number", "Powergroup", "Anomaly_Type"])
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(Powergroup=rows.Powergroup.astype(str).str.split(":")).explode("Powergroup")
    if len(persistent):
        pairs = set(zip(persistent.Run_Number.astype(int), persistent.Powergroup, strict=True))
        drop = [(int(r), g) in pairs for r, g in zip(rows.Run_Number, rows.Powergroup, strict=True)]
        rows = rows[~np.asarray(drop, dtype=bool)]
    return rows.reset_index(drop=True)


def anomaly_types(eras: Sequence[EraFolderData]) -> list[str]:
    """The known types, then any other type the tables hold (a later addition is not lost)."""
    found: set[str] = set()
    for era in eras:
        for name in ("per_ls", "powergroup"):
            found |= set(era.tables[name].Anomaly_Type.dropna().astype(str))
    return [*KNOWN_TYPES, *sorted(found - set(KNOWN_TYPES))]


def powergroup_stats(
    eras: Sequence[EraFolderData], model_dead: dict[str, list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """powergroups.csv (one row per group, canonical order) and dead_groups.csv."""
    owner = first_era_of_runs(eras)
    persistent = persistent_pairs(eras, owner)
    per_ls = _exploded(eras, owner, "per_ls", persistent)
    ranges = _exploded(eras, owner, "powergroup", persistent)
    types = anomaly_types(eras)
    table = pd.DataFrame(
        {
            "Powergroup": GROUP_NAMES,
            "Shell": [name.split("_")[1] for name in GROUP_NAMES],
            "Disk": GROUP_DISK.astype(int),
            "ROG": GROUP_ROG.astype(int),
        }
    )
    ls_counts = per_ls.groupby(["Powergroup", "Anomaly_Type"]).size()
    range_counts = ranges.groupby(["Powergroup", "Anomaly_Type"]).size()
    for kind in types:
        for suffix, counts in (("LS", ls_counts), ("Ranges", range_counts)):
            column = counts.xs(kind, level=1) if kind in counts.index.get_level_values(1) else None
            values = table.Powergroup.map(column) if column is not None else 0
            table[f"{kind}_{suffix}"] = pd.Series(values, index=table.index).fillna(0)
    table["Anomalous_LS"] = table[[f"{k}_LS" for k in types]].sum(axis=1)
    table["Ranges"] = table[[f"{k}_Ranges" for k in types]].sum(axis=1)
    runs_persistent = persistent.groupby("Powergroup").Run_Number.nunique()
    table["Persistent_Runs"] = table.Powergroup.map(runs_persistent).fillna(0)
    counts = [c for c in table.columns if c.endswith(("_LS", "_Ranges", "_Runs")) or c == "Ranges"]
    table[counts] = table[counts].astype("Int64")
    dead = table.Powergroup.isin(list(model_dead))
    table.loc[dead, [c for c in counts if c != "Persistent_Runs"]] = pd.NA
    table["Status"] = np.where(dead, "dead: the model cannot judge it", JUDGED)
    table.loc[~dead & (table.Persistent_Runs > 0), "Status"] = (
        "judged; persistent in some runs (not counted there)"
    )
    return table, dead_groups_table(model_dead, persistent, eras)


def pileup_samples(eras: Sequence[EraFolderData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(all DCS-good LS, anomalous LS with their type), each with its pileup, counted runs."""
    owner = first_era_of_runs(eras)
    good, anomalous = [], []
    for era in eras:
        results = era.results
        results = results[[owner.get(int(r)) == era.label for r in results.run]]
        good.append(results.loc[results.dcs_good.astype(bool), ["run", "ls", "pileup"]])
        per_ls = era.tables["per_ls"]
        if len(per_ls):
            keys = per_ls[["Run_Number", "Lumisection", "Anomaly_Type"]].set_axis(
                ["run", "ls", "type"], axis=1
            )
            anomalous.append(keys.merge(results[["run", "ls", "pileup"]], on=["run", "ls"]))
    empty = pd.DataFrame(columns=["run", "ls", "pileup"])
    all_good = pd.concat(good, ignore_index=True) if good else empty
    hits = pd.concat(anomalous, ignore_index=True) if anomalous else empty.assign(type="")
    return all_good, hits


# ---- the merged workbook -------------------------------------------------------------------------

ROW_FILLS = {  # the original's merged workbook highlights Multi-Disk rows; Quarter too
    ANOMALY_MULTI_DISK: "FFC7CE",  # light red
    ANOMALY_QUARTER: "E4D7F5",  # light purple
}


def merged_tables(eras: Sequence[EraFolderData]) -> dict[str, pd.DataFrame]:
    """Sheet name -> the table of every era, one under the other, with an `Era` column first."""
    merged = {}
    for name, sheet in XLSX_SHEETS.items():
        frames = [e.tables[name].assign(**{ERA_COLUMN: e.label}) for e in eras if name in e.tables]
        if not frames:
            continue
        table = pd.concat(frames, ignore_index=True)
        merged[sheet] = table[[ERA_COLUMN, *[c for c in table.columns if c != ERA_COLUMN]]]
    return merged


def write_merged_xlsx(
    path: Path, merged: dict[str, pd.DataFrame], extra: dict[str, pd.DataFrame]
) -> Path:
    """The merged tables (Multi-Disk and Quarter rows filled) and the statistics, a sheet each."""
    from openpyxl.styles import PatternFill

    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for sheet, table in {**merged, **extra}.items():
            frozen = "B2" if ERA_COLUMN in table.columns else "A2"  # the Era column stays in view
            worksheet = write_readable_sheet(writer, table, sheet, frozen=frozen)
            type_column = next((c for c in TYPE_COLUMNS if c in table.columns), None)
            if type_column is None:
                continue
            fills = {k: PatternFill("solid", start_color=c) for k, c in ROW_FILLS.items()}
            for row, kind in enumerate(table[type_column].astype(str), start=2):
                if kind in fills:
                    for cell in worksheet[row]:
                        cell.fill = fills[kind]
    return path
