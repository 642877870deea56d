"""Detection study: how often each rule flags known anomalies, at every occupancy.

Shared by `bench/detection.py` (full numbers, written to BENCHMARKS.md) and the test suite
(the same study on fewer LS). A study needs a model and a *map maker*: a function that returns
expected healthy maps (N, 136, 48) for given mean occupancies; the simulator's detector and the
real NMF components of the original deployment both give one. Anomalies are injected into the
expected maps (a dead ROC expects nothing), which are then Poisson-sampled.

Scenarios, each at every occupancy:
- "dead ROG on 2 disks": one ROG (same z side and blade side) fully dead on two disks;
- "60% of ROG dead on 2 disks": the same with 60 % of each group's ROCs dead;
- "Single-Disk": one group fully dead on one disk (must not be flagged);
- "clean": nothing injected (must not be flagged; the permanently dead group is always there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlserver_model.bad_ROC import RULE_ORIGINAL, RULE_SIGNIFICANCE
from mlserver_model.geometry import GROUP_ID_FLAT, MULTIDISK_CANDIDATES, N_ROCS
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross

MapMaker = Callable[[np.ndarray, np.random.Generator], np.ndarray]
OCCUPANCIES = (50, 100, 200, 300, 500, 1000, 2000)
SCENARIOS = ("dead ROG on 2 disks", "60% of ROG dead on 2 disks", "Single-Disk", "clean")
MUST_FLAG = {"dead ROG on 2 disks": 0.99, "60% of ROG dead on 2 disks": 0.95}


@dataclass(frozen=True)
class StudySize:
    anomalous_ls_per_occupancy: int = 1000
    clean_ls_per_occupancy: int = 3000  # 7 occupancies x 3000 = 21,000 clean LS


def _kill(
    expected: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator
) -> None:
    """Zero, in place, `fraction` of the ROCs of groups[n, j] in LS n of (N, 6528) maps."""
    for g in np.unique(groups):
        rows = np.flatnonzero((groups == g).any(axis=1))
        rocs = np.flatnonzero(g == GROUP_ID_FLAT)
        n_dead = int(np.ceil(fraction * len(rocs)))
        # an independent random subset of the group's ROCs in every LS
        order = np.argsort(rng.random((len(rows), len(rocs))), axis=1)[:, :n_dead]
        expected[rows[:, None], rocs[order]] = 0.0


def _inject(
    scenario: str, expected: np.ndarray, eligible: np.ndarray, rng: np.random.Generator
) -> None:
    n = len(expected)
    if scenario == "clean":
        return
    if scenario == "Single-Disk":
        _kill(expected, rng.choice(np.flatnonzero(eligible), size=(n, 1)), 1.0, rng)
        return
    # Multi-Disk: a candidate (z side, blade side, ROG) and two of its disks, both live
    pairs = np.array(
        [
            [c[i], c[j]]
            for c in MULTIDISK_CANDIDATES
            for i, j in ((0, 1), (0, 2), (1, 2))
            if eligible[c[i]] and eligible[c[j]]
        ]
    )
    fraction = 1.0 if scenario == "dead ROG on 2 disks" else 0.6
    _kill(expected, pairs[rng.integers(len(pairs), size=n)], fraction, rng)


def detection_study(
    model: PixelRing2NMF,
    make_expected: MapMaker,
    sample: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    *,
    seed: int = 0,
    size: StudySize = StudySize(),
    occupancies: tuple[int, ...] = OCCUPANCIES,
) -> pd.DataFrame:
    """Flag rates of both rules per (scenario, occupancy): one row each."""
    rng = np.random.default_rng(seed)
    eligible = ~model.unjudged_groups  # a permanently dead group cannot die again
    rows = []
    for scenario in SCENARIOS:
        n = size.clean_ls_per_occupancy if scenario == "clean" else size.anomalous_ls_per_occupancy
        for occupancy in occupancies:
            expected = make_expected(np.full(n, float(occupancy)), rng).reshape(n, N_ROCS)
            _inject(scenario, expected, eligible, rng)
            maps = insert_cross(sample(expected, rng).reshape(n, 136, 48))
            flagged = {
                rule: int(model.predict(maps, rule=rule).flag.sum())
                for rule in (RULE_SIGNIFICANCE, RULE_ORIGINAL)
            }
            rows.append(
                {
                    "scenario": scenario,
                    "occupancy": occupancy,
                    "n_ls": n,
                    "flagged": flagged[RULE_SIGNIFICANCE],
                    "flagged_original": flagged[RULE_ORIGINAL],
                }
            )
    table = pd.DataFrame(rows)
    table["rate"] = table.flagged / table.n_ls
    table["rate_original"] = table.flagged_original / table.n_ls
    return table


def failures(table: pd.DataFrame) -> list[str]:
    """What the study shows against the acceptance bar (empty when everything holds)."""
    problems = []
    for scenario, minimum in MUST_FLAG.items():
        for row in table[table.scenario == scenario].itertuples():
            if row.rate < minimum:
                problems.append(
                    f"{scenario} at {row.occupancy}/ROC: {row.rate:.1%} flagged < {minimum:.0%}"
                )
    quiet = table[table.scenario.isin(["clean", "Single-Disk"])]
    for row in quiet[quiet.flagged > 0].itertuples():
        problems.append(f"{row.scenario} at {row.occupancy}/ROC: {row.flagged} false flags")
    return problems


def real_component_maker(components: np.ndarray) -> MapMaker:
    """Healthy maps from the deployed model's real components: W >= 0 varied per LS."""
    h = np.asarray(components, dtype=np.float64).reshape(len(components), -1)

    def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w = rng.uniform(0.0, 1.0, (len(occupancy), len(h)))
        w[:, 0] += 1.0  # a dominant nominal shape, as in real fits
        expected = w @ h
        live_mean = expected.mean(axis=1) * N_ROCS / max((h.mean(axis=0) > 0.05).sum(), 1)
        return expected * (occupancy / live_mean)[:, None]

    return make
