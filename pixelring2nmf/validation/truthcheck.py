"""An era's power-group table against the simulator's truth: what was found, what was invented.

Shared by the tests, `bench/era.py` and `evaluation.score_era`, which must judge the same way
and count the same events. The truth (`truth.csv`, one row per anomalous LS) is turned into
ranges; every injected Multi-Disk, Quarter and Single-Disk range must appear as one row with
exactly its first and last LS, its type and its groups (less the groups the model cannot judge,
e.g. a permanently dead one: it cannot die again; the type is the one those groups imply, so
a Single-Disk injection beside a dead partner disk must be `Same-Disk`); every table row must
lie inside some injected range of any kind (partial dropouts may legitimately produce rows),
otherwise it is a false row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlserver_model.geometry import GROUP_NAMES, anomaly_type

MUST_FIND = ("Multi-Disk", "Quarter", "Single-Disk")


@dataclass(frozen=True)
class TruthComparison:
    """Per kind: injected ranges and those found exactly; rows outside every injection."""

    injected: dict[str, int]
    found: dict[str, int]
    missed: pd.DataFrame  # injected ranges of MUST_FIND kinds without their exact row
    false_rows: pd.DataFrame  # table rows that overlap no injected range

    @property
    def perfect(self) -> bool:
        return self.missed.empty and self.false_rows.empty

    def describe(self) -> str:
        kinds = "; ".join(f"{k} {self.found[k]}/{self.injected[k]}" for k in MUST_FIND)
        return f"found exactly: {kinds}; rows where nothing was injected: {len(self.false_rows)}"


def truth_event_ids(truth: pd.DataFrame) -> np.ndarray:
    """Event number (from 1) of every truth.csv row, in the frame's own row order.

    An event is one injected anomaly: consecutive LS of one run with the same type and
    groups. Empty groups (Missing LS) compare equal whether read as "" or as NaN, so a block
    of missing LS is one event however the CSV was read.
    """
    order = np.lexsort((truth.ls.to_numpy(), truth.run.to_numpy()))
    groups = truth.groups.fillna("").to_numpy()[order]
    kind = truth.anomaly_type.to_numpy()[order]
    run, ls = truth.run.to_numpy()[order], truth.ls.to_numpy()[order]
    starts = np.ones(len(truth), dtype=bool)
    starts[1:] = (
        (run[1:] != run[:-1])
        | (ls[1:] != ls[:-1] + 1)
        | (kind[1:] != kind[:-1])
        | (groups[1:] != groups[:-1])
    )
    ids = np.empty(len(truth), dtype=np.int64)
    ids[order] = np.cumsum(starts)
    return ids


def truth_ranges(truth: pd.DataFrame) -> pd.DataFrame:
    """truth.csv rows (one per LS) -> one row per injected anomaly: run, first, last, kind."""
    truth = truth.sort_values(["run", "ls"], ignore_index=True)
    ranges = truth.assign(groups=truth.groups.fillna("")).groupby(truth_event_ids(truth))
    return ranges.agg(
        run=("run", "first"),
        first_ls=("ls", "first"),
        last_ls=("ls", "last"),
        kind=("anomaly_type", "first"),
        groups=("groups", "first"),
    ).reset_index(drop=True)


def compare_with_truth(
    powergroup: pd.DataFrame, truth: pd.DataFrame, unjudged_groups: np.ndarray
) -> TruthComparison:
    """Match the era's power-group table (`tables.powergroup_table`) with the injections."""
    injected = truth_ranges(truth)
    unjudged = {GROUP_NAMES[g] for g in np.flatnonzero(unjudged_groups)}
    rows = {
        (r.Run_Number, r.Start_LS, r.End_LS, r.Powergroup, r.Anomaly_Type)
        for r in powergroup.itertuples()
    }
    must = injected[injected.kind.isin(MUST_FIND)]
    judged = [
        [g for g in r.groups.split(";") if g and g not in unjudged] for r in must.itertuples()
    ]
    # the type the model must give: a Single-Disk injection beside a group it cannot judge
    # (the partner disk of its Multi-Disk candidate) is `Same-Disk`
    expected_keys = [
        (r.run, r.first_ls, r.last_ls, ":".join(groups), anomaly_type(groups, sorted(unjudged)))
        for r, groups in zip(must.itertuples(), judged, strict=True)
    ]
    hit = np.array([key in rows for key in expected_keys], dtype=bool)
    inside_some = [
        bool(
            (
                (injected.run == r.Run_Number)
                & (injected.first_ls <= r.Start_LS)
                & (injected.last_ls >= r.End_LS)
            ).any()
        )
        for r in powergroup.itertuples()
    ]
    return TruthComparison(
        injected={k: int((must.kind == k).sum()) for k in MUST_FIND},
        found={k: int(hit[(must.kind == k).to_numpy()].sum()) for k in MUST_FIND},
        missed=must[~hit].reset_index(drop=True),
        false_rows=powergroup[~np.asarray(inside_some, dtype=bool)].reset_index(drop=True),
    )
