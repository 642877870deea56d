"""Bad ROCs, anomalous power groups, the anomaly type and the Metric of each LS.

A ROC is *bad* when its count x lies far below its reconstruction mu in two senses at once:

    significant:   z = (mu - x) / sqrt(mu + (eps * mu)^2 + 1) > z_threshold   (4)
    large:         x < (1 - min_relative_deficit) * mu                         (half of mu)

Why two conditions. An outage makes a ROC (nearly) silent; a model that does not fit the data
exactly (the detector's shape drifts during a period; real maps are never exact 5-component
mixtures) makes whole regions *somewhat* low, 10-30 %, and per-ROC, per-LS scatter beyond
Poisson adds a few percent more. Significance alone cannot tell the two apart at high
occupancy: with eps = 5 % a ROC 22 % below mu is "4 sigma" at 1,500 clusters, and a smooth
misfit lowers many neighbouring ROCs together, i.e. whole groups, on several disks when it
follows the azimuth. Requiring the count to have lost at least half of its expectation
separates the two at any occupancy where the deficit is measurable: a dead ROC has x = 0, a
30 % misfit leaves x ~ 0.7 mu. At low occupancy the significance condition is the binding one
(it is what keeps Poisson fluctuations of a few counts from being "bad"); from ~80 expected
clusters up the relative one is.

`mu` is the Poisson variance of the count; `eps * mu` is the model error (how far a healthy
ROC strays from the reconstruction beyond Poisson noise, measured per ROC on the training
data, with a floor); the `+ 1` keeps the denominator finite for ROCs expected to be empty.

Only *live* ROCs count, in both the numerator and the denominator of a group's fraction: ROCs
the reconstruction expects to hold at least `live_fraction` of the LS's mean occupancy *and*
enough clusters that their silence would be significant (x = 0 gives z > z_threshold, i.e.
mu above ~18 clusters with eps = 5 %). A permanently dead group or module is empty in the
components, hence never live; at low occupancy the ROCs whose loss could not be seen anyway do
not dilute the fraction, so a dead group stays 100 % bad down to ~20 clusters per ROC. A group
is anomalous when at least `group_fraction` of its live ROCs are bad (and it has at least
`min_live_rocs` live ROCs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .geometry import (
    MULTIDISK_CANDIDATES,
    N_GROUPS,
    RING2,
    ROCS_PER_DISK_COLUMN,
    RingGeometry,
    anomaly_type_codes,
)


@dataclass(frozen=True)
class Bound:
    """What one threshold may be: its kind and its closed interval (None: unbounded)."""

    kind: type  # int or float (an int is a valid float; a bool is neither)
    low: float | None = 0.0
    high: float | None = None

    def check(self, name: str, value: Any) -> None:
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = "an integer" if self.kind is int else "a number"
            raise ValueError(
                f"threshold {name!r} must be {wanted}, got {value!r} ({type(value).__name__})"
            )
        if not math.isfinite(value):
            raise ValueError(f"threshold {name!r} must be finite, got {value!r}")
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            raise ValueError(f"threshold {name!r} must be in [{low}, {high}], got {value!r}")


FRACTION = Bound(float, 0.0, 1.0)


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, stored in the model file so every deployment states its own.

    `CONSTRAINTS` declares each field's kind and bounds once (as scikit-learn's
    `_parameter_constraints` do) and `__post_init__` checks them all, so that nothing that
    would silently change the decisions loads: text ("4" loads, then every request fails),
    NaN (never flags), negative values, fractions above 1.
    """

    z_threshold: float = 4.0  # deficit significance of a bad ROC
    min_relative_deficit: float = 0.5  # ... which also lost >= 50 % of its expected clusters
    model_error_floor: float = 0.05  # eps never below 5 % of the expectation
    live_fraction: float = 0.05  # live ROC: expected >= 5 % of the LS mean
    group_fraction: float = 0.40  # anomalous group: >= 40 % of live ROCs bad
    min_live_rocs: int = 16  # fewer live ROCs than this: the group cannot be judged
    # groups < 10 % below expectation are not tested ROC by ROC (negative: every group is)
    screen_deficit: float = 0.10
    metric_threshold: float = 1.0  # Flag = Metric >= this (see multidisk_metric)

    CONSTRAINTS: ClassVar[dict[str, Bound]] = {
        "z_threshold": Bound(float),
        "min_relative_deficit": FRACTION,
        "model_error_floor": Bound(float),
        "live_fraction": FRACTION,
        "group_fraction": FRACTION,
        "min_live_rocs": Bound(int),
        "screen_deficit": Bound(float, low=None, high=1.0),
        "metric_threshold": Bound(float),
    }
    # Thresholds of the original rule that model files of 0.1.0 still carry: read and dropped
    # (the rule itself lives with the benchmarks now, pixelring2nmf.validation.original).
    RETIRED: ClassVar[tuple[str, ...]] = ("original_loss", "original_group_fraction")

    def __post_init__(self) -> None:
        for spec in fields(self):
            self.CONSTRAINTS[spec.name].check(spec.name, getattr(self, spec.name))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Thresholds:
        """Exactly the declared thresholds: a model file that lacks one or adds another was
        written for another version of the rule, and guessing would change its decisions."""
        names = {spec.name for spec in fields(cls)}
        given = {name: value for name, value in values.items() if name not in cls.RETIRED}
        unknown, missing = sorted(set(given) - names), sorted(names - set(given))
        if unknown or missing:
            raise ValueError(f"thresholds: unknown key(s) {unknown}, missing key(s) {missing}")
        return cls(**given)


def group_counts(per_roc: np.ndarray, geometry: RingGeometry = RING2) -> np.ndarray:
    """(N, 6528) booleans -> (N, 48) int32 counts per power group (geometry.GROUP_NAMES order).

    Groups are rectangular blocks of the model map, so this is two reduceats over contiguous
    axes instead of a gather of every ROC.
    """
    n = len(per_roc)
    starts = geometry.group_row_starts_model
    maps = per_roc.reshape(n, *geometry.model_shape).view(np.uint8)
    by_rows = np.add.reduceat(maps, starts, axis=1, dtype=np.int32)
    blocks = by_rows.reshape(n, len(starts), -1, ROCS_PER_DISK_COLUMN).sum(axis=3)
    return blocks.reshape(n, -1)[:, geometry.block_of_group]


def deficit_significance(
    counts: np.ndarray, expected: np.ndarray, model_error: np.ndarray
) -> np.ndarray:
    """z (N, 6528) of the formula in the module docstring; positive = fewer counts than expected.

    Only for per-ROC maps shown to users; the flagging path uses `bad_count_limit`, which
    takes the decision without dividing.
    """
    variance = expected * (1.0 + (model_error * model_error) * expected) + 1.0
    return (expected - counts) / np.sqrt(variance)


def bad_count_limit(
    expected: np.ndarray,
    model_error_squared: np.ndarray,
    thresholds: Thresholds,
    scratch: np.ndarray,
) -> np.ndarray:
    """Count below which a ROC is bad: min(mu - z_threshold * sigma, (1 - d) * mu), in scratch.

    Both conditions of the module docstring in one limit, so the decision is one comparison
    (`counts < limit`). Written as in-place operations on a caller-owned buffer: this runs on
    every ROC of every screened group and is the costliest step of inference.
    """
    np.multiply(expected, model_error_squared, out=scratch)
    scratch += 1.0
    scratch *= expected
    scratch += 1.0
    np.sqrt(scratch, out=scratch)
    scratch *= -thresholds.z_threshold
    scratch += expected  # mu - z sigma
    return np.minimum(scratch, (1.0 - thresholds.min_relative_deficit) * expected, out=scratch)


def silence_floor(model_error: np.ndarray, z_threshold: float) -> np.ndarray:
    """Smallest expectation mu at which x = 0 is significant, per ROC (inf if never).

    Solves mu = z sqrt(mu + eps^2 mu^2 + 1) for mu: (1 - z^2 eps^2) mu^2 - z^2 mu - z^2 = 0.
    A ROC whose eps is 1/z or more can never be significantly low (z saturates at 1/eps), so it
    can never be live. The floor is raised by 1e-4 relative so that a ROC exactly at it, which
    float rounding could leave a hair short of significant, is not live.
    """
    eps = np.asarray(model_error, dtype=np.float64)
    z2 = z_threshold * z_threshold
    a = 1.0 - z2 * eps * eps
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = (z2 + np.sqrt(z2 * z2 + 4.0 * z2 * a)) / (2.0 * a)
    return np.where(a > 0, floor * (1.0 + 1e-4), np.inf)


def live_rocs(
    expected: np.ndarray, mean_expected: np.ndarray, live_fraction: float, floor: np.ndarray
) -> np.ndarray:
    """(N, R) bool: ROCs the model expects to be read out, with enough clusters to judge them.

    `mean_expected` (N,) is the LS's mean expectation per ROC, `floor` the silence floor of
    each ROC (`silence_floor`), broadcast against `expected`.
    """
    return expected >= np.maximum(floor, (live_fraction * mean_expected)[:, None])


@dataclass(frozen=True)
class GroupSearch:
    """Per-LS outcome of the power-group search."""

    anomalous_groups: np.ndarray  # (N, 48) bool
    type_code: np.ndarray  # (N,) index into geometry.ANOMALY_TYPES
    metric: np.ndarray  # (N,) float32


def search_significance(
    n_bad: np.ndarray,
    n_live: np.ndarray,
    thresholds: Thresholds,
    unjudged_groups: np.ndarray | None = None,
    tested: np.ndarray | None = None,
):
    """Group search with the occupancy-independent rule, from (N, 48) bad and live counts.

    `unjudged_groups` (48,) marks groups the model expects to be (nearly) empty: they can never
    be anomalous, and do not prevent the rest of their quarter from counting as a whole.
    `tested` (N, 48) marks the groups whose ROCs were counted (None: all of them); a tested
    group with fewer than `min_live_rocs` live ROCs cannot be judged in that LS, which makes a
    lone anomalous partner disk `Same-Disk` (geometry.anomaly_type_codes). An untested group
    passed the screen, i.e. kept ~all its expected clusters: it was judged, and is healthy.
    """
    fraction = np.divide(n_bad, n_live, out=np.zeros(n_bad.shape, np.float64), where=n_live > 0)
    blind = n_live < thresholds.min_live_rocs  # too few live ROCs to judge the group
    fraction[blind] = 0.0
    if tested is not None:
        blind &= tested
    return group_search(fraction, thresholds.group_fraction, unjudged_groups, blind)


def group_search(
    fraction: np.ndarray, group_threshold, unjudged_groups=None, blind_groups=None
) -> GroupSearch:
    """Anomalous groups, type and Metric from (N, 48) fractions of bad ROCs and the group
    threshold (one number, or one per group); `blind_groups` (N, 48): groups that could not be
    judged in each LS (geometry.anomaly_type_codes)."""
    anomalous = fraction >= group_threshold
    return GroupSearch(
        anomalous_groups=anomalous,
        type_code=anomaly_type_codes(anomalous, unjudged_groups, blind_groups),
        metric=multidisk_metric(fraction, group_threshold),
    )


def multidisk_metric(fraction: np.ndarray, group_threshold) -> np.ndarray:
    """Continuous anomaly score of the worst Multi-Disk candidate; >= 1 exactly when flagged.

    A candidate is one (z side, blade side, ROG) on the three disks. Its extent on the second
    most affected disk, in units of the group threshold, says how close it is to a Multi-Disk
    anomaly: 0 when at most one disk lost ROCs, 1 when two disks reach the threshold. Once it
    is flagged, every further disk at or above the threshold adds its own extent, so a ROG dead
    on three disks (or a whole quarter) scores higher than one dead on two, and a fully dead ROG
    higher than a partly dead one. A whole quarter contains flagged candidates, so it is
    flagged as well.
    """
    relative = fraction / np.broadcast_to(group_threshold, (N_GROUPS,))
    per_disk = relative[:, MULTIDISK_CANDIDATES]  # (N, 16, 3)
    # second largest of three = sum - largest - smallest (no sort of a tiny axis)
    second = per_disk.sum(axis=2) - per_disk.max(axis=2) - per_disk.min(axis=2)
    flagged_extent = np.where(per_disk >= 1.0, per_disk, 0.0).sum(axis=2)
    score = np.where(second >= 1.0, flagged_extent, second)
    return score.max(axis=1, initial=0.0).astype(np.float32)
