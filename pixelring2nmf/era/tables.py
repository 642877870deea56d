"""The original's era spreadsheets, built from per-LS results: ranges, groups, runs.

The experts kept three tables per era (docs/domain.md) and compared eras through them, so
the column names and value formats here are theirs exactly (`Disk -2:-3`,
`FPix_BmI_D2_ROG2:FPix_BmI_D3_ROG2`, `-2:-3`, `Ring 2`, `Forward`). Everything is derived from
the per-LS results the model produced (`io.results`, plus `pileup`): no decision of
the model is taken again here, only grouped.

Which LS enter the tables: DCS-good LS with at least one anomalous power group (Single-Disk
ones included, although only Multi-Disk ones set the Flag). DCS-bad LS are left out: with the
detector off every group looks dead, and the served model never flags them either.

Persistent anomalies: a group anomalous in most DCS-good LS of a run is a dead group the model
does not know or a stale model, not hundreds of transient anomalies. It is reported once per
run in its own table, and LS whose anomalous groups are all persistent ones leave the range
tables; an LS with a further group keeps its full set (and the model's type), so a real
dropout on top of a persistent problem still shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlserver_model.geometry import ANOMALY_SAME_DISK, GROUP_DISK, GROUP_NAMES

from ..io.original_sheets import LAYOUTS as ORIGINAL_LAYOUTS
from ..io.results import MODEL_COLUMN, RECORDED_LUMI_COLUMN, RESULT_COLUMNS
from ..model.rings import RING2_TABLES, TableRing

# the result columns the tables read (io/results.py names them; why DCS failed is not used)
NEEDED_COLUMNS = tuple(name for name in RESULT_COLUMNS if name != "dcs_failed")

# the original's columns (io/original_sheets.py: compare reads them back), then ours after them
CONDENSED_COLUMNS = (
    *ORIGINAL_LAYOUTS["condensed"],
    "Recorded Lumi (pb^-1)",  # not in the original: the OMS recorded luminosity of the range
)
POWERGROUP_COLUMNS = (
    *ORIGINAL_LAYOUTS["powergroup"],
    "Recorded_Lumi_pb",  # not in the original: the OMS recorded luminosity of the range
)
PER_LS_COLUMNS = ORIGINAL_LAYOUTS["per_ls"]
PERSISTENT_COLUMNS = (
    "Run_Number",
    "Powergroup",
    "Disk",
    "Anomalous_LS",
    "DCS_Good_LS",
    "Fraction",
    "First_LS",
    "Last_LS",
    "Note",
)
RING = 2  # Ring 2's number; an era of another ring passes its TableRing
LUMI_DECIMALS = 6  # pb^-1: an LS holds ~0.5, so a micro-pb is far below anything read
PERSISTENT_NOTE = "dead group the model does not know, or a stale model: retrain or exclude"

_DISK_OF = dict(zip(GROUP_NAMES, GROUP_DISK.tolist(), strict=True))


@dataclass(frozen=True)
class PersistenceRule:
    """When a group counts as persistently anomalous in a run.

    Real dropouts last 1-16 LS, so with at least `min_dcs_good_ls` = 50 DCS-good LS a group
    needs 26 or more anomalous LS to pass `fraction` = 0.5: no transient anomaly can.
    """

    fraction: float = 0.5
    min_dcs_good_ls: int = 50


@dataclass(frozen=True)
class EraTables:
    """Everything written from one era: the three original tables and the two summaries."""

    condensed: pd.DataFrame
    powergroup: pd.DataFrame
    per_ls: pd.DataFrame
    run_summary: pd.DataFrame
    persistent: pd.DataFrame

    def sheets(self) -> dict[str, pd.DataFrame]:
        """Sheet name -> table, in the order a reader wants them (also the CSV stems)."""
        return {
            "condensed": self.condensed,
            "powergroup": self.powergroup,
            "per_ls": self.per_ls,
            "run_summary": self.run_summary,
            "persistent": self.persistent,
        }


def disks_of(groups: str) -> str:
    """'FPix_BmI_D2_ROG2;FPix_BmI_D3_ROG2' -> '-2:-3': the disks as the experts write them.

    Ordered by |disk| (then minus before plus), as in the original's `-1:-2:-3`.
    """
    disks = {_DISK_OF[name] for name in groups.split(";") if name}
    return ":".join(str(d) for d in sorted(disks, key=lambda d: (abs(d), d)))


def era_tables(
    results: pd.DataFrame,
    rule: PersistenceRule = PersistenceRule(),
    ring: TableRing = RING2_TABLES,
) -> EraTables:
    """All tables of an era from per-LS results (any order; one row per (run, LS)); `ring`
    names the ring(s) the model judged in `Ring_Num` and `Row/Quarter` (model/rings.py)."""
    missing = [c for c in NEEDED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"per-LS results lack column(s) {missing}; found {list(results.columns)}")
    results = results.sort_values(["run", "ls"], kind="stable", ignore_index=True)
    anomalous = results[results.dcs_good & (results.groups != "")]
    persistent = persistent_groups(results, anomalous, rule)
    transient = _without_persistent(anomalous, persistent)
    ranges = anomaly_ranges(transient)
    return EraTables(
        condensed=condensed_table(ranges, ring),
        powergroup=powergroup_table(ranges, ring),
        per_ls=per_ls_table(transient, ring),
        run_summary=run_summary(results, ranges, persistent),
        persistent=persistent,
    )


def persistent_groups(
    results: pd.DataFrame, anomalous: pd.DataFrame, rule: PersistenceRule
) -> pd.DataFrame:
    """One row per (run, group) anomalous in more than `rule.fraction` of the DCS-good LS."""
    if anomalous.empty:
        return pd.DataFrame(columns=list(PERSISTENT_COLUMNS))
    per_group = (
        anomalous[["run", "ls", "groups"]]
        .assign(group=anomalous.groups.str.split(";"))
        .explode("group")
        .groupby(["run", "group"])
        .ls.agg(["size", "min", "max"])
        .reset_index()
    )
    good_ls = results[results.dcs_good].groupby("run").size().rename("good")
    per_group = per_group.join(good_ls, on="run")
    fraction = per_group["size"] / per_group["good"]
    keep = (per_group["good"] >= rule.min_dcs_good_ls) & (fraction > rule.fraction)
    rows = per_group[keep]
    return pd.DataFrame(
        {
            "Run_Number": rows.run.astype(np.int64),
            "Powergroup": rows.group,
            "Disk": [str(_DISK_OF[g]) for g in rows.group],
            "Anomalous_LS": rows["size"].astype(np.int64),
            "DCS_Good_LS": rows["good"].astype(np.int64),
            "Fraction": np.round(fraction[keep].to_numpy(), 3),
            "First_LS": rows["min"].astype(np.int64),
            "Last_LS": rows["max"].astype(np.int64),
            "Note": PERSISTENT_NOTE,
        },
        columns=list(PERSISTENT_COLUMNS),
    ).reset_index(drop=True)


def _without_persistent(anomalous: pd.DataFrame, persistent: pd.DataFrame) -> pd.DataFrame:
    """Drop the LS whose anomalous groups are all persistent ones of their run."""
    if persistent.empty:
        return anomalous
    by_run = persistent.groupby("Run_Number").Powergroup.agg(frozenset).to_dict()
    only_persistent = [
        set(groups.split(";")) <= by_run.get(run, frozenset())
        for run, groups in zip(anomalous.run, anomalous.groups, strict=True)
    ]
    return anomalous[~np.asarray(only_persistent, dtype=bool)]


def anomaly_ranges(anomalous: pd.DataFrame) -> pd.DataFrame:
    """Consecutive LS of a run with the same set of anomalous groups, one row each.

    `anomalous` is sorted by (run, LS). A gap in LS numbers (an LS without data, DCS-bad or
    healthy) or any change of the set starts a new range, as in the original's tables.
    """
    columns = ["run", "first_ls", "last_ls", "n_ls", "groups", "type", "flagged_ls", "metric"]
    columns.append("recorded_lumi")
    if anomalous.empty:
        return pd.DataFrame(columns=columns)
    if RECORDED_LUMI_COLUMN not in anomalous.columns:  # results of `predict`, not of an era
        anomalous = anomalous.assign(**{RECORDED_LUMI_COLUMN: np.nan})
    run = anomalous.run.to_numpy()
    ls = anomalous.ls.to_numpy()
    groups = anomalous.groups.to_numpy()
    starts = np.ones(len(anomalous), dtype=bool)
    starts[1:] = (run[1:] != run[:-1]) | (ls[1:] != ls[:-1] + 1) | (groups[1:] != groups[:-1])
    range_id = np.cumsum(starts)
    ranges = anomalous.groupby(range_id).agg(
        run=("run", "first"),
        first_ls=("ls", "first"),
        last_ls=("ls", "last"),
        n_ls=("ls", "size"),
        groups=("groups", "first"),
        type=("type", "first"),
        n_types=("type", "nunique"),
        flagged_ls=("flag", "sum"),
        metric=("metric", "max"),
    )
    if (ranges.n_types > 1).any():  # the type is a function of the group set
        raise RuntimeError("one set of anomalous groups received two anomaly types")
    # the luminosity the range costs; NaN (not 0) when OMS gave none for any of its LS
    lumi = anomalous[RECORDED_LUMI_COLUMN].groupby(range_id).sum(min_count=1)
    ranges["recorded_lumi"] = lumi.round(LUMI_DECIMALS)
    return ranges[columns].reset_index(drop=True)


def condensed_table(ranges: pd.DataFrame, ring: TableRing = RING2_TABLES) -> pd.DataFrame:
    """`Run, First LS, Last LS, Total LS, Barrel/Forward, Layer/Disk, Row/Quarter, Type`."""
    return pd.DataFrame(
        {
            "Run": ranges.run.astype(np.int64),
            "First LS": ranges.first_ls.astype(np.int64),
            "Last LS": ranges.last_ls.astype(np.int64),
            "Total LS": ranges.n_ls.astype(np.int64),
            "Barrel/Forward": "Forward",
            "Layer/Disk": ["Disk " + disks_of(g) for g in ranges.groups],
            "Row/Quarter": ring.name,
            "Type": ranges.type,
            "Recorded Lumi (pb^-1)": ranges.recorded_lumi.astype(np.float64),
        },
        columns=list(CONDENSED_COLUMNS),
    )


def powergroup_table(ranges: pd.DataFrame, ring: TableRing = RING2_TABLES) -> pd.DataFrame:
    """`Run_Number, Start_LS, End_LS, Num_LS, Powergroup, Disk, Ring_Num, Anomaly_Type`."""
    return pd.DataFrame(
        {
            "Run_Number": ranges.run.astype(np.int64),
            "Start_LS": ranges.first_ls.astype(np.int64),
            "End_LS": ranges.last_ls.astype(np.int64),
            "Num_LS": ranges.n_ls.astype(np.int64),
            "Powergroup": ranges.groups.str.replace(";", ":", regex=False),
            "Disk": [disks_of(g) for g in ranges.groups],
            "Ring_Num": ring.number,
            "Anomaly_Type": ranges.type,
            "Recorded_Lumi_pb": ranges.recorded_lumi.astype(np.float64),
        },
        columns=list(POWERGROUP_COLUMNS),
    )


def per_ls_table(anomalous: pd.DataFrame, ring: TableRing = RING2_TABLES) -> pd.DataFrame:
    """`Run_Number, Lumisection, Powergroup, Disk, Ring_Num, Anomaly_Type`, one row per LS."""
    return pd.DataFrame(
        {
            "Run_Number": anomalous.run.astype(np.int64),
            "Lumisection": anomalous.ls.astype(np.int64),
            "Powergroup": anomalous.groups.str.replace(";", ":", regex=False),
            "Disk": [disks_of(g) for g in anomalous.groups],
            "Ring_Num": ring.number,
            "Anomaly_Type": anomalous.type,
        },
        columns=list(PER_LS_COLUMNS),
    ).reset_index(drop=True)


def run_summary(
    results: pd.DataFrame, ranges: pd.DataFrame, persistent: pd.DataFrame
) -> pd.DataFrame:
    """Per run: LS, DCS-good LS, flagged LS, anomalous LS by type, table rows, persistence."""
    good = results[results.dcs_good]
    by_run = results.groupby("run")
    summary = pd.DataFrame(
        {
            "LS": by_run.size(),
            "First_LS": by_run.ls.min(),
            "Last_LS": by_run.ls.max(),
            "DCS_Good_LS": good.groupby("run").size(),
            "Flagged_LS": by_run.flag.sum(),
        }
    )
    for kind in ("Multi-Disk", "Quarter", "Single-Disk"):
        summary[f"{kind}_LS"] = good[good.type == kind].groupby("run").size()
    summary["Rows"] = ranges.groupby("run").size() if len(ranges) else 0
    summary["Persistent_Groups"] = (
        persistent.groupby("Run_Number").Powergroup.agg(":".join) if len(persistent) else ""
    )
    summary["Max_Metric"] = by_run.metric.max().round(4)
    if "pileup" in results.columns:
        summary["Mean_Pileup"] = by_run.pileup.mean().round(2)
    counts = [c for c in summary.columns if c.endswith("_LS") or c == "Rows"]
    summary[counts] = summary[counts].fillna(0).astype(np.int64)
    summary["Persistent_Groups"] = summary["Persistent_Groups"].fillna("")
    _append_same_disk_and_lumi(summary, results)
    if MODEL_COLUMN in results.columns:  # the model file that judged the run (model/periods.py)
        summary["Model"] = by_run[MODEL_COLUMN].first()
    return summary.rename_axis("Run_Number").reset_index()


def _append_same_disk_and_lumi(summary: pd.DataFrame, results: pd.DataFrame) -> None:
    """Columns after the original ones: Same-Disk LS, the run's DCS-good recorded luminosity
    and the part of it in flagged LS (pb^-1; NaN when OMS gave no luminosity for the run)."""
    good = results[results.dcs_good]
    same_disk = good[good.type == ANOMALY_SAME_DISK].groupby("run").size()
    summary[f"{ANOMALY_SAME_DISK}_LS"] = same_disk.reindex(summary.index).fillna(0).astype(np.int64)
    if RECORDED_LUMI_COLUMN not in results.columns:
        results = results.assign(**{RECORDED_LUMI_COLUMN: np.nan})
    lumi = results[RECORDED_LUMI_COLUMN]
    known = lumi.notna().groupby(results.run).any()  # a run OMS gave any luminosity for
    for name, selected in (
        ("DCS_Good_Lumi_pb", results.dcs_good),
        ("Flagged_Lumi_pb", results.flag),
    ):
        total = lumi.where(selected.astype(bool), 0.0).fillna(0.0).groupby(results.run).sum()
        summary[name] = total.where(known).reindex(summary.index).round(LUMI_DECIMALS)
