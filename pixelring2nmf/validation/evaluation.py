"""Detection study and era scoring: how often each rule flags what, and on which data.

Shared by `bench/detection.py`, `bench/scored_era.py` (full numbers, written to BENCHMARKS.md)
and the test suite (the same study on fewer LS).

A study crosses *levels* (how the test maps differ from the model's own: `mismatch.py`) with
*scenarios* (what is injected: nothing, an outage of some extent, a hot ROC...) at every
occupancy, and judges each cell with several *rules* (ours, the original pipeline, variants).
Anomalies are injected into expected maps (a dead ROC expects nothing), which are then sampled.

Scenarios and what a rule must do with them:
- must flag: a ROG fully dead on 2 disks and on 3 disks (>= 99 %), 60 % of a ROG dead on 2
  disks (>= 95 %), a dead quarter (>= 99 %), at every occupancy from 50 clusters per ROC;
- must stay quiet, at every occupancy: clean LS, a Single-Disk outage (one group), a dead
  module (16 ROCs of one disk, as when a module dies mid-run and stays dead), hot ROCs (1-5
  at x5-x20, and one ROC at 10x, 100x, 1,000x or 10,000x its expectation);
- reported only: 50 %, 40 % and 30 % of a ROG dead on 2 disks, around the 40 % group threshold
  (a group exactly at the threshold is flagged about half the time, by construction).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from mlserver_model.geometry import (
    GROUP_ID_FLAT,
    GROUP_ROCS_MODEL,
    MODEL_ROWS_IN_MAP,
    MODEL_SHAPE,
    MULTIDISK_CANDIDATES,
    N_ROCS,
    QUARTER_GROUPS,
    group_index,
)
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross

from ..sim import simulate as simulator
from .mismatch import MapMaker, scaled_maker
from .truthcheck import truth_event_ids

OCCUPANCIES = (20, 30, 50, 100, 200, 400, 1000, 2000)  # clusters per live ROC per LS
HOT_ROC_FACTORS = (10, 100, 1_000, 10_000)  # one ROC this many times its expectation
BAR_OCCUPANCIES = (50, 100, 200, 400, 1000, 2000)  # where the detection bars apply
Sampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # expected -> counts
Injector = Callable[[np.ndarray, np.ndarray, np.random.Generator], None]


@dataclass(frozen=True)
class Scenario:
    """What is injected into every LS of a cell, and what a rule must do about it."""

    name: str
    inject: Injector  # (expected (N, 6528) in place, eligible groups (48,), rng)
    must_flag: float | None = None  # minimum flag rate at BAR_OCCUPANCIES
    must_stay_quiet: bool = False  # no flag at any occupancy


@dataclass(frozen=True)
class Rule:
    """A decision to evaluate: maps (N, 140, 56) -> flags (N,), on at most `max_ls` per cell."""

    name: str
    flags: Callable[[np.ndarray], np.ndarray]
    max_ls: int | None = None  # slow rules (the original's transform) judge a subset
    scenarios: frozenset[str] | None = None  # judge only these scenarios (None: all)

    def judges(self, scenario: Scenario) -> bool:
        return self.scenarios is None or scenario.name in self.scenarios


@dataclass(frozen=True)
class StudySize:
    anomalous_ls_per_cell: int = 1000
    clean_ls_per_cell: int = 3000


# ---- injection ----------------------------------------------------------------------------


def _kill(
    expected: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator
) -> None:
    """Zero, in place, `fraction` of the ROCs of groups[n, j] in LS n of (N, 6528) maps.

    A fresh random subset of each group's ROCs in every LS (permanently dead ROCs included,
    as in reality: a partial outage does not know which ROCs were dead already).
    """
    for g in np.unique(groups):
        rows = np.flatnonzero((groups == g).any(axis=1))
        rocs = GROUP_ROCS_MODEL[g]
        n_dead = int(np.ceil(fraction * len(rocs)))
        order = np.argsort(rng.random((len(rows), len(rocs))), axis=1)[:, :n_dead]
        expected[rows[:, None], rocs[order]] = 0.0


def _candidate_disks(eligible: np.ndarray, n_disks: int) -> np.ndarray:
    """(M, n_disks) group ids: one ROG (z side, blade side) on n_disks disks, all eligible."""
    disk_sets = [list(d) for d in itertools.combinations(range(3), n_disks)]
    return np.array([c[d] for c in MULTIDISK_CANDIDATES for d in disk_sets if eligible[c[d]].all()])


def inject_multidisk(
    expected: np.ndarray,
    eligible: np.ndarray,
    rng: np.random.Generator,
    *,
    n_disks: int,
    fraction: float,
) -> None:
    """One ROG, `fraction` dead on `n_disks` disks (same z side and blade side), per LS."""
    candidates = _candidate_disks(eligible, n_disks)
    _kill(expected, candidates[rng.integers(len(candidates), size=len(expected))], fraction, rng)


def inject_single_disk(
    expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator
) -> None:
    """One whole group dead on one disk: Single-Disk, never a Multi-Disk flag."""
    groups = rng.choice(np.flatnonzero(eligible), size=(len(expected), 1))
    _kill(expected, groups, 1.0, rng)


def inject_quarter(expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> None:
    """All 12 groups of one shell dead (a quarter dropping out at once)."""
    _kill(expected, QUARTER_GROUPS[rng.integers(4, size=len(expected))], 1.0, rng)


def _module_rocs() -> np.ndarray:
    """(408, 16) model-space ROC ids of every module: one panel of one blade on one disk."""
    modules = []
    panel_of_row = MODEL_ROWS_IN_MAP // 2  # two map rows per panel, blade-major
    for first_row in np.flatnonzero(np.diff(panel_of_row, prepend=-1)):
        for disk_slot in range(MODEL_SHAPE[1] // 8):
            rows = np.arange(first_row, first_row + 2)
            columns = np.arange(8 * disk_slot, 8 * disk_slot + 8)
            modules.append((rows[:, None] * MODEL_SHAPE[1] + columns).ravel())
    return np.array(modules)


_MODULE_ROCS = _module_rocs()


def inject_dead_module(
    expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator
) -> None:
    """One module (16 ROCs of one disk) dead: 10-12 % of a group, never anomalous."""
    module_groups = GROUP_ID_FLAT[_MODULE_ROCS[:, 0]]
    modules = np.flatnonzero(eligible[module_groups])
    picked = _MODULE_ROCS[rng.choice(modules, size=len(expected))]
    expected[np.arange(len(expected))[:, None], picked] = 0.0


def inject_hot_rocs(expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> None:
    """1-5 ROCs counting x5-x20 (noisy ROCs); they raise the fit a little, never a flag."""
    n = len(expected)
    rocs = rng.integers(N_ROCS, size=(n, 5))
    factors = rng.uniform(5.0, 20.0, (n, 5)) * (np.arange(5) < rng.integers(1, 6, (n, 1)))
    rows = np.arange(n)[:, None]
    expected[rows, rocs] *= np.maximum(factors, 1.0)


def inject_one_hot_roc(
    expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator, *, factor: float
) -> None:
    """One ROC per LS counting `factor` times its expectation (a noisy readout): at 1,000x
    and more it once dragged the fit so far up that healthy LS read as dead quarters."""
    candidates = np.flatnonzero(eligible[GROUP_ID_FLAT] & (expected.min(axis=0) > 0))
    rocs = rng.choice(candidates, size=len(expected))
    expected[np.arange(len(expected)), rocs] *= factor


def _nothing(expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> None:
    """Clean LS: nothing injected (the permanently dead group is in every map regardless)."""


def _multidisk(n_disks: int, fraction: float) -> Injector:
    return partial(inject_multidisk, n_disks=n_disks, fraction=fraction)


SCENARIOS = (
    Scenario("clean", _nothing, must_stay_quiet=True),
    Scenario("dead ROG on 2 disks", _multidisk(2, 1.0), must_flag=0.99),
    Scenario("dead ROG on 3 disks", _multidisk(3, 1.0), must_flag=0.99),
    Scenario("60% of ROG dead on 2 disks", _multidisk(2, 0.6), must_flag=0.95),
    Scenario("dead quarter", inject_quarter, must_flag=0.99),
    Scenario("50% of ROG dead on 2 disks", _multidisk(2, 0.5)),
    Scenario("40% of ROG dead on 2 disks", _multidisk(2, 0.4)),
    Scenario("30% of ROG dead on 2 disks", _multidisk(2, 0.3)),
    Scenario("Single-Disk", inject_single_disk, must_stay_quiet=True),
    Scenario("dead module (one disk)", inject_dead_module, must_stay_quiet=True),
    Scenario("hot ROCs", inject_hot_rocs, must_stay_quiet=True),
    # last, so that the cells above keep their seeds (detection_study)
    *(
        Scenario(f"one ROC hot x{factor:,}", partial(inject_one_hot_roc, factor=factor), None, True)
        for factor in HOT_ROC_FACTORS
    ),
)
HOT_ROC_SCENARIOS = tuple(f"one ROC hot x{factor:,}" for factor in HOT_ROC_FACTORS)
SCENARIOS_BY_NAME = {s.name: s for s in SCENARIOS}


# ---- the study ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """Test maps of one kind: the model's own, or mismatched in one way (mismatch.py)."""

    name: str
    make_expected: MapMaker


def detection_study(
    rules: Sequence[Rule],
    levels: Sequence[Level],
    sample: Sampler,
    eligible: np.ndarray,
    *,
    scenarios: Sequence[Scenario] = SCENARIOS,
    occupancies: Sequence[int] = OCCUPANCIES,
    size: StudySize = StudySize(),
    seed: int = 0,
) -> pd.DataFrame:
    """Flag counts per (level, scenario, occupancy, rule): one row each.

    `eligible` (48,) marks the groups an outage may hit (not a permanently dead one). Every
    cell draws its own maps from a seed derived from `seed` and the cell's position, so a cell
    does not change when others are added or removed... as long as the lists keep their order.
    """
    rows = []
    cells = [(lv, sc, occ) for lv in levels for sc in scenarios for occ in occupancies]
    cell_seeds = np.random.SeedSequence(seed).spawn(len(cells))
    for (level, scenario, occupancy), cell_seed in zip(cells, cell_seeds, strict=True):
        rng = np.random.default_rng(cell_seed)
        n = size.clean_ls_per_cell if scenario.name == "clean" else size.anomalous_ls_per_cell
        expected = level.make_expected(np.full(n, float(occupancy)), rng).reshape(n, N_ROCS)
        scenario.inject(expected, eligible, rng)
        maps = insert_cross(sample(expected, rng).reshape(n, *MODEL_SHAPE))
        for rule in filter(lambda r: r.judges(scenario), rules):
            judged = maps[: rule.max_ls] if rule.max_ls else maps
            rows.append(
                {
                    "level": level.name,
                    "scenario": scenario.name,
                    "occupancy": occupancy,
                    "rule": rule.name,
                    "n_ls": len(judged),
                    "flagged": int(np.count_nonzero(rule.flags(judged))),
                }
            )
    table = pd.DataFrame(rows)
    table["rate"] = table.flagged / table.n_ls
    return table


def failures(table: pd.DataFrame, rule: str = "ours") -> list[str]:
    """What the study shows against the acceptance bars for `rule` (empty when all hold)."""
    problems = []
    ours = table[table.rule == rule]
    for row in ours.itertuples():
        scenario = SCENARIOS_BY_NAME[row.scenario]
        where = f"{row.level} / {row.scenario} at {row.occupancy}/ROC"
        if scenario.must_stay_quiet and row.flagged:
            problems.append(f"{where}: {row.flagged} of {row.n_ls} LS flagged")
        needs_flags = scenario.must_flag is not None and row.occupancy in BAR_OCCUPANCIES
        if needs_flags and row.rate < scenario.must_flag:
            problems.append(f"{where}: {row.rate:.1%} flagged < {scenario.must_flag:.0%}")
    return problems


def detector_maker(detector: simulator.Detector | None = None) -> MapMaker:
    """Healthy maps of a simulated detector (default: the project's), pileup 20-65 per LS.

    The pileup is drawn apart from the occupancy, so a map's shape does not tell its scale.
    """
    detector = simulator.default_detector() if detector is None else detector

    def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pileup = rng.uniform(20, 65, len(occupancy))
        return simulator.expected_maps(detector, occupancy, pileup).reshape(len(occupancy), -1)

    return make


def clean_training_maps(
    make: MapMaker,
    n: int,
    rng: np.random.Generator,
    sample: Sampler = simulator.sample_maps,
) -> np.ndarray:
    """(n, 140, 56) clean maps to train a study's models on, 200-1400 clusters per live ROC.

    The bench and the tests train on maps drawn the same way, so the tests' small models stand
    for the bench's.
    """
    expected = make(rng.uniform(200, 1400, n), rng).reshape(n, *MODEL_SHAPE)
    return insert_cross(np.asarray(sample(expected, rng)))


def significance_only(model: PixelRing2NMF) -> PixelRing2NMF:
    """`model` with the rule before issue 10 (no relative condition, 5 % screen).

    Shows what a mismatch does to a rule without the relative condition.
    """
    thresholds = dataclasses.replace(
        model.thresholds, min_relative_deficit=0.0, screen_deficit=0.05
    )
    return PixelRing2NMF(model.components, model.model_error, thresholds)


def real_component_maker(components: np.ndarray, seed: int = 0) -> MapMaker:
    """Healthy maps from the deployed model's real components: W >= 0 varied per LS.

    W is uniform in [0, 1] per component with the first one raised by 1 (a dominant nominal
    shape, as in real fits), drawn from a fixed pool of 10,000 settings.
    """
    rng = np.random.default_rng(seed)
    pool = rng.uniform(0.0, 1.0, (10_000, len(components)))
    pool[:, 0] += 1.0
    return scaled_maker(components, pool)


# ---- scoring a simulated era --------------------------------------------------------------

_FLAG = "flag"
_QUIET = "quiet"
_EITHER = "either (near the 40 % threshold)"


def truth_categories(truth: pd.DataFrame, live_rocs_per_group: np.ndarray) -> pd.Series:
    """Category of every truth row, with the decision a rule should take on it.

    Partial outages are split by the share of their groups' live ROCs that died: on two
    disks >= 45 % is a Multi-Disk anomaly to flag, 35-45 % is too close to the 40 % threshold
    to demand anything, below 35 % (or on one disk) must stay quiet.
    """

    def category(row) -> str:
        groups = [g for g in str(row.groups).split(";") if g]
        if row.anomaly_type == "Multi-Disk":
            return f"Multi-Disk, {len(groups)} disks"
        if row.anomaly_type != "Partial":
            return row.anomaly_type
        if len(groups) == 1:
            return "Partial, 1 disk"
        live = sum(int(live_rocs_per_group[group_index(g)]) for g in groups)
        share = row.n_dead_rocs / max(live, 1)
        if share >= 0.45:
            return "Partial, 2 disks, >= 45 % dead"
        if share >= 0.35:
            return "Partial, 2 disks, 35-45 % dead"
        return "Partial, 2 disks, < 35 % dead"

    return truth.apply(category, axis=1)


EXPECTATION = {
    "Multi-Disk, 2 disks": _FLAG,
    "Multi-Disk, 3 disks": _FLAG,
    "Quarter": _FLAG,
    "Partial, 2 disks, >= 45 % dead": _FLAG,
    "Partial, 2 disks, 35-45 % dead": _EITHER,
    "Partial, 2 disks, < 35 % dead": _QUIET,
    "Partial, 1 disk": _QUIET,
    "Single-Disk": _QUIET,
    "Hot-ROC": _QUIET,
    "Missing": "absent from the parquet",
}


def score_era(
    truth: pd.DataFrame,
    predictions: Mapping[str, pd.DataFrame],
    live_rocs_per_group: np.ndarray,
) -> pd.DataFrame:
    """Found / injected per truth category for every rule, plus the clean LS they flagged.

    `predictions` maps a rule name to a table with columns run, ls, flag (after the DCS
    filter), one row per LS of the parquet. Truth rows are anomalous (run, ls) of the
    simulator's truth.csv; every other LS of the parquet is clean. An event is one injected
    anomaly (`truthcheck.truth_event_ids`, as the era check counts them); it is found when any
    of its LS is flagged.
    """
    truth = truth.assign(
        category=truth_categories(truth, live_rocs_per_group), event=truth_event_ids(truth)
    )
    rows = []
    for name, prediction in predictions.items():
        merged = prediction[["run", "ls", "flag"]].merge(truth, on=["run", "ls"], how="left")
        merged["category"] = merged["category"].fillna("clean")
        for category, expectation in [*EXPECTATION.items(), ("clean", _QUIET)]:
            in_data = merged[merged.category == category]
            injected = truth[truth.category == category] if category != "clean" else in_data
            is_event = category != "clean"
            rows.append(
                {
                    "rule": name,
                    "category": category,
                    "expected": expectation,
                    "ls_injected": len(injected),
                    "ls_in_data": len(in_data),
                    "ls_flagged": int(in_data.flag.sum()),
                    "events_injected": injected.event.nunique() if is_event else None,
                    "events_found": in_data[in_data.flag].event.nunique() if is_event else None,
                }
            )
    return pd.DataFrame(rows)
