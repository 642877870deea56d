"""Detection by Ring 1 alone, Ring 2 alone and the joint model, on the same lumisections.

A power group powers blades of both rings, so a group outage silences its ROCs in both rings
of one LS; the joint model (`mlserver_model.joint.JointNMF`) pools the two rings' evidence per
group. This study measures what that buys: every cell draws LS holding *both* rings' maps, with
one occupancy scale per LS (Ring 1 at `ring1_ratio` times Ring 2's clusters per ROC, both from
the same pileup) and the SAME outage in both rings; then a Ring 1 model judges the Ring 1 maps,
a Ring 2 model the Ring 2 maps, and the joint model both.

Mismatch levels are today's (`mismatch.MISMATCH_LEVELS` and two NMF refits), drawn on both
rings at once: one smooth field per LS over the ROCs of both rings (`RocCoordinates.join`), so a
beam-spot shift or an azimuthal dip is the same on both, which is the hard case for a rule that
pools the rings (a coherent dip over one ROG of both rings looks like a partial outage);
overdispersion is per ROC. The refit fits each ring's NMF twice (the two halves of a period that
drifts coherently in both rings): models trained on the first fit's maps judge the second's.

Scenarios (`RING_SCENARIOS`) and what "caught" means:
- clean: a false flag is Flag = 1 (an LS the model would report); LS with any anomalous group
  (a group outage claimed without a flag, i.e. a Single-Disk call) are counted too;
- a ROG dead on 2 disks (the same ROG on two disks of one z side, both rings): caught when the
  LS is flagged AND both dead groups are among its anomalous groups;
- a ROG dead on one disk (one group, both rings; a Single-Disk outage): caught when the dead
  group is among the LS's anomalous groups (AnomalyType Single-Disk; the LS is not flagged, as
  a Single-Disk outage never is; flags raised on these LS are counted as well).
For a one-ring detector "both rings" means its own ring: the other ring's maps are not shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlserver_model.bad_ROC import Thresholds
from mlserver_model.geometry import GROUP_NAMES, RING1, RING2, RingGeometry
from mlserver_model.joint import JointNMF
from mlserver_model.nmf2d import BatchedNNLS
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space
from mlserver_model.preprocessor import insert_cross

from ..model.train import estimate_model_error, fit_components
from ..sim import simulate as simulator
from .evaluation import OCCUPANCIES, StudySize, _candidate_disks
from .mismatch import (
    MISMATCH_LEVELS,
    Mismatch,
    RefitPair,
    RocCoordinates,
    _misfit,
    overdispersed,
    period_fields,
    ring_coordinates,
    smooth_fields,
)

GEOMETRIES = (RING1, RING2)  # the order of the rings' ROCs in a both-rings array
RING_OF = {g.ring: g for g in GEOMETRIES}
BOTH_COORDINATES = RocCoordinates.join(tuple(ring_coordinates(g) for g in GEOMETRIES))
_BOUNDS = np.cumsum([0] + [g.n_rocs for g in GEOMETRIES])
N_BOTH = int(_BOUNDS[-1])  # 4224 + 6528 ROCs

# Ring 1 clusters per ROC over Ring 2's in one LS (the study's default; see RING1_RATIO_WHY).
RING1_RATIO = simulator.RING1_OCCUPANCY_RATIO
RING1_RATIO_WHY = (
    "the simulator's RING1_OCCUPANCY_RATIO: Ring 1 sits closer to the beam (radius ~6-11 cm "
    "against ~11-16 cm), the track density per unit area falls roughly as 1/r^2, less the "
    "smaller area a Ring 1 ROC covers at those angles; a round figure in that range, not a "
    "measurement (the real components are each scaled to mean 1 and carry no absolute scale); "
    "`--ring1-ratio` reruns with another"
)
# The joint rule's group total catches a dead group far below Ring 2's 20 clusters per ROC, so
# the grid reaches down to 0.05 cluster per ROC; from 20 up it is today's tables' grid.
RING_OCCUPANCIES = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, *OCCUPANCIES)
# LS per outage cell and per clean cell: 99 % of 200 is at most 2 missed (2 cores, minutes).
RING_STUDY_SIZE = StudySize(anomalous_ls_per_cell=200, clean_ls_per_cell=500)

DETECTORS = ("Ring 1 alone", "Ring 2 alone", "joint")
CLEAN, TWO_DISKS, ONE_DISK = "clean", "ROG dead on 2 disks", "ROG dead on one disk"
RING_SCENARIOS = (CLEAN, TWO_DISKS, ONE_DISK)

# Expected maps of both rings, (N, 4224 + 6528) Ring 1 first, for Ring 2 occupancies (N,).
BothMaker = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Sampler = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def split(both: np.ndarray) -> dict[int, np.ndarray]:
    """{1: (N, 4224), 2: (N, 6528)} views of a both-rings array."""
    return {g.ring: both[:, _BOUNDS[i] : _BOUNDS[i + 1]] for i, g in enumerate(GEOMETRIES)}


def to_maps(both_counts: np.ndarray) -> dict[int, np.ndarray]:
    """Map-space (N, rows, 56) counts of each ring, cross re-inserted, as DIALS sends them."""
    n = len(both_counts)
    return {
        ring: insert_cross(part.reshape(n, *RING_OF[ring].model_shape), 0, RING_OF[ring])
        for ring, part in split(both_counts).items()
    }


def _live_mean(expected: np.ndarray, live: np.ndarray) -> np.ndarray:
    return expected[:, live].mean(axis=1)


def scaled_both_maker(
    components: Mapping[int, np.ndarray],
    weights_pools: Mapping[int, np.ndarray],
    ring1_ratio: float = RING1_RATIO,
) -> BothMaker:
    """Both rings' maps W @ H per ring, W drawn from each ring's pool AT THE SAME ROW, each ring
    scaled to its occupancy over its live ROCs (>= 5 % of the mean shape, as the simulator).

    Drawing the same row keeps what one LS of the pools had in common (a refit's pools hold the
    weights the two rings' fits gave the same LS); the pools must have the same length.
    """
    h = {
        g.ring: np.asarray(components[g.ring], np.float64).reshape(-1, g.n_rocs) for g in GEOMETRIES
    }
    pools = {ring: np.asarray(weights_pools[ring], np.float64) for ring in h}
    if len({len(p) for p in pools.values()}) != 1:
        raise ValueError("the weight pools of the two rings must have the same length")
    live = {}
    for ring, hr in h.items():
        profile = hr.mean(axis=0)
        live[ring] = profile >= 0.05 * profile.mean()
    scale = {1: ring1_ratio, 2: 1.0}

    def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        occupancy = np.asarray(occupancy, np.float64)
        rows = rng.integers(len(pools[2]), size=len(occupancy))
        parts = []
        for g in GEOMETRIES:
            expected = pools[g.ring][rows] @ h[g.ring]
            target = scale[g.ring] * occupancy / _live_mean(expected, live[g.ring])
            parts.append(expected * target[:, None])
        return np.concatenate(parts, axis=1)

    return make


def real_both_maker(
    components: Mapping[int, np.ndarray], ring1_ratio: float = RING1_RATIO, seed: int = 0
) -> BothMaker:
    """Healthy maps of the real components of both rings, as `real_component_maker` does for
    Ring 2 (W uniform in [0, 1], the first raised by 1, a pool of 10,000 settings per ring).

    The two rings' components come from different fits (no common W), so the rings share only
    the LS's occupancy scale.
    """
    rng = np.random.default_rng(seed)
    pools = {}
    for g in GEOMETRIES:
        pool = rng.uniform(0.0, 1.0, (10_000, len(components[g.ring])))
        pool[:, 0] += 1.0
        pools[g.ring] = pool
    return scaled_both_maker(components, pools, ring1_ratio)


def mismatched(make: BothMaker, mismatch: Mismatch) -> BothMaker:
    """`make` with one smooth field per LS over both rings and per-ROC overdispersion."""

    def make_mismatched(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = make(occupancy, rng)
        if mismatch.field_amplitude > 0:
            fields = smooth_fields(len(out), mismatch.field_amplitude, rng, BOTH_COORDINATES)
            out = out * fields
        return overdispersed(out, mismatch.overdispersion, rng)

    return make_mismatched


@dataclass(frozen=True)
class RingsRefit:
    """Two fits of each ring on the two halves of one drifting period (`mismatch.refit_pair`
    for both rings): `pair.first` / `pair.second` make both rings' maps; misfits per ring."""

    pair: RefitPair
    misfit: dict[int, tuple[float, float]]  # ring -> (RMS, 99th percentile)


def refit_both(
    make: BothMaker,
    rng: np.random.Generator,
    *,
    field_amplitude: float,
    ring1_ratio: float = RING1_RATIO,
    n_ls: int = 900,
    passes: int = 200,
) -> RingsRefit:
    """A period of both rings drifting together, each ring's NMF fitted on each half."""
    occupancy = rng.uniform(200.0, 1400.0, 2 * n_ls)
    truth = make(occupancy, rng) * period_fields(
        2 * n_ls, field_amplitude, rng, where=BOTH_COORDINATES
    )
    counts = split(rng.poisson(truth).astype(np.float64))
    fits, pools = {}, {}
    for ring, ring_counts in counts.items():
        halves = (ring_counts[:n_ls], ring_counts[n_ls:])
        fits[ring] = [
            fit_components(half, passes=passes, seed=seed)
            for seed, half in zip((1, 2), halves, strict=True)
        ]
        pools[ring] = [
            BatchedNNLS(h).solve(half @ h.T) / half.mean(axis=1, keepdims=True)
            for h, half in zip(fits[ring], halves, strict=True)
        ]
    first, second = (
        scaled_both_maker(
            {r: fits[r][i] for r in fits}, {r: pools[r][i] for r in pools}, ring1_ratio
        )
        for i in (0, 1)
    )
    sample = split(second(np.full(500, 1000.0), rng))
    misfit = {ring: _misfit(sample[ring], fits[ring][0]) for ring in fits}
    return RingsRefit(RefitPair(first, second, *misfit[2]), misfit)


# ---- models -------------------------------------------------------------------------------


def train_ring(maps: np.ndarray, geometry: RingGeometry, *, passes: int = 300) -> PixelRing2NMF:
    """A model of one ring from its clean map-space maps, as `train_model` makes Ring 2's."""
    thresholds = Thresholds()
    x = to_model_space(maps, geometry)
    components = fit_components(x, passes=passes)
    first = PixelRing2NMF(components, np.zeros(x.shape[1]), thresholds, geometry=geometry)
    error = estimate_model_error(first, x, thresholds.model_error_floor)
    return PixelRing2NMF(components, error, thresholds, geometry=geometry)


@dataclass(frozen=True)
class Detectors:
    """The three detectors of one study, all trained on the same clean LS (both rings)."""

    ring1: PixelRing2NMF
    ring2: PixelRing2NMF
    joint: JointNMF

    @property
    def eligible(self) -> np.ndarray:
        """(48,) groups an outage may hit: judged by both rings' models (a group dead in
        either ring's components is left out, so all three detectors face the same LS)."""
        return ~(self.ring1.unjudged_groups | self.ring2.unjudged_groups)

    def results(self, maps: Mapping[int, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """detector -> (flag (N,), anomalous groups (N, 48)) on one batch of both rings."""
        out = {}
        for name, result in (
            (DETECTORS[0], self.ring1.predict(maps[1])),
            (DETECTORS[1], self.ring2.predict(maps[2])),
            (DETECTORS[2], self.joint.predict(maps)),
        ):
            out[name] = (result.flag, result.anomalous_groups)
        return out


def train_detectors(
    make: BothMaker, n: int, rng: np.random.Generator, sample: Sampler, *, passes: int = 300
) -> Detectors:
    """Ring 1, Ring 2 and joint models from n clean LS (200-1400 Ring 2 clusters per ROC)."""
    expected = make(rng.uniform(200, 1400, n), rng)
    maps = to_maps(np.asarray(sample(expected, rng)))
    ring1, ring2 = (train_ring(maps[g.ring], g, passes=passes) for g in GEOMETRIES)
    return Detectors(ring1, ring2, JointNMF({1: ring1, 2: ring2}))


# ---- the study ----------------------------------------------------------------------------


def _dead_groups(
    scenario: str, n: int, eligible: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(n, k) group ids dead in each LS (k = 0, 1 or 2)."""
    if scenario == CLEAN:
        return np.zeros((n, 0), dtype=int)
    if scenario == TWO_DISKS:
        candidates = _candidate_disks(eligible, 2)
        return candidates[rng.integers(len(candidates), size=n)]
    return rng.choice(np.flatnonzero(eligible), size=(n, 1))


def kill(both: np.ndarray, groups: np.ndarray) -> None:
    """Zero, in place, every ROC of groups[n, :] in LS n, in both rings."""
    if groups.shape[1] == 0:
        return
    for ring, part in split(both).items():
        group_of_roc = RING_OF[ring].group_id_flat
        dead = (group_of_roc[None, :, None] == groups[:, None, :]).any(axis=2)
        part[dead] = 0.0


def caught(scenario: str, flag: np.ndarray, anomalous: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """(N,) bool: the scenario's criterion (module docstring)."""
    named = np.take_along_axis(anomalous, dead, axis=1).all(axis=1)
    if scenario == TWO_DISKS:
        return flag & named
    if scenario == ONE_DISK:
        return named
    return np.zeros(len(flag), dtype=bool)


@dataclass(frozen=True)
class BothLevel:
    name: str
    make: BothMaker


def rings_study(
    detectors: Detectors,
    levels: Sequence[BothLevel],
    sample: Sampler,
    *,
    occupancies: Sequence[float] = RING_OCCUPANCIES,
    size: StudySize = RING_STUDY_SIZE,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (level, scenario, occupancy, detector): LS, flagged, caught, any group.

    Each cell's LS are drawn once (from a seed of `seed` and the cell's position) and judged by
    all three detectors, so their numbers differ only by the detector.
    """
    cells = [(lv, sc, occ) for lv in levels for sc in RING_SCENARIOS for occ in occupancies]
    rows = []
    for (level, scenario, occupancy), cell_seed in zip(
        cells, np.random.SeedSequence(seed).spawn(len(cells)), strict=True
    ):
        rng = np.random.default_rng(cell_seed)
        n = size.clean_ls_per_cell if scenario == CLEAN else size.anomalous_ls_per_cell
        expected = level.make(np.full(n, float(occupancy)), rng)
        dead = _dead_groups(scenario, n, detectors.eligible, rng)
        kill(expected, dead)
        maps = to_maps(np.asarray(sample(expected, rng)))
        for detector, (flag, anomalous) in detectors.results(maps).items():
            rows.append(
                {
                    "level": level.name,
                    "scenario": scenario,
                    "occupancy": occupancy,
                    "detector": detector,
                    "n_ls": n,
                    "flagged": int(flag.sum()),
                    "caught": int(caught(scenario, flag, anomalous, dead).sum()),
                    "any_group": int(anomalous.any(axis=1).sum()),
                    "flagged_groups": _group_counts(anomalous[flag]),
                    "named_groups": _group_counts(anomalous) if scenario == CLEAN else "",
                }
            )
    table = pd.DataFrame(rows)
    table["rate"] = table.caught / table.n_ls
    return table


def _group_counts(anomalous: np.ndarray) -> str:
    """'name xcount' of the groups anomalous in these LS, most frequent first ('' if none)."""
    counts = anomalous.sum(axis=0)
    order = np.argsort(-counts, kind="stable")
    return "; ".join(f"{GROUP_NAMES[g]} x{counts[g]}" for g in order if counts[g])


def lowest_occupancy(rows: pd.DataFrame, bar: float = 0.99) -> float | None:
    """The lowest occupancy from which every occupancy of the grid catches >= `bar` of its LS
    (None: not even the highest)."""
    ordered = rows.sort_values("occupancy")
    passing = (ordered.rate >= bar).to_numpy()
    if not passing[-1]:
        return None
    failing = np.flatnonzero(~passing)
    start = failing[-1] + 1 if len(failing) else 0
    return float(ordered.occupancy.iloc[start])


def standard_levels(make: BothMaker) -> list[BothLevel]:
    """Today's mismatch levels (`MISMATCH_LEVELS`) on both rings."""
    return [BothLevel(m.name, mismatched(make, m)) for m in MISMATCH_LEVELS]


def simulated_both_maker(ring1_ratio: float = RING1_RATIO) -> BothMaker:
    """Healthy maps of the project's simulated detector in both rings (`default_detector` of
    each ring), one pileup per LS (20-65, drawn apart from the occupancy as
    `evaluation.detector_maker` does) shaping both rings, Ring 1 at `ring1_ratio` times Ring
    2's clusters per ROC (the simulator's own `RING1_OCCUPANCY_RATIO` by default)."""
    detectors = {g.ring: simulator.default_detector(g) for g in GEOMETRIES}
    scale = {1: ring1_ratio, 2: 1.0}

    def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        occupancy = np.asarray(occupancy, np.float64)
        pileup = rng.uniform(20, 65, len(occupancy))
        parts = [
            simulator.expected_maps(detectors[g.ring], scale[g.ring] * occupancy, pileup)
            for g in GEOMETRIES
        ]
        return np.concatenate([p.reshape(len(occupancy), -1) for p in parts], axis=1)

    return make
