"""Bad ROCs, anomalous power groups, the anomaly type and the Metric of each LS.

Why a significance test: the original rule (squared difference > 1e5 on raw counts) asks for a
deficit of 316 clusters, which a dead ROC only produces above ~316 expected clusters, so at low
pileup a dead group went unseen. Here a ROC is bad when its count lies significantly *below*
its reconstruction mu:

    deficit significance  z = (mu - x) / sqrt(mu + (eps * mu)^2 + 1)

`mu` is the Poisson variance of the count; `eps * mu` is the model error (how far a healthy
ROC strays from the reconstruction beyond Poisson noise, measured per ROC on the training
data, with a floor); the `+ 1` keeps the denominator finite for ROCs expected to be empty. A
dead ROC has z = mu / sqrt(mu + eps^2 mu^2 + 1), which exceeds the threshold from a few tens of
expected clusters and saturates at 1/eps: the decision no longer depends on occupancy.

Only *live* ROCs count: those the reconstruction expects to hold at least `live_fraction` of
the LS's mean occupancy. A permanently dead group or module is empty in the components, hence
neither bad nor counted. A group is anomalous when at least `group_fraction` of its live ROCs
are bad (and it has at least `min_live_rocs` live ROCs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .geometry import (
    BLOCK_OF_GROUP,
    GROUP_N_ROCS,
    GROUP_ROW_STARTS_MODEL,
    MODEL_SHAPE,
    MULTIDISK_CANDIDATES,
    N_GROUPS,
    ROCS_PER_DISK_COLUMN,
    anomaly_type_codes,
)

RULE_SIGNIFICANCE = "significance"
RULE_ORIGINAL = "original"


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, stored in the model file so every deployment states its own."""

    z_threshold: float = 4.0  # deficit significance of a bad ROC
    model_error_floor: float = 0.05  # eps never below 5 % of the expectation
    live_fraction: float = 0.05  # live ROC: expected >= 5 % of the LS mean
    group_fraction: float = 0.40  # anomalous group: >= 40 % of live ROCs bad
    min_live_rocs: int = 16  # fewer live ROCs than this: the group cannot be judged
    screen_deficit: float = 0.05  # groups < 5 % below expectation are not tested ROC by ROC
    metric_threshold: float = 1.0  # Flag = Metric >= this (see multidisk_metric)
    original_loss: float = 1e5  # original rule: (x - mu)^2 > 1e5 ...
    original_group_fraction: float = 0.40  # ... on int(0.40 * n_rocs) ROCs of a group

    def __post_init__(self) -> None:
        """Refuse what would silently change the decisions: text ("4" loads, then every request
        fails), NaN (never flags), negative values, fractions above 1."""
        for field in fields(self):
            value = getattr(self, field.name)
            integral = field.type == "int"
            if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
                kind = "an integer" if integral else "a number"
                raise ValueError(
                    f"threshold {field.name!r} must be {kind}, got {value!r} "
                    f"({type(value).__name__})"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"threshold {field.name!r} must be finite and >= 0, got {value!r}")
            if field.name.endswith("_fraction") and value > 1:
                raise ValueError(f"threshold {field.name!r} is a fraction (<= 1), got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Thresholds:
        """Exactly the declared thresholds: a model file that lacks one or adds another was
        written for another version of the rule, and guessing would change its decisions."""
        names = {field.name for field in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise ValueError(f"thresholds: unknown key(s) {unknown}, missing key(s) {missing}")
        return cls(**values)


def group_counts(per_roc: np.ndarray) -> np.ndarray:
    """(N, 6528) booleans -> (N, 48) int32 counts per power group (geometry.GROUP_NAMES order).

    Groups are rectangular blocks of the model map, so this is two reduceats over contiguous
    axes instead of a gather of every ROC.
    """
    n = len(per_roc)
    maps = per_roc.reshape(n, *MODEL_SHAPE).view(np.uint8)
    by_rows = np.add.reduceat(maps, GROUP_ROW_STARTS_MODEL, axis=1, dtype=np.int32)
    blocks = by_rows.reshape(n, len(GROUP_ROW_STARTS_MODEL), -1, ROCS_PER_DISK_COLUMN).sum(axis=3)
    return blocks.reshape(n, -1)[:, BLOCK_OF_GROUP]


def deficit_significance(
    counts: np.ndarray, expected: np.ndarray, model_error: np.ndarray
) -> np.ndarray:
    """z (N, 6528) of the formula in the module docstring; positive = fewer counts than expected.

    Only for per-ROC maps shown to users; the flagging path uses `significantly_low`, which
    takes the same decision without dividing.
    """
    variance = expected * (1.0 + (model_error * model_error) * expected) + 1.0
    return (expected - counts) / np.sqrt(variance)


def significantly_low(
    counts: np.ndarray,
    expected: np.ndarray,
    model_error_squared: np.ndarray,
    z_threshold: float,
    scratch: np.ndarray,
) -> np.ndarray:
    """(N, 6528) bool: z > z_threshold, as counts + z_threshold * sigma < expected.

    Written as in-place operations on a caller-owned scratch buffer: this runs on every ROC
    of every LS and is the costliest step of inference.
    """
    np.multiply(expected, model_error_squared, out=scratch)
    scratch += 1.0
    scratch *= expected
    scratch += 1.0
    np.sqrt(scratch, out=scratch)
    scratch *= z_threshold
    scratch += counts
    return scratch < expected


def live_rocs(expected: np.ndarray, mean_expected: np.ndarray, live_fraction: float) -> np.ndarray:
    """(N, 6528) bool: ROCs the model expects to be read out in this LS."""
    return expected >= (live_fraction * mean_expected)[:, None]


def large_loss(counts: np.ndarray, expected: np.ndarray, loss: float, scratch: np.ndarray):
    """The original bad-ROC rule: squared difference on raw counts above `loss`."""
    np.subtract(counts, expected, out=scratch)
    scratch *= scratch
    return scratch > loss


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
):
    """Group search with the occupancy-independent rule, from (N, 48) bad and live counts.

    `unjudged_groups` (48,) marks groups the model expects to be (nearly) empty: they can never
    be anomalous, and do not prevent the rest of their quarter from counting as a whole.
    """
    fraction = np.divide(n_bad, n_live, out=np.zeros(n_bad.shape, np.float64), where=n_live > 0)
    fraction[n_live < thresholds.min_live_rocs] = 0.0  # too few live ROCs to judge the group
    return _search(fraction, thresholds.group_fraction, unjudged_groups)


def search_original(n_bad: np.ndarray, thresholds: Thresholds):
    """The original deployment's group rule: int(40 %) of all ROCs of the group are bad."""
    needed = np.floor(thresholds.original_group_fraction * GROUP_N_ROCS) / GROUP_N_ROCS
    return _search(n_bad / GROUP_N_ROCS, needed)


def _search(fraction: np.ndarray, group_threshold, unjudged_groups=None) -> GroupSearch:
    anomalous = fraction >= group_threshold
    return GroupSearch(
        anomalous_groups=anomalous,
        type_code=anomaly_type_codes(anomalous, unjudged_groups),
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
