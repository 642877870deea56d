"""Our era tables against the original's spreadsheets: the same anomalies, range by range.

Until DIALS data can be compared here, the experts judge this model on real data by running
`era` on the DIALS files the original saw and comparing with the original's spreadsheets. The
two sides split ranges differently (the original's 498-502 may be our 498-500 and 501-502,
because our group set changed at 501), so "the same anomaly" is decided LS by LS and then
reported per range:

1. Both sides become (run, LS) entries with their type and disks (and power groups where the
   side has them: the condensed layout has only disks).
2. Only what both inputs hold is compared: runs the original covers (the runs its files name,
   or `--runs`) and our era judged; LS our era judged DCS-good; not an LS where our era
   reports only persistent groups (persistent.csv: our range tables leave them out). The rest
   is counted and listed (not_compared.csv) with its reason.
3. An LS matches when both sides have it, their types are of one class (Multi-Disk = Multi-Disk
   or Quarter: the original typed a whole quarter Multi-Disk; Single-Disk = Single-Disk or
   Same-Disk: the original typed Same-Disk anomalies Single-Disk), their disks overlap, and,
   where both sides name groups, their groups overlap.
4. Ranges joined by a matched LS form one anomaly: one `agree` row (with both sides' ranges,
   as many as each side had). A range with compared LS of which none matched is `only
   original` or `only ours`, with a note saying what the other side had there, if anything.

`exact` marks an agreeing anomaly that is one row on each side with the same LS, disks (and
groups where both have them) and type class: the original's row, unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.geometry import GROUP_DISK, GROUP_NAMES

from ..era.output import FINISHED, INCOMPLETE, RESULTS_STEM, SUMMARY_NAME, table_csv
from ..errors import DataError
from ..io.original_sheets import LAYOUT_PRIORITY, TYPES, OriginalSheets

AGREE, ONLY_ORIGINAL, ONLY_OURS = "agree", "only original", "only ours"
STATUSES = (AGREE, ONLY_ORIGINAL, ONLY_OURS)
TYPE_CLASS = {
    "Multi-Disk": "Multi-Disk",
    "Quarter": "Multi-Disk",
    "Single-Disk": "Single-Disk",
    "Same-Disk": "Single-Disk",
}
COMPARE_COLUMNS = (
    "status",
    "run",
    "first_ls",
    "last_ls",
    "original_ls",
    "original_type",
    "original_disks",
    "original_groups",
    "original_source",
    "ours_ls",
    "ours_type",
    "ours_disks",
    "ours_groups",
    "compared_ls",
    "matched_ls",
    "exact",
    "note",
)
NOT_COMPARED_COLUMNS = ("side", "run", "first_ls", "last_ls", "type", "disks", "groups", "source")
NOT_COMPARED_COLUMNS += ("reason",)
# why something was not compared
RUN_NOT_IN_ERA = "run not in the era"
RUN_OUTSIDE_RUNS = "run outside --runs"
RUN_NOT_IN_ORIGINAL = "run not in the original's files"
LS_NOT_IN_ERA = "LS not in the era"
LS_DCS_BAD = "LS DCS-bad in the era"
LS_PERSISTENT = "persistent group in the era (persistent.csv)"
RICHER_LAYOUT = "run also given in a richer layout"
REPEATED_ROW = "the same row given again"
DUPLICATES = (RICHER_LAYOUT, REPEATED_ROW)  # rows counted apart: their anomaly is compared

_DISK_OF = dict(zip(GROUP_NAMES, GROUP_DISK.tolist(), strict=True))
logger = logging.getLogger(__name__)


@dataclass
class EraSide:
    """What compare reads of an era folder."""

    folder: Path
    state: str
    lumisections: pd.DataFrame  # run, ls, dcs_good
    ranges: pd.DataFrame  # run, first_ls, last_ls, type, disks, groups, source
    persistent: dict[int, frozenset[str]]  # run -> persistent groups
    ring: int = 2  # the ring its model judged (era.json `ring`; absent: Ring 2)


@dataclass
class Comparison:
    """compare.csv, its two summaries, what was not compared, and the counts behind the line."""

    table: pd.DataFrame
    runs: pd.DataFrame
    types: pd.DataFrame
    not_compared: pd.DataFrame
    counts: dict = field(default_factory=dict)
    ring: int = 2  # the era's ring: the original's rows of the other ring are left out

    def summary_line(self) -> str:
        c = self.counts
        line = (
            f"compare: {c[AGREE]} range(s) agree, {c[ONLY_ORIGINAL]} only original, "
            f"{c[ONLY_OURS]} only ours ({c['matched_ls']} LS matched of {c['original_ls']} "
            f"original and {c['our_ls']} of ours compared)"
        )
        original = c["original_not_compared"]
        ours = c["ours_not_compared"]
        parts = []
        if original:
            why = ", ".join(f"{k}: {v}" for k, v in original.items())
            parts.append(f"{sum(original.values())} original range(s) not compared ({why})")
        if ours:
            why = ", ".join(f"{k}: {v}" for k, v in ours.items())
            parts.append(f"{sum(ours.values())} of ours not compared ({why})")
        if c["duplicate_rows"]:
            parts.append(
                f"{c['duplicate_rows']} original row(s) repeated or also given in a richer layout"
            )
        if c["other_ring_rows"]:
            parts.append(f"{c['other_ring_rows']} Ring {3 - self.ring} row(s) left out")
        return line + ("; " + "; ".join(parts) if parts else "")


def read_era(folder: Path) -> EraSide:
    """An era folder written by `era`: refused unless era.json says finished or incomplete."""
    folder = Path(folder)
    status_path = folder / SUMMARY_NAME
    try:
        status = json.loads(status_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder}: no {SUMMARY_NAME}; is it a folder written by `era`?") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{status_path}: cannot read it: {error}") from None
    state = status.get("state", "")
    if not (status.get("complete") is True or state == INCOMPLETE):
        reason = f" ({status['reason']})" if status.get("reason") else ""
        raise DataError(
            f"{folder}: the era is not complete ({SUMMARY_NAME} says state {state!r}{reason}); "
            "rerun `era` before comparing"
        )
    parquet = folder / f"{RESULTS_STEM}.parquet"
    columns = ["run", "ls", "dcs_good"]
    try:
        if parquet.is_file():
            lumisections = pd.read_parquet(parquet, columns=columns)
        else:
            lumisections = pd.read_csv(folder / f"{RESULTS_STEM}.csv", usecols=columns)
        powergroup = pd.read_csv(
            table_csv(folder, "powergroup"), keep_default_na=False, dtype={"Powergroup": str}
        )
        persistent = pd.read_csv(table_csv(folder, "persistent"), keep_default_na=False)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{folder}: cannot read the era's tables: {error}") from None
    ranges = pd.DataFrame(
        {
            "run": powergroup.Run_Number.astype(np.int64),
            "first_ls": powergroup.Start_LS.astype(np.int64),
            "last_ls": powergroup.End_LS.astype(np.int64),
            "type": powergroup.Anomaly_Type.astype(str),
            "disks": [_disks_text(g.split(":")) for g in powergroup.Powergroup],
            "groups": powergroup.Powergroup.astype(str),
            "source": [f"powergroup.csv:row {i + 2}" for i in range(len(powergroup))],
        }
    )
    by_run = persistent.groupby("Run_Number").Powergroup.agg(frozenset) if len(persistent) else {}
    return EraSide(
        folder=folder,
        state=state if state else FINISHED,
        lumisections=lumisections.astype({"run": np.int64, "ls": np.int64, "dcs_good": bool}),
        ranges=ranges,
        persistent={int(k): v for k, v in dict(by_run).items()},
        ring=_era_ring(folder, status),
    )


def _era_ring(folder: Path, status: dict) -> int:
    """The ring of an era (era.json `ring`, absent for Ring 2); a joint era has no counterpart
    in the original, which judged each ring alone."""
    ring = str(status.get("ring", "Ring 2"))
    if ring not in ("Ring 1", "Ring 2"):
        raise DataError(
            f"{folder}: a {ring} era (joint model); the original judged each ring alone: "
            "compare an era of a Ring 1 or a Ring 2 model"
        )
    return int(ring[-1])


def _disks_text(groups) -> str:
    disks = {_DISK_OF[g] for g in groups if g}
    return ":".join(str(d) for d in sorted(disks, key=lambda d: (abs(d), d)))


def _in_ranges(runs: np.ndarray, run_ranges: list[tuple[int, int | None]]) -> np.ndarray:
    inside = np.zeros(len(runs), dtype=bool)
    for first, last in run_ranges:
        inside |= (runs >= first) & (runs <= (last if last is not None else np.iinfo(np.int64).max))
    return inside


def compare(
    original: OriginalSheets,
    era: EraSide,
    run_ranges: list[tuple[int, int | None]] | None = None,
) -> Comparison:
    """The comparison, as the module docstring defines it."""
    theirs, dropped = _one_layout_per_run(original.ranges)
    ours = era.ranges.copy()
    era_runs = np.unique(era.lumisections.run.to_numpy())
    if run_ranges:
        covered = set(era_runs[_in_ranges(era_runs, run_ranges)].tolist())
    else:
        covered = set(original.runs) & set(era_runs.tolist())

    # runs: what the two sides have in common
    their_run = theirs.run.to_numpy(np.int64)
    theirs["reason"] = ""
    if run_ranges:
        theirs.loc[~_in_ranges(their_run, run_ranges), "reason"] = RUN_OUTSIDE_RUNS
    theirs.loc[(theirs.reason == "") & ~np.isin(their_run, era_runs), "reason"] = RUN_NOT_IN_ERA
    ours["reason"] = ""
    outside = RUN_OUTSIDE_RUNS if run_ranges else RUN_NOT_IN_ORIGINAL
    ours.loc[~ours.run.isin(covered), "reason"] = outside

    # LS: expand, then keep what both sides hold
    their_ls = _expand(theirs[theirs.reason == ""])
    our_ls = _expand(ours[ours.reason == ""])
    their_ls = _ls_coverage(their_ls, era, our_ls)
    compared_theirs = their_ls[their_ls.reason == ""]
    pairs = compared_theirs.merge(our_ls, on=["run", "ls"], suffixes=("_o", "_u"))
    pairs["match"] = _matches(pairs)

    table, side_status = _anomalies(theirs, ours, their_ls, our_ls, pairs)
    not_compared = _not_compared(theirs, ours, their_ls, dropped)
    counts = {
        **{s: int((table.status == s).sum()) for s in STATUSES},
        "original_ls": len(compared_theirs.drop_duplicates(["run", "ls"])),
        "our_ls": len(our_ls.drop_duplicates(["run", "ls"])),
        "matched_ls": int(pairs[pairs.match].drop_duplicates(["run", "ls"]).shape[0]),
        "original_not_compared": _reasons(
            not_compared[(not_compared.side == "original") & ~not_compared.reason.isin(DUPLICATES)]
        ),
        "duplicate_rows": int(not_compared.reason.isin(DUPLICATES).sum()),
        "ours_not_compared": _reasons(not_compared[not_compared.side == "ours"]),
        "original_ls_not_compared": _reasons(their_ls[their_ls.reason != ""]),
        "other_ring_rows": original.other_ring_rows,
        "compared_runs": len(covered),
    }
    return Comparison(
        table=table,
        runs=_run_summary(
            theirs, ours, side_status, their_ls, our_ls, pairs, covered, era, original.runs
        ),
        types=_type_summary(theirs, ours, side_status, their_ls, our_ls, pairs),
        not_compared=not_compared,
        counts=counts,
        ring=era.ring,
    )


def _one_layout_per_run(ranges: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each run, only the rows of its richest layout (the same era is often given in all
    three): powergroup, then per-LS, then condensed. The other rows are returned to count."""
    ranges = ranges.reset_index(drop=True)
    if ranges.empty:
        return ranges.assign(range_id=pd.Series(dtype=np.int64)), ranges.assign(reason="")
    rank = ranges.layout.map({layout: i for i, layout in enumerate(LAYOUT_PRIORITY)})
    best = rank.groupby(ranges.run).transform("min")
    keep = rank == best
    # the same row twice (one file given twice, overlapping files) is one range
    again = keep & ranges.duplicated(["run", "first_ls", "last_ls", "type", "disks", "groups"])
    kept = ranges[keep & ~again].sort_values(["run", "first_ls"], kind="stable")
    kept = kept.reset_index(drop=True)
    dropped = pd.concat(
        [ranges[~keep].assign(reason=RICHER_LAYOUT), ranges[again].assign(reason=REPEATED_ROW)]
    )
    return kept.assign(range_id=np.arange(len(kept))), dropped


def _expand(ranges: pd.DataFrame) -> pd.DataFrame:
    """One row per (range, LS): run, ls, range_id, class, disks and groups as sets."""
    n = (ranges.last_ls - ranges.first_ls + 1).to_numpy(np.int64)
    index = np.repeat(np.arange(len(ranges)), n)
    starts = np.repeat(ranges.first_ls.to_numpy(np.int64), n)
    offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    rows = ranges.iloc[index]
    return pd.DataFrame(
        {
            "run": rows.run.to_numpy(np.int64),
            "ls": starts + offsets,
            "range_id": ranges.index.to_numpy()[index],
            "kind": rows.type.map(TYPE_CLASS).to_numpy(),
            "disks": [frozenset(d.split(":")) for d in rows.disks],
            "groups": [frozenset(g.split(":")) if g else frozenset() for g in rows.groups],
        }
    )


def _ls_coverage(their_ls: pd.DataFrame, era: EraSide, our_ls: pd.DataFrame) -> pd.DataFrame:
    """The original's LS, each with why it cannot be compared ('' when it can)."""
    judged = era.lumisections.drop_duplicates(["run", "ls"])
    merged = their_ls.merge(judged, on=["run", "ls"], how="left")
    reason = np.where(
        merged.dcs_good.isna(),
        LS_NOT_IN_ERA,
        np.where(merged.dcs_good == False, LS_DCS_BAD, ""),  # noqa: E712
    ).astype(object)
    ours_there = pd.MultiIndex.from_frame(merged[["run", "ls"]]).isin(
        pd.MultiIndex.from_frame(our_ls[["run", "ls"]])
    )
    for i in np.flatnonzero((reason == "") & ~ours_there):
        persistent = era.persistent.get(int(merged.run.iat[i]))
        if persistent and _covered_by(merged.groups.iat[i], merged.disks.iat[i], persistent):
            reason[i] = LS_PERSISTENT
    return merged.drop(columns="dcs_good").assign(reason=reason)


def _covered_by(groups: frozenset, disks: frozenset, persistent: frozenset) -> bool:
    """Are the original's groups (or, in the condensed layout, its disks) all persistent?"""
    if groups:
        return groups <= persistent
    return disks <= {str(_DISK_OF[g]) for g in persistent}


def _matches(pairs: pd.DataFrame) -> np.ndarray:
    """The same anomaly at one LS: one type class, overlapping disks and (if both) groups."""
    same_kind = (pairs.kind_o == pairs.kind_u).to_numpy()
    overlap = [
        bool(d_o & d_u) and (not g_o or not g_u or bool(g_o & g_u))
        for d_o, d_u, g_o, g_u in zip(
            pairs.disks_o, pairs.disks_u, pairs.groups_o, pairs.groups_u, strict=True
        )
    ]
    return same_kind & np.asarray(overlap, dtype=bool)


def _anomalies(
    theirs: pd.DataFrame,
    ours: pd.DataFrame,
    their_ls: pd.DataFrame,
    our_ls: pd.DataFrame,
    pairs: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[tuple[str, int], str]]:
    """compare.csv: matched ranges joined into anomalies, then the unmatched ones."""
    matched = pairs[pairs.match]
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(node: tuple[str, int]) -> tuple[str, int]:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for o, u in set(zip(matched.range_id_o, matched.range_id_u, strict=True)):
        parent[find(("o", int(o)))] = find(("u", int(u)))
    components: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for node in list(parent):
        components.setdefault(find(node), []).append(node)

    # plain records from here: a year's thousands of ranges, one anomaly at a time
    o_rec: dict[int, dict] = theirs.to_dict("index")
    u_rec: dict[int, dict] = ours.to_dict("index")
    compared_o = their_ls[their_ls.reason == ""].groupby("range_id").ls.agg(set).to_dict()
    all_o = their_ls.groupby("range_id").ls.agg(set).to_dict()
    compared_u = our_ls.groupby("range_id").ls.agg(set).to_dict()
    matched_ls = set(zip(matched.run, matched.ls, strict=True))
    rows: list[dict] = []
    status: dict[tuple[str, int], str] = {}
    for nodes in components.values():
        o_ids = sorted(i for s, i in nodes if s == "o")
        u_ids = sorted(i for s, i in nodes if s == "u")
        ls = set().union(*(compared_o[i] for i in o_ids), *(compared_u[i] for i in u_ids))
        row = _row(AGREE, [o_rec[i] for i in o_ids], [u_rec[i] for i in u_ids], ls, matched_ls)
        one_side = row["compared_ls"] - row["matched_ls"]
        notes = [f"{one_side} LS unmatched" if one_side else ""]
        row["note"] = "; ".join(n for n in [*notes, _partial_note(o_ids, compared_o, all_o)] if n)
        rows.append(row)
        status.update({node: AGREE for node in nodes})
    other = dict(zip(pairs.range_id_o, pairs.range_id_u, strict=True))
    for i in sorted(compared_o):
        if ("o", i) in status:
            continue
        row = _row(ONLY_ORIGINAL, [o_rec[i]], [], compared_o[i], set())
        notes = [_partial_note([i], compared_o, all_o)]
        if i in other:
            u = u_rec[other[i]]
            notes.append(f"ours at these LS: {u['type']} on disks {u['disks']}")
        row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
        status[("o", i)] = ONLY_ORIGINAL
    other = dict(zip(pairs.range_id_u, pairs.range_id_o, strict=True))
    for i in sorted(compared_u):
        if ("u", i) in status:
            continue
        row = _row(ONLY_OURS, [], [u_rec[i]], compared_u[i], set())
        if i in other:
            o = o_rec[other[i]]
            row["note"] = f"original at these LS: {o['type']} on disks {o['disks']}"
        rows.append(row)
        status[("u", i)] = ONLY_OURS
    table = pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))
    if len(table):
        table = table.sort_values(["run", "first_ls", "status"], kind="stable")
    return table.reset_index(drop=True), status


def _row(status: str, theirs: list[dict], ours: list[dict], ls: set, matched_ls: set) -> dict:
    """One anomaly: both sides' ranges (';' between ranges), the LS compared and matched."""
    both = theirs + ours
    run = int(both[0]["run"])
    exact = status == AGREE and len(theirs) == len(ours) == 1 and _same_row(theirs[0], ours[0])

    def joined(side: list[dict], key: str) -> str:
        return "; ".join(str(r[key]) for r in side)

    return {
        "status": status,
        "run": run,
        "first_ls": int(min(r["first_ls"] for r in both)),
        "last_ls": int(max(r["last_ls"] for r in both)),
        "original_ls": _ranges_text(theirs),
        "original_type": joined(theirs, "type"),
        "original_disks": joined(theirs, "disks"),
        "original_groups": joined(theirs, "groups"),
        "original_source": joined(theirs, "source"),
        "ours_ls": _ranges_text(ours),
        "ours_type": joined(ours, "type"),
        "ours_disks": joined(ours, "disks"),
        "ours_groups": joined(ours, "groups"),
        "compared_ls": len(ls),
        "matched_ls": sum((run, x) in matched_ls for x in ls),
        "exact": exact,
        "note": "",
    }


def _same_row(o: dict, u: dict) -> bool:
    return (
        (o["first_ls"], o["last_ls"], o["disks"]) == (u["first_ls"], u["last_ls"], u["disks"])
        and TYPE_CLASS[o["type"]] == TYPE_CLASS[u["type"]]
        and (not o["groups"] or o["groups"] == u["groups"])
    )


def _ranges_text(ranges: list[dict]) -> str:
    return "; ".join(
        f"{r['first_ls']}-{r['last_ls']}" if r["first_ls"] != r["last_ls"] else f"{r['first_ls']}"
        for r in ranges
    )


def _partial_note(o_ids: list[int], compared_o: dict, all_o: dict) -> str:
    missing = sum(len(all_o[i]) - len(compared_o[i]) for i in o_ids)
    total = sum(len(all_o[i]) for i in o_ids)
    return f"{missing} of the original's {total} LS not compared" if missing else ""


def _not_compared(
    theirs: pd.DataFrame, ours: pd.DataFrame, their_ls: pd.DataFrame, dropped: pd.DataFrame
) -> pd.DataFrame:
    """Ranges with no LS compared, each with its reason (the commonest of its LS)."""
    columns = ["run", "first_ls", "last_ls", "type", "disks", "groups", "source"]
    compared = set(their_ls.range_id[their_ls.reason == ""])
    ls_reason = (
        their_ls[their_ls.reason != ""]
        .groupby("range_id")
        .reason.agg(lambda r: r.value_counts().index[0])
    )
    original = theirs[~theirs.index.isin(compared)].copy()
    original.loc[original.reason == "", "reason"] = ls_reason
    outside = ours[ours.reason != ""]
    frames = [
        original[[*columns, "reason"]].assign(side="original"),
        dropped[[*columns, "reason"]].assign(side="original"),
        outside[[*columns, "reason"]].assign(side="ours"),
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(NOT_COMPARED_COLUMNS))
    return pd.concat(frames, ignore_index=True).reindex(columns=list(NOT_COMPARED_COLUMNS))


def _reasons(table: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in table.reason.value_counts().items()}


def _run_summary(
    theirs, ours, status, their_ls, our_ls, pairs, covered, era, original_runs
) -> pd.DataFrame:
    """Per run: ranges on each side with their status, LS compared and matched."""
    era_runs = set(era.lumisections.run.tolist())
    runs = sorted(set(theirs.run) | set(ours.run) | set(covered))
    o_status = pd.Series({i: s for (side, i), s in status.items() if side == "o"}, dtype=object)
    u_status = pd.Series({i: s for (side, i), s in status.items() if side == "u"}, dtype=object)
    theirs = theirs.assign(status=o_status.reindex(theirs.index).fillna("not compared"))
    ours = ours.assign(status=u_status.reindex(ours.index).fillna("not compared"))
    summary = pd.DataFrame(index=pd.Index(runs, name="Run", dtype=np.int64))
    summary["Compared"] = summary.index.isin(list(covered))
    summary["In_Era"] = summary.index.isin(list(era_runs))
    summary["In_Original"] = summary.index.isin(list(original_runs))
    for name, side, kinds in (
        ("Original", theirs, {AGREE: "Original_Agree", ONLY_ORIGINAL: "Only_Original"}),
        ("Our", ours, {AGREE: "Our_Agree", ONLY_OURS: "Only_Ours"}),
    ):
        summary[f"{name}_Ranges"] = side.groupby("run").size()
        for kind, column in {**kinds, "not compared": f"{name}_Not_Compared"}.items():
            summary[column] = side[side.status == kind].groupby("run").size()
    compared = their_ls[their_ls.reason == ""]
    skipped = their_ls[their_ls.reason != ""]
    summary["Original_LS"] = compared.drop_duplicates(["run", "ls"]).groupby("run").size()
    summary["Our_LS"] = our_ls.drop_duplicates(["run", "ls"]).groupby("run").size()
    summary["Matched_LS"] = pairs[pairs.match].drop_duplicates(["run", "ls"]).groupby("run").size()
    summary["Original_LS_Not_Compared"] = (
        skipped.drop_duplicates(["run", "ls"]).groupby("run").size()
    )
    counts = [c for c in _RUN_COLUMNS[4:] if c != "Persistent_Groups"]
    summary[counts] = summary[counts].fillna(0).astype(np.int64)
    summary["Persistent_Groups"] = [
        ":".join(sorted(era.persistent.get(run, ()))) for run in summary.index
    ]
    return summary.reset_index()[list(_RUN_COLUMNS)]


_RUN_COLUMNS = (
    "Run",
    "Compared",
    "In_Era",
    "In_Original",
    "Original_Ranges",
    "Original_Agree",
    "Only_Original",
    "Original_Not_Compared",
    "Our_Ranges",
    "Our_Agree",
    "Only_Ours",
    "Our_Not_Compared",
    "Original_LS",
    "Our_LS",
    "Matched_LS",
    "Original_LS_Not_Compared",
    "Persistent_Groups",
)


def _type_summary(theirs, ours, status, their_ls, our_ls, pairs) -> pd.DataFrame:
    """Per anomaly type, each side's ranges by status and its compared and matched LS."""
    matched = pairs[pairs.match]
    compared = their_ls[their_ls.reason == ""]
    rows = []
    for kind in TYPES:
        o_ids = theirs.index[theirs.type == kind]
        u_ids = ours.index[ours.type == kind]
        o_ls = compared[compared.range_id.isin(o_ids)]
        u_ls = our_ls[our_ls.range_id.isin(u_ids)]
        rows.append(
            {
                "Type": kind,
                "Class": TYPE_CLASS[kind],
                "Original_Ranges": len(o_ids),
                "Original_Agree": sum(status.get(("o", i)) == AGREE for i in o_ids),
                "Only_Original": sum(status.get(("o", i)) == ONLY_ORIGINAL for i in o_ids),
                "Original_LS": len(o_ls.drop_duplicates(["run", "ls"])),
                "Original_Matched_LS": len(
                    matched[matched.range_id_o.isin(o_ids)].drop_duplicates(["run", "ls"])
                ),
                "Our_Ranges": len(u_ids),
                "Our_Agree": sum(status.get(("u", i)) == AGREE for i in u_ids),
                "Only_Ours": sum(status.get(("u", i)) == ONLY_OURS for i in u_ids),
                "Our_LS": len(u_ls.drop_duplicates(["run", "ls"])),
                "Our_Matched_LS": len(
                    matched[matched.range_id_u.isin(u_ids)].drop_duplicates(["run", "ls"])
                ),
            }
        )
    return pd.DataFrame(rows)
