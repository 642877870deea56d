"""Detection under model mismatch and overdispersion: our rule beside the original pipeline.

    python bench/detection.py [--anomalous 1000] [--clean 3000] [--original-ls 100]
                              [--no-real] [--no-refit] [--hot-rocs]

Two sources of healthy maps: the project's simulated detector, and (when ../shared/reference
is present) the real NMF components of the original deployment. For each source, models are
trained in this process on 900 clean maps of the source (ours: `train_model`; the original
pipeline: `original.OriginalPipeline.train`, MiniBatchNMF as the original trained it) and
judge maps that are the source's own or mismatched (mismatch.MISMATCH_LEVELS: smooth fields
of 10-30 %, overdispersion of 5-10 %, both). Then, twice per source, the period is refitted
(`mismatch.refit_pair`, detector drifting by 30 % and 50 % over the period): models trained on
maps of the first half's NMF judge maps of the second half's. Every cell crosses a level, a
scenario (evaluation.SCENARIOS) and an occupancy (20-2000 clusters per live ROC). The original
pipeline's 1000-update transform costs ~10-25 ms per LS, so it judges the first
`--original-ls` LS of every cell; "significance only" (our rule with min_relative_deficit = 0,
i.e. the previous rule) judges the clean cells, to show what the mismatch does without the
relative condition.

`--hot-rocs` runs only the hot-ROC scenarios (1-5 ROCs at x5-x20, and one ROC at 10x, 100x,
1,000x and 10,000x its expectation) at every level, occupancy and source, into a section of
its own: the full study takes ~40 min on 2 cores.

`--rings [--quick] [--ring1-ratio 1.6]` runs only the study of Ring 1 alone, Ring 2 alone and
the joint model on the same LS of both rings (validation/rings.py), into the section "Ring 1,
Ring 2 and the joint decision"; the other sections are left as they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.model.train import train_model
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation import rings
from pixelring2nmf.validation.evaluation import (
    BAR_OCCUPANCIES,
    HOT_ROC_SCENARIOS,
    OCCUPANCIES,
    SCENARIOS,
    SCENARIOS_BY_NAME,
    Level,
    Rule,
    StudySize,
    clean_training_maps,
    detection_study,
    detector_maker,
    failures,
    real_component_maker,
    significance_only,
)
from pixelring2nmf.validation.mismatch import MISMATCH_LEVELS, MapMaker, refit_pair
from pixelring2nmf.validation.original import OriginalPipeline

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REAL = REFERENCE / "ring2_nmf_components_2025C.npy"
REAL_RING1 = REFERENCE / "ring1_nmf_components_2025.npy"
N_TRAIN = 900
REFIT_DRIFTS = (0.3, 0.5)
OURS, PREVIOUS, ORIGINAL = "ours", "significance only", "original pipeline"


@dataclass(frozen=True)
class Source:
    name: str
    make_expected: MapMaker
    sample: object  # (expected, rng) -> counts


def simulated_source() -> Source:
    return Source("simulated detector", detector_maker(), simulator.sample_maps)


def real_source() -> Source:
    return Source(
        "real 2025C components", real_component_maker(np.load(REAL)), lambda e, r: r.poisson(e)
    )


def rules_for(maps: np.ndarray, original_ls: int) -> tuple[list[Rule], PixelRing2NMF]:
    """Our model and the original pipeline, both trained on `maps`, as study rules."""
    model = train_model(maps)
    previous = significance_only(model)
    original = OriginalPipeline.train(maps)
    rules = [
        Rule(OURS, lambda m: model.predict(m).flag),
        Rule(PREVIOUS, lambda m: previous.predict(m).flag, scenarios=frozenset({"clean"})),
        Rule(ORIGINAL, lambda m: original.predict(m).flag, max_ls=original_ls),
    ]
    return rules, model


def study_source(source: Source, args: argparse.Namespace) -> tuple[pd.DataFrame, list[str]]:
    """Every level of one source; returns the table and notes on the refitted periods."""
    size = StudySize(args.anomalous, args.clean)
    rng = np.random.default_rng(11)
    started = time.monotonic()
    rules, model = rules_for(
        clean_training_maps(source.make_expected, N_TRAIN, rng, source.sample), args.original_ls
    )
    levels = [Level(m.name, m.on(source.make_expected)) for m in MISMATCH_LEVELS]
    scenarios = _scenarios(args)
    tables = [
        detection_study(
            rules,
            levels,
            source.sample,
            ~model.unjudged_groups,
            scenarios=scenarios,
            size=size,
            seed=1,
        )
    ]
    notes = []
    for i, drift in enumerate(REFIT_DRIFTS if args.refit else ()):
        pair = refit_pair(source.make_expected, rng, field_amplitude=drift)
        rules, model = rules_for(
            clean_training_maps(pair.first, N_TRAIN, rng, source.sample), args.original_ls
        )
        name = f"NMF refit, drift {drift:.0%}"
        level = Level(name, pair.second)
        tables.append(
            detection_study(
                rules,
                [level],
                source.sample,
                ~model.unjudged_groups,
                scenarios=scenarios,
                size=size,
                seed=2 + i,
            )
        )
        notes.append(
            f"{name}: the second fit's maps differ from their best approximation by the first "
            f"fit by {pair.relative_misfit_rms:.1%} RMS, {pair.relative_misfit_p99:.0%} at the "
            "99th percentile of live ROCs"
        )
    print(f"[{source.name}] {time.monotonic() - started:.0f} s", flush=True)
    return pd.concat(tables, ignore_index=True), notes


def _scenarios(args: argparse.Namespace) -> list:
    if not args.hot_rocs:
        return list(SCENARIOS)
    return [SCENARIOS_BY_NAME[name] for name in ("hot ROCs", *HOT_ROC_SCENARIOS)]


# ---- markdown ----------------------------------------------------------------------------


def clean_table(table: pd.DataFrame) -> str:
    """False flags on clean LS: one row per level, '<ours> / <previous> / <original>'."""
    clean = table[table.scenario == "clean"]
    counts = {
        rule: clean[clean.rule == rule].set_index(["level", "occupancy"])
        for rule in (OURS, PREVIOUS, ORIGINAL)
    }
    n = {rule: int(c.n_ls.iloc[0]) for rule, c in counts.items()}
    occupancies = sorted(clean.occupancy.unique())
    head = (
        f"| level (flagged LS of {n[OURS]:,} ours / {n[PREVIOUS]:,} significance only / "
        f"{n[ORIGINAL]} original) | "
        + " | ".join(f"{o}/ROC" for o in occupancies)
        + " |\n|---|"
        + "---|" * len(occupancies)
    )
    lines = [head]
    for level in clean.level.unique():
        cells = []
        for o in occupancies:
            ours, previous, original = (int(counts[r].loc[(level, o), "flagged"]) for r in counts)
            mark = "**" if ours else ""
            cells.append(f"{mark}{ours}{mark} / {previous} / {original}")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scenario_table(table: pd.DataFrame, scenarios: list[str]) -> str:
    """Per scenario and occupancy: ours (lowest..highest rate over levels), original alike."""
    occupancies = sorted(table.occupancy.unique())
    lines = [
        "| scenario (LS per cell: ours / original) | rule | "
        + " | ".join(f"{o}/ROC" for o in occupancies)
        + " |",
        "|---|---|" + "---|" * len(occupancies),
    ]
    for scenario in scenarios:
        rows = table[table.scenario == scenario]
        sizes = "/".join(str(int(rows[rows.rule == r].n_ls.iloc[0])) for r in (OURS, ORIGINAL))
        for rule in (OURS, ORIGINAL):
            by_occupancy = rows[rows.rule == rule].groupby("occupancy").rate
            low, high = by_occupancy.min(), by_occupancy.max()
            cells = " | ".join(_span(low[o], high[o]) for o in occupancies)
            lines.append(f"| {scenario} ({sizes}) | {rule} | {cells} |")
    return "\n".join(lines)


def _span(low: float, high: float) -> str:
    if round(100 * low, 1) == round(100 * high, 1):
        return f"{100 * low:.1f}%"
    return f"{100 * low:.1f}-{100 * high:.1f}%"


def full_table(table: pd.DataFrame) -> str:
    """Every cell: '<ours rate> (<original rate>)', one row per (level, scenario)."""
    occupancies = sorted(table.occupancy.unique())
    pivot = table.pivot_table(
        index=["level", "scenario"], columns=["rule", "occupancy"], values="rate", sort=False
    )
    lines = [
        "| level | scenario | " + " | ".join(f"{o}/ROC" for o in occupancies) + " |",
        "|---|---|" + "---|" * len(occupancies),
    ]
    for (level, scenario), row in pivot.iterrows():
        cells = " | ".join(
            f"{100 * row[(OURS, o)]:.1f} ({100 * row[(ORIGINAL, o)]:.0f})" for o in occupancies
        )
        lines.append(f"| {level} | {scenario} | {cells} |")
    return "\n".join(lines)


def source_section(source: Source, table: pd.DataFrame, notes: list[str]) -> str:
    must_flag = [s.name for s in SCENARIOS if s.must_flag is not None]
    other = [s.name for s in SCENARIOS if s.must_flag is None and s.name != "clean"]
    levels = ", ".join(table.level.unique())
    refit = ("\n\n" + ".\n".join(notes) + ".") if notes else ""
    return f"""### {source.name}

Levels: {levels}.{refit}

**False flags on clean LS** (bold: ours flagged something):

{clean_table(table)}

**Must be flagged** (lowest-highest rate over the {table.level.nunique()} levels; the bar is
for ours from 50/ROC):

{scenario_table(table, must_flag)}

**Near the 40 % threshold, and must stay quiet** (Single-Disk, dead module, hot ROCs):

{scenario_table(table, other)}

<details><summary>Every cell: ours % (original pipeline %)</summary>

{full_table(table)}

</details>"""


def hot_rocs_section(source: Source, table: pd.DataFrame, notes: list[str]) -> str:
    levels = ", ".join(table.level.unique())
    refit = ("\n\n" + ".\n".join(notes) + ".") if notes else ""
    names = list(table.scenario.unique())
    return f"""### {source.name}

Levels: {levels}.{refit}

Lowest-highest share of LS flagged over the {table.level.nunique()} levels (must be 0):

{scenario_table(table, names)}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anomalous", type=int, help="LS per anomalous cell (1000; --rings 200)")
    parser.add_argument("--clean", type=int, help="LS per clean cell (3000; --rings 500)")
    parser.add_argument("--original-ls", type=int, default=100, help="LS the original judges")
    parser.add_argument("--no-real", dest="real", action="store_false")
    parser.add_argument("--no-refit", dest="refit", action="store_false")
    parser.add_argument("--hot-rocs", action="store_true", help="only the hot-ROC scenarios")
    parser.add_argument("--rings", action="store_true", help="only Ring 1 / Ring 2 / joint")
    parser.add_argument("--quick", action="store_true", help="--rings on fewer LS and levels")
    parser.add_argument("--ring1-ratio", type=float, default=rings.RING1_RATIO)
    args = parser.parse_args()
    if args.rings:
        return rings_main(args)
    args.anomalous = 1000 if args.anomalous is None else args.anomalous
    args.clean = 3000 if args.clean is None else args.clean
    started = time.monotonic()
    sources = [simulated_source()] + ([real_source()] if args.real and REAL.exists() else [])
    parts, problems = [], []
    for source in sources:
        table, notes = study_source(source, args)
        problems += [f"{source.name}: {p}" for p in failures(table)]
        section = hot_rocs_section if args.hot_rocs else source_section
        parts.append(section(source, table, notes))
    verdict = (
        "All acceptance bars hold for our rule."
        if not problems
        else "**FAILED**: " + "; ".join(problems)
    )
    if REAL.exists() or not args.real:
        missing = ""
    else:
        missing = "\n\n(../shared/reference absent: real-component study not run.)"
    if args.hot_rocs:
        intro = f"""`python bench/detection.py --hot-rocs` — the hot-ROC cases of the study
above alone: 1-5 ROCs at x5-x20, and one ROC at 10x, 100x, 1,000x and 10,000x its
expectation in every LS (before the refit without hot ROCs, one ROC at 3,000x its expectation
turned healthy LS into Quarter flags). Share of LS flagged, per level of mismatch and occupancy
(clusters per live ROC; {", ".join(map(str, OCCUPANCIES))}); the bar for our rule: 0 flags
everywhere. {verdict}"""
    else:
        intro = f"""`python bench/detection.py` — share of LS flagged, per level of mismatch, scenario
and occupancy (clusters per live ROC; {", ".join(map(str, OCCUPANCIES))}). Bars for our rule:
0 flags on clean LS, Single-Disk, dead-module and hot-ROC LS at every occupancy; >= 99 % for a
ROG dead on 2 or 3 disks and a dead quarter, >= 95 % for 60 % of a ROG dead on 2 disks, at
{", ".join(map(str, BAR_OCCUPANCIES))}. {verdict}"""
    body = f"""{intro}

Data: every map is drawn in this process (no held-out real data exist). Models are trained
here on 900 clean maps of each source (ours: `train_model`, 300 NMF passes; original:
MiniBatchNMF, 30 passes, as deployed); the shipped model file is not used. The original
pipeline (its own NMF, its `transform` with 1000 multiplicative updates, (x - mu)^2 > 1e5,
int(0.40 n) ROCs per group) judges the first {args.original_ls} LS of each cell;
"significance only" is our rule without the relative condition (the rule before issue 10).
Total time {(time.monotonic() - started) / 60:.0f} min.{missing}

""" + "\n\n".join(parts)
    if args.hot_rocs:
        write_section("detection_hot_rocs", "Hot ROCs at 10x-10,000x (detection)", body)
    else:
        write_section("detection", "Detection under mismatch, against occupancy", body)
    print(body)
    return 0 if not problems else 1


# ---- Ring 1, Ring 2 and the joint decision ------------------------------------------------


def _poisson(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(expected)


# What the default run's tables show (written from its numbers; the seeds are fixed, and two
# runs gave the same tables).
RINGS_READING = """What the tables show (with each source's summary lines below): the joint model catches
both outages from 0.1-0.2 Ring 2 clusters per ROC at every level and on both sources, 100-300x
lower than either ring alone (20-30): down there no single ROC's silence is significant, but a
group's total over both rings (224 ROCs, 25-30 clusters expected at 0.1 per ROC) is. Ring 1
alone needs the same Ring 2 occupancy as Ring 2 alone (20, i.e. 32 of its own clusters per ROC;
at 10 it catches 37-79 %) although it sees 1.6x the clusters: its groups hold fewer ROCs (64-96
against 128-160). No detector flags a clean LS or a Single-Disk LS in any cell (72,000 clean
LS per detector and source). The only call on a clean LS: the joint model named one ROG3 group
(Single-Disk, no flag) in 1 of 500 LS at 0.2 per ROC under the worst mismatch (field 30 % +
overdispersion 10 %), on both sources: ~50 clusters expected over both rings, where a 30 % dip
of the field over that ROG plus the scatter can reach the group test's 50 % loss. The refits are
the hardest levels: one grid step later for Ring 2 alone and the joint model (and Ring 1 alone
on the simulator at 50 % drift).

"""


def rings_sources(
    ratio: float, real: bool = True
) -> tuple[list[tuple[str, rings.BothMaker, object]], list[str]]:
    """(name, both-rings maker, sampler) of each source available, and notes on those not."""
    sources, notes = [], []
    sources.append(
        (
            "simulated detector (both rings)",
            rings.simulated_both_maker(ratio),
            simulator.sample_maps,
        )
    )
    if not real:
        notes.append("--no-real: real-component part not run")
    elif REAL.exists() and REAL_RING1.exists():
        components = {1: np.load(REAL_RING1), 2: np.load(REAL)}
        maker = rings.real_both_maker(components, ratio)
        sources.append(("real components (Ring 1 2025, Ring 2 2025C)", maker, _poisson))
    else:
        notes.append("../shared/reference absent: real-component part not run")
    return sources, notes


def study_rings_source(
    maker: rings.BothMaker, sample, args: argparse.Namespace
) -> tuple[pd.DataFrame, list[str]]:
    """Every level of one source for the three detectors; notes on the refitted periods."""
    size = rings_size(args)
    rng = np.random.default_rng(11)
    detectors = rings.train_detectors(maker, N_TRAIN, rng, sample)
    levels = rings.standard_levels(maker)
    if args.quick:
        levels = [levels[0], levels[-1]]
    tables = [rings.rings_study(detectors, levels, sample, size=size, seed=1)]
    notes = []
    drifts = (REFIT_DRIFTS[:1] if args.quick else REFIT_DRIFTS) if args.refit else ()
    for i, drift in enumerate(drifts):
        refit = rings.refit_both(maker, rng, field_amplitude=drift, ring1_ratio=args.ring1_ratio)
        detectors = rings.train_detectors(refit.pair.first, N_TRAIN, rng, sample)
        name = f"NMF refit, drift {drift:.0%}"
        level = rings.BothLevel(name, refit.pair.second)
        tables.append(rings.rings_study(detectors, [level], sample, size=size, seed=2 + i))
        misfits = ", ".join(
            f"Ring {ring} {rms:.1%} RMS ({p99:.0%} at the 99th percentile)"
            for ring, (rms, p99) in refit.misfit.items()
        )
        notes.append(f"{name}: the second fit's maps differ from the first fit's by {misfits}")
    return pd.concat(tables, ignore_index=True), notes


def rings_size(args: argparse.Namespace) -> StudySize:
    """LS per cell of the rings study: --anomalous/--clean, else 100/200 (--quick) or 200/500."""
    default = StudySize(100, 200) if args.quick else rings.RING_STUDY_SIZE
    return StudySize(
        args.anomalous or default.anomalous_ls_per_cell, args.clean or default.clean_ls_per_cell
    )


def _occupancy(value: float | None) -> str:
    if value is None:
        return "not reached"
    return f"{value:g}"


def rings_threshold_table(table: pd.DataFrame) -> str:
    """Per level: the lowest occupancy from which >= 99 % are caught, per detector and case."""
    cases = (rings.TWO_DISKS, rings.ONE_DISK)
    head = " | ".join(f"{d}: {c}" for d in rings.DETECTORS for c in ("2 disks", "1 disk"))
    lines = [f"| level | {head} |", "|---|" + "---|" * (2 * len(rings.DETECTORS))]
    for level in table.level.unique():
        cells = []
        for detector in rings.DETECTORS:
            for case in cases:
                rows = table[
                    (table.level == level) & (table.detector == detector) & (table.scenario == case)
                ]
                cells.append(_occupancy(rings.lowest_occupancy(rows)))
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rings_counts_table(table: pd.DataFrame, scenario: str, column: str) -> str:
    """Per level and occupancy: '<Ring 1> / <Ring 2> / <joint>' counts (bold when any)."""
    rows = table[table.scenario == scenario]
    occupancies = sorted(rows.occupancy.unique())
    pivot = rows.pivot_table(
        index="level", columns=["detector", "occupancy"], values=column, sort=False
    )
    lines = [
        "| level | " + " | ".join(f"{o:g}/ROC" for o in occupancies) + " |",
        "|---|" + "---|" * len(occupancies),
    ]
    for level, row in pivot.iterrows():
        cells = []
        for o in occupancies:
            counts = [int(row[(d, o)]) for d in rings.DETECTORS]
            text = " / ".join(map(str, counts))
            cells.append(f"**{text}**" if any(counts) else text)
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rings_rates_table(table: pd.DataFrame) -> str:
    """Every cell of the outage scenarios: caught % per detector."""
    rows = table[table.scenario != rings.CLEAN]
    occupancies = sorted(rows.occupancy.unique())
    pivot = rows.pivot_table(
        index=["level", "scenario"], columns=["detector", "occupancy"], values="rate", sort=False
    )
    lines = [
        "| level | scenario | " + " | ".join(f"{o:g}/ROC" for o in occupancies) + " |",
        "|---|---|" + "---|" * len(occupancies),
    ]
    for (level, scenario), row in pivot.iterrows():
        cells = " | ".join(
            " / ".join(f"{100 * row[(d, o)]:.0f}" for d in rings.DETECTORS) for o in occupancies
        )
        lines.append(f"| {level} | {scenario} | {cells} |")
    return "\n".join(lines)


def rings_problems(table: pd.DataFrame) -> list[str]:
    """Where a detector flagged a clean LS or an LS with one group dead on one disk."""
    quiet = table[table.scenario.isin([rings.CLEAN, rings.ONE_DISK]) & (table.flagged > 0)]
    return [
        f"{r.detector}, {r.level}, {r.scenario} at {r.occupancy:g}/ROC: {r.flagged} of {r.n_ls}"
        f" (groups: {r.flagged_groups})"
        for r in quiet.itertuples()
    ]


def rings_named_on_clean(table: pd.DataFrame) -> str:
    """Clean cells where a detector named a group without flagging (a Single-Disk call)."""
    rows = table[(table.scenario == rings.CLEAN) & (table.any_group > 0)]
    if rows.empty:
        return "No clean LS had any group named anomalous."
    cells = [
        f"{r.detector}, {r.level} at {r.occupancy:g}/ROC: {r.any_group} of {r.n_ls} LS "
        f"({r.named_groups})"
        for r in rows.itertuples()
    ]
    return "Clean LS with a group named anomalous but not flagged (a Single-Disk call): " + (
        "; ".join(cells) + "."
    )


def rings_summary(table: pd.DataFrame) -> str:
    """One line per detector: the worst level's lowest occupancy per case, and false flags."""
    lines = []
    for detector in rings.DETECTORS:
        mine = table[table.detector == detector]
        worst = []
        for case, label in ((rings.TWO_DISKS, "2 disks"), (rings.ONE_DISK, "one disk")):
            found = [
                rings.lowest_occupancy(mine[(mine.level == lv) & (mine.scenario == case)])
                for lv in mine.level.unique()
            ]
            high = "not reached" if None in found else f"{max(found):g}"
            low = f"{min(f for f in found if f is not None):g}" if any(found) else high
            worst.append(f"{label} from {low}" + (f"-{high}" if high != low else ""))
        clean = mine[mine.scenario == rings.CLEAN]
        lines.append(
            f"- {detector}: >= 99 % caught, {', '.join(worst)} clusters per Ring 2 ROC "
            f"(best-worst level); false flags {int(clean.flagged.sum())} of "
            f"{int(clean.n_ls.sum()):,} clean LS"
        )
    return "\n".join(lines)


def rings_section(name: str, table: pd.DataFrame, notes: list[str]) -> str:
    n_clean = int(table[table.scenario == rings.CLEAN].n_ls.iloc[0])
    n_outage = int(table[table.scenario != rings.CLEAN].n_ls.iloc[0])
    refit = ("\n\n" + ".\n".join(notes) + ".") if notes else ""
    problems = rings_problems(table)
    verdict = (
        "No false flag in any cell (clean LS, and LS with one group dead on one disk)."
        if not problems
        else "**Flags where none are due**: " + "; ".join(problems) + "."
    )
    return f"""### {name}

Levels: {", ".join(table.level.unique())}.{refit}

{verdict} {rings_named_on_clean(table)}

{rings_summary(table)}

**Lowest occupancy (Ring 2 clusters per ROC) from which >= 99 % of LS are caught** (that
occupancy and every higher one of the grid; {n_outage} LS per cell; "not reached": not even
at 2000):

{rings_threshold_table(table)}

**False flags on clean LS** (flagged LS of {n_clean} per cell: Ring 1 alone / Ring 2 alone /
joint; bold: any):

{rings_counts_table(table, rings.CLEAN, "flagged")}

<details><summary>Clean LS with an anomalous group named (a Single-Disk call, no flag), LS with
one group dead on one disk that were flagged, and every outage cell</summary>

Clean LS with any anomalous group (of {n_clean}; Ring 1 / Ring 2 / joint):

{rings_counts_table(table, rings.CLEAN, "any_group")}

LS with one group dead on one disk (both rings) that were FLAGGED (of {n_outage}; must be 0):

{rings_counts_table(table, rings.ONE_DISK, "flagged")}

Caught %, Ring 1 alone / Ring 2 alone / joint:

{rings_rates_table(table)}

</details>"""


def rings_main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sources, notes = rings_sources(args.ring1_ratio, args.real)
    parts, problems = [], []
    for name, maker, sample in sources:
        began = time.monotonic()
        table, refit_notes = study_rings_source(maker, sample, args)
        print(f"[{name}] {time.monotonic() - began:.0f} s", flush=True)
        problems += [f"{name}: {p}" for p in rings_problems(table)]
        parts.append(rings_section(name, table, refit_notes))
    missing = ("\n\n(" + "; ".join(notes) + ".)") if notes else ""
    quick = " --quick" if args.quick else ""
    n = rings_size(args)
    size = f"{n.anomalous_ls_per_cell} LS per outage cell, {n.clean_ls_per_cell} per clean cell"
    default_run = (
        not args.quick
        and args.ring1_ratio == rings.RING1_RATIO
        and (n == rings.RING_STUDY_SIZE and args.refit and not notes)
    )
    body = f"""`python bench/detection.py --rings{quick}` — Ring 1 alone (a `PixelRing2NMF` of
`RING1`), Ring 2 alone and the joint model (`JointNMF` of the two), each judging the SAME LS:
every LS holds both rings' maps, drawn at one occupancy scale, Ring 1 at
{args.ring1_ratio:g}x Ring 2's clusters per ROC, with the SAME group outage in both rings.
Why {rings.RING1_RATIO:g} by default: {rings.RING1_RATIO_WHY}. Occupancy below is Ring 2's
clusters per live ROC ({", ".join(f"{o:g}" for o in rings.RING_OCCUPANCIES)}: today's grid
from 20, extended down because the joint rule's group total works far below it). {size}.

Caught: a ROG dead on 2 disks (the same ROG of one z side on two disks, every ROC of those 2
groups silent in both rings) is caught when the LS is flagged AND both groups are among its
anomalous groups; a ROG dead on one disk (one group silent in both rings: a Single-Disk
outage) is caught when that group is among the LS's anomalous groups (AnomalyType
Single-Disk: such an LS is never flagged, and a flag there counts as a false one). For Ring 1
or Ring 2 alone the outage is that ring's group(s). A false flag is Flag = 1 on a clean LS.

Data: every map is drawn in this process. Sources: the project's simulator (both rings of one
LS from one pileup) and maps W @ H of the real NMF components of both rings
(`../shared/reference/ring1_nmf_components_2025.npy`, `ring2_nmf_components_2025C.npy`, read
at run time and never copied into the project; that part is skipped when they are absent).
The models are trained here on 900 clean LS of each source (each ring: `fit_components`, 300
NMF passes, `estimate_model_error`; joint: `JointNMF` of the two), the shipped model files are
not used, and no model judges the LS it was trained on. Only the level "none" draws fresh LS
from the very mixture the models learned (the optimistic case, for reference); the smooth
fields (one field per LS over both rings: the same beam-spot shift or dip in both),
overdispersion and the two refits (models trained on one NMF fit of a drifting period judge
maps of another fit) are maps the models were not trained on.
Total time {(time.monotonic() - started) / 60:.0f} min.{missing}

{RINGS_READING if default_run else ""}""" + "\n\n".join(parts)
    write_section("detection_rings", "Ring 1, Ring 2 and the joint decision", body)
    print(body)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
