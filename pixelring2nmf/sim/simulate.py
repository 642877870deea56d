"""Simulated FPix data: DIALS parquet(s), OMS JSON and a truth table of injected anomalies.

Ring 2 by default (everything below is described on it); `ring=1` simulates Ring 1 the same
way on its own model space (88, 48), with 1.6x Ring 2's clusters per ROC and no permanently
dead group, and `ring="both"` the two rings of the same LS with their power-group outages in
common (`simulate`, `simulate_run(companion=...)`). Ring 2's numbers never depend on Ring 1.

Real per-LS maps need CERN credentials, so every test, benchmark and demo of the project runs
on data made here. The simulator stands alone (no reference data is read) and follows the
typical values of docs/domain.md (section 3):

- a *detector* (`make_detector`) holds everything that stays fixed for months: per-ROC gain
  spread, module/panel/disk differences, the radial gradient inside each disk, permanently dead
  ROCs, ROC rows, modules and the whole group FPix_BmO_D1_ROG2;
- a *fill* sets the pileup per LS (levelled at ~63, then decaying towards ~20); fills span runs;
- the expected map of one LS is `occupancy_per_roc * sum_k w_k(pileup) * pattern_k`: three
  spatial patterns (nominal, steeper radial gradient with an azimuthal modulation, a +z/-z
  asymmetry) whose weights drift with pileup and from fill to fill, so that maps change shape a
  little, not only scale, and a 5-component NMF has something to learn;
- counts are Poisson; anomalies (dead groups, partial dropouts, hot ROCs, LS missing from the
  parquet) are injected into the expected maps and written to `truth.csv`;
- OMS columns follow the real layout, with DCS flags false at run start/end, short gaps and a
  few nulls. Maps follow the flags: nearly empty without collisions or while CMS is not
  recording, a few percent of the clusters while FPix HV is off.

Truth table (`truth.csv`, one row per anomalous (run, ls), anomalies only at DCS-good LS):
`run, ls, anomaly_type, groups, n_dead_rocs` (with Ring 1, a last column `rings`: which
ring(s) the anomaly silences, see `simulate`), with anomaly_type one of
- Multi-Disk: one ROG dead on 2 or 3 disks (same z side and blade side), whole groups;
- Quarter: the 12 groups of one shell;
- Single-Disk: one group on one disk (not Multi-Disk);
- Partial: a random 30-90% of one group's ROCs on 1 or 2 disks (on 2 disks above 40% a
  group-fraction rule sees it as Multi-Disk: score it as you see fit);
- Hot-ROC: 1-5 ROCs counting x5-x20 (`groups` = their groups, n_dead_rocs = 0);
- Missing: the LS is absent from the parquet but present in the OMS JSON (groups empty).
`groups` is ';'-joined group names; n_dead_rocs counts live ROCs newly zeroed (permanently
dead ones excluded). Anomalies last 1-16 LS and never overlap.

Python API (used by the model's tests and benchmarks): `make_detector`, `expected_maps`,
`sample_maps`, `kill_groups`, `simulate_run`, `simulate`; the command is `pixelring2nmf
simulate` (cli/data_commands.py). Everything is seeded: the same seed gives byte-identical
parquet data and truth table.

pyarrow is imported inside the writer only, so that the simulator's array code can be used
where only the runtime's libraries are installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.errors import checked_integer
from mlserver_model.geometry import (
    DISKS,
    GROUP_NAMES,
    MULTIDISK_CANDIDATES,
    N_GROUPS,
    QUARTER_GROUPS,
    RING1,
    RING2,
    RINGS,
    RingGeometry,
    group_index,
)
from mlserver_model.omstools import OMS_COLUMNS
from mlserver_model.preprocessor import insert_cross

from ..errors import OptionError
from ..io.atomic import replacing, write_atomically, write_text
from ..io.parquet import (  # dials_table and write_dials_parquet: also this module's API
    DEFAULT_VALUE_TYPE,
    ROW_GROUP_LS,
    dials_parquet_writer,
    dials_table,
)
from ..io.parquet import (
    write_dials_parquet as write_dials_parquet,
)

logger = logging.getLogger(__name__)

# --- DIALS / OMS naming -------------------------------------------------------------------------

OMS_KEYS = OMS_COLUMNS  # the real OMS JSON layout, as omstools reads it
DETECTOR_READY_FLAGS = DCS_FLAGS[2:]
TRUTH_COLUMNS = ("run", "ls", "anomaly_type", "groups", "n_dead_rocs")

ANOMALY_KINDS = ("Multi-Disk", "Quarter", "Single-Disk", "Partial", "Hot-ROC", "Missing")
# Mix of injected kinds in the era scenario: Multi-Disk and Single-Disk are about as common
# in reality (docs/domain.md, 3); whole quarters are rarer.
_ERA_KIND_PROBABILITIES = np.array([0.28, 0.08, 0.24, 0.16, 0.12, 0.12])
MAX_ANOMALY_LS = 16  # real Multi-Disk anomalies last 1-16 LS

PERMANENTLY_DEAD_GROUP = "FPix_BmO_D1_ROG2"  # dead since 2024F

# --- occupancy and pileup ---------------------------------------------------------------------

# Clusters per ROC per LS per unit of pileup: ~12.5 puts pileup 63 at ~790 clusters per ROC,
# inside the 400-1400 observed in 2024-2025; each run gets its own value (trigger, prescales).
NOMINAL_CLUSTERS_PER_PILEUP = 12.5
# Ring 1 sits closer to the beam (radius ~6-11 cm against ~11-16 cm for Ring 2): the track
# density per unit area falls roughly as 1/r^2, less the smaller area a Ring 1 ROC covers at
# those angles. The simulated Ring 1 takes 1.6x Ring 2's clusters per ROC at the same pileup
# (~1260 per ROC at pileup 63, ~20 per unit of pileup), a round figure in that range, not a
# measurement; everything else of the occupancy (fills, DCS, per-run spread) is shared.
RING1_OCCUPANCY_RATIO = 1.6
# Delivered luminosity per LS per unit of pileup, in /pb: pileup * bunches * revolution
# frequency / inelastic cross-section (80 mb), over one LS (2^18 orbits = 23.31 s), 2340 bunches.
DELIVERED_LUMI_PER_PILEUP = 2340 * 11245.0 * 23.31 / 80e-27 / 1e36
NOISE_CLUSTERS_PER_ROC = 0.2  # with no collisions (or no data taken) maps are nearly empty
HV_OFF_EFFICIENCY = (0.01, 0.05)  # FPix not ready = high voltage off: few clusters remain

# Prescale columns used by OMS while pileup falls during a fill: (lowest pileup, index, name).
_PRESCALE_COLUMNS = (
    (60.0, 6, "2p0E34"),
    (56.0, 7, "1p8E34"),
    (51.0, 8, "1p6E34"),
    (45.0, 9, "1p4E34"),
    (40.0, 10, "1p3E34"),
    (30.0, 12, "1p0E34"),
    (-1.0, 13, "7p0E33"),
)

_CHUNK_LS = 1000  # LS generated at once inside a run (bounds float temporaries)
_POISSON_EXACT_BELOW = 50.0  # expected counts under this are drawn with numpy's exact Poisson
_SAMPLING_BLOCK = 1 << 16  # values sampled at once: float32 work buffers stay in cache

# Model-space flat ROC indices of each power group, fixed geometry.


# ================================================================================================
# Detector: the permanent state
# ================================================================================================


@dataclass(frozen=True, eq=False)
class Detector:
    """Permanent state of one simulated ring (fixed for months in reality).

    Shapes below are Ring 2's model space (136, 48); a Ring 1 detector (`geometry` RING1) has
    the same arrays on (88, 48).

    Attributes:
        gain_model: (136, 48) per-ROC response (gain spread, module/panel/disk and per-column
            differences), mean 1 over live ROCs, 0 at dead ROCs. It holds no radial gradient:
            that is part of the patterns, whose steepness depends on pileup.
        dead_rocs: (136, 48) bool, permanently dead ROCs (including FPix_BmO_D1_ROG2 in Ring 2).
        patterns: (3, 136, 48) spatial patterns with the gain folded in, each of mean 1 over
            live ROCs: 0 nominal, 1 steeper radial gradient with an azimuthal (beam-spot)
            modulation, grows with pileup; 2 +z/-z asymmetry, weight set per fill.
        clusters_per_pileup: nominal clusters per ROC per LS per unit of pileup.
        dead_group_ids: power groups that are entirely dead.
        geometry: the ring (RING2 or RING1).
    """

    gain_model: np.ndarray
    dead_rocs: np.ndarray
    patterns: np.ndarray
    clusters_per_pileup: float = NOMINAL_CLUSTERS_PER_PILEUP
    dead_group_ids: tuple[int, ...] = ()
    geometry: RingGeometry = RING2

    @property
    def live_rocs(self) -> np.ndarray:
        return ~self.dead_rocs


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise ValueError(f"Expected an int seed or a numpy Generator, got {type(seed).__name__}")


def model_coordinates(geometry: RingGeometry = RING2) -> dict[str, np.ndarray]:
    """Per-ROC coordinates of one ring's model space, each (136, 48) (Ring 1: (88, 48)).

    Public because `mismatch` builds its smooth fields on the same disks, azimuths and radii
    the simulator draws its patterns on: one definition keeps the two detectors the same.
    """
    shape = geometry.model_shape
    n_blades = geometry.n_blades
    rows_in_map = geometry.model_rows_in_map[:, None] * np.ones((1, shape[1]), dtype=int)
    column = np.arange(shape[1])[None, :] * np.ones((shape[0], 1), dtype=int)
    disk_slot = column // 8  # 0..5 in DISKS order
    disk = np.asarray(DISKS)[disk_slot]
    in_disk = column % 8
    # The ROC nearest the beam is the bin nearest the map centre (x = 0) on both z sides.
    radial_index = np.where(disk < 0, 7 - in_disk, in_disk)  # 0 = innermost column
    blade = -n_blades + rows_in_map // 4
    panel = np.where(rows_in_map % 4 < 2, 2, 1)
    # Azimuth of the blade: the 17 (11) positive blades cover one half-disk, the negatives the
    # other.
    phi = np.pi * (np.abs(blade) - (n_blades + 1) / 2) / n_blades + np.where(blade < 0, np.pi, 0.0)
    # One module = one panel; blade slots per disk: 2 * n_blades + 1 (the cross's blade 0).
    module = (disk_slot * (2 * n_blades + 1) + (blade + n_blades)) * 2 + (panel - 1)
    return {
        "disk_slot": disk_slot,
        "disk": disk,
        "radial_index": radial_index,
        "blade": blade,
        "panel": panel,
        "phi": phi,
        "module": module,
        "rows_in_map": rows_in_map,
    }


def _n_modules(geometry: RingGeometry) -> int:
    """Module slots of the model space: 6 disks x (2 n_blades + 1) blade slots x 2 panels."""
    return 6 * (2 * geometry.n_blades + 1) * 2


def _random_roc_rows(
    rng: np.random.Generator, n_rows: int, shape: tuple[int, int] = RING2.model_shape
) -> np.ndarray:
    """Mask of `n_rows` random ROC rows (8 ROCs of one row of one module)."""
    mask = np.zeros(shape, dtype=bool)
    rows = rng.choice(shape[0], size=n_rows)
    disk_slots = rng.integers(0, 6, size=n_rows)
    for row, slot in zip(rows, disk_slots, strict=True):
        mask[row, 8 * slot : 8 * slot + 8] = True
    return mask


def _dead_map(
    rng: np.random.Generator, coords: dict[str, np.ndarray], geometry: RingGeometry = RING2
) -> np.ndarray:
    """Permanently dead ROCs: a few modules, ROC rows and single ROCs, and in Ring 2 the whole
    group FPix_BmO_D1_ROG2 (dead in Ring 2 since 2024F). Ring 1 has no dead group: in reality
    that group is the most frequent *transient* Ring 1 anomaly of 2024F (DOMAIN.md, 11), not a
    dead one, so the simulated Ring 1 keeps all 48 groups live."""
    shape = geometry.model_shape
    dead = np.zeros(shape, dtype=bool)
    if geometry is RING2:
        dead.ravel()[geometry.group_rocs_model[group_index(PERMANENTLY_DEAD_GROUP)]] = True
    modules = rng.choice(_n_modules(geometry), size=rng.integers(4, 8), replace=False)
    dead |= np.isin(coords["module"], modules)
    dead |= _random_roc_rows(rng, int(rng.integers(5, 10)), shape)
    dead.ravel()[rng.choice(geometry.n_rocs, size=rng.integers(1, 5), replace=False)] = True
    return dead


def _inefficiency(rng: np.random.Generator, geometry: RingGeometry = RING2) -> np.ndarray:
    """Factor < 1 of partly working ROC rows and nearly dead ROCs (they still count as live)."""
    factor = np.ones(geometry.model_shape)
    weak_rows = _random_roc_rows(rng, int(rng.integers(2, 6)), geometry.model_shape)
    factor[weak_rows] = np.repeat(rng.uniform(0.1, 0.4, size=weak_rows.sum() // 8), 8)
    nearly_dead = rng.choice(geometry.n_rocs, size=rng.integers(3, 9), replace=False)
    factor.ravel()[nearly_dead] = rng.uniform(0.03, 0.2, size=nearly_dead.size)
    return factor


def _gain_model(
    rng: np.random.Generator, coords: dict[str, np.ndarray], geometry: RingGeometry = RING2
) -> np.ndarray:
    """Per-ROC response without the radial gradient (before zeroing the dead ROCs)."""
    shape = geometry.model_shape
    disk_factor = rng.lognormal(0.0, 0.04, size=6)[coords["disk_slot"]]
    panel_factor = rng.lognormal(0.0, 0.02, size=(6, 2))[coords["disk_slot"], coords["panel"] - 1]
    module_factor = rng.lognormal(0.0, 0.06, size=_n_modules(geometry))[coords["module"]]
    # Each ROC column of a disk deviates a little from the smooth radial gradient.
    column_factor = rng.lognormal(0.0, 0.035, size=shape[1])[None, :]
    roc_factor = rng.lognormal(0.0, 0.12, size=shape)
    # Right-skewed tail: some ROCs are much brighter than their neighbours, a few weaker.
    bright = rng.random(shape) < 0.07
    roc_factor[bright] *= rng.uniform(1.3, 1.7, size=bright.sum())
    weak = rng.random(shape) < 0.005
    roc_factor[weak] *= rng.uniform(0.5, 0.75, size=weak.sum())
    return disk_factor * panel_factor * module_factor * column_factor * roc_factor


def _spatial_patterns(rng: np.random.Generator, coords: dict[str, np.ndarray]) -> np.ndarray:
    """(3, 136, 48) smooth shapes: nominal, steep + azimuthal modulation, z asymmetry."""
    radius = coords["radial_index"] / 7.0
    # Inner / outer column ratio ~1.7 nominally, ~2.4 in the steep pattern; per-disk spread.
    nominal_slope = np.log(rng.uniform(1.55, 1.85, size=6))[coords["disk_slot"]]
    steep_slope = np.log(rng.uniform(2.2, 2.6, size=6))[coords["disk_slot"]]
    phi0 = rng.uniform(0, 2 * np.pi)
    nominal = np.exp(-nominal_slope * radius)
    steep = np.exp(-steep_slope * radius) * (1 + 0.10 * np.cos(coords["phi"] - phi0))
    z_sign = np.sign(coords["disk"])
    z_asymmetric = nominal * (1 + 0.30 * z_sign * (0.5 + np.abs(coords["disk"]) / 6))
    return np.stack([nominal, steep, z_asymmetric])


DETECTOR_SEED = 2024  # the project's simulated detector: one "era" of dead ROCs and gains


def default_detector(geometry: RingGeometry = RING2) -> Detector:
    """The detector every simulation uses unless told otherwise (see `simulate`), of a ring."""
    return make_detector(DETECTOR_SEED, geometry)


def _dead_group_ids(dead: np.ndarray, geometry: RingGeometry) -> tuple[int, ...]:
    rocs = geometry.group_rocs_model
    return tuple(g for g in range(N_GROUPS) if dead.ravel()[rocs[g]].all())


def make_detector(seed: int | np.random.Generator, geometry: RingGeometry = RING2) -> Detector:
    """Draw the permanent state of one ring's detector (dead ROCs, gains, spatial patterns).

    The same seed gives the same detector; runs simulated from one detector share their dead
    ROCs and gains, as runs of one era do. An int seed draws Ring 2 from `default_rng(seed)`
    (as before Ring 1 existed) and Ring 1 from `default_rng([seed, 1])`: the two rings of one
    seed are independent draws, not the same numbers on two grids. Ring 1's occupancy per ROC
    is RING1_OCCUPANCY_RATIO times Ring 2's.
    """
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and geometry is RING1:
        rng = np.random.default_rng([int(seed), 1])
    else:
        rng = _as_rng(seed)
    coords = model_coordinates(geometry)
    dead = _dead_map(rng, coords, geometry)
    live = ~dead
    gain = _gain_model(rng, coords, geometry) * _inefficiency(rng, geometry)
    gain = np.where(live, gain / gain[live].mean(), 0.0)
    shapes = _spatial_patterns(rng, coords) * gain[None]
    shapes /= shapes[:, live].mean(axis=1)[:, None, None]
    dead_groups = _dead_group_ids(dead, geometry)
    for array in (gain, dead, shapes):
        array.setflags(write=False)
    ratio = RING1_OCCUPANCY_RATIO if geometry is RING1 else 1.0
    return Detector(
        gain_model=gain,
        dead_rocs=dead,
        patterns=shapes,
        clusters_per_pileup=NOMINAL_CLUSTERS_PER_PILEUP * ratio,
        dead_group_ids=dead_groups,
        geometry=geometry,
    )


def with_dead_groups(detector: Detector, names: Iterable[str]) -> Detector:
    """The same detector after power groups died: a new period (docs/domain.md, "Periods"),
    whose runs a model of the earlier period judges wrongly (the group is dead in every LS)."""
    unknown = sorted(set(names) - set(GROUP_NAMES))
    if unknown:
        raise OptionError(f"unknown power group(s) {unknown}; e.g. {GROUP_NAMES[0]}")
    dead = detector.dead_rocs.copy()
    for name in names:
        dead.ravel()[detector.geometry.group_rocs_model[GROUP_NAMES.index(name)]] = True
    live = ~dead
    gain = np.where(live, detector.gain_model, 0.0)
    shapes = np.where(live[None], detector.patterns, 0.0)
    shapes /= shapes[:, live].mean(axis=1)[:, None, None]
    dead_groups = _dead_group_ids(dead, detector.geometry)
    for array in (gain, dead, shapes):
        array.setflags(write=False)
    return Detector(
        gain_model=gain,
        dead_rocs=dead,
        patterns=shapes,
        clusters_per_pileup=detector.clusters_per_pileup,
        dead_group_ids=dead_groups,
        geometry=detector.geometry,
    )


# ================================================================================================
# Expected maps and sampling
# ================================================================================================


def pattern_weights(pileup: np.ndarray, z_asymmetry: float | np.ndarray = 0.12) -> np.ndarray:
    """(N, 3) mixture weights of the detector patterns; each row sums to 1.

    Higher pileup steepens the radial gradient (weight of pattern 1 grows from ~0.05 at
    pileup 20 to ~0.5 at 65); `z_asymmetry` (0-0.3) is the weight of the +z/-z pattern, which
    in reality follows the beam spot and changes from fill to fill.
    """
    pileup = np.atleast_1d(np.asarray(pileup, dtype=float))
    z_weight = np.clip(np.asarray(z_asymmetry, dtype=float), 0.0, 0.3)
    z_weight = np.broadcast_to(z_weight, pileup.shape)
    steep = np.clip(0.05 + 0.45 * (pileup - 20.0) / 45.0, 0.0, 0.6)
    return np.stack([1.0 - steep - z_weight, steep, z_weight], axis=1)


def expected_maps(
    detector: Detector,
    occupancy_per_roc: np.ndarray,
    pileup: np.ndarray | None = None,
    *,
    z_asymmetry: float | np.ndarray = 0.12,
) -> np.ndarray:
    """(N, 136, 48) float64 mean counts (Ring 1: (N, 88, 48)); the mean over live ROCs equals
    `occupancy_per_roc`.

    `pileup` sets the map shape (pattern weights); when None it is taken as
    occupancy_per_roc / detector.clusters_per_pileup, i.e. occupancy proportional to pileup.
    """
    occupancy = np.atleast_1d(np.asarray(occupancy_per_roc, dtype=float))
    if occupancy.ndim != 1 or not np.all(np.isfinite(occupancy)) or np.any(occupancy < 0):
        raise ValueError(
            f"occupancy_per_roc must be a 1-D array of finite values >= 0, got shape "
            f"{occupancy.shape} with min {np.min(occupancy) if occupancy.size else None}"
        )
    if pileup is None:
        pileup = occupancy / detector.clusters_per_pileup
    pileup = np.atleast_1d(np.asarray(pileup, dtype=float))
    if pileup.shape != occupancy.shape:
        raise ValueError(
            f"pileup must have the shape of occupancy_per_roc {occupancy.shape}, got {pileup.shape}"
        )
    weights = pattern_weights(pileup, z_asymmetry)
    flat = (weights @ detector.patterns.reshape(3, -1)) * occupancy[:, None]
    return flat.reshape(-1, *detector.geometry.model_shape)


def _sample_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of a float array, fast enough for 100k LS a minute on one core.

    numpy's exact Poisson costs ~55 ns a value, too slow for 6528 ROCs x 100k LS. Above 50
    expected counts a Cornish-Fisher expansion of the Poisson quantile applied to a standard
    normal draw is used (it matches the Poisson mean, variance, skewness and kurtosis; tail
    probabilities agree within a few percent up to 4 sigma, ~20% at 5 sigma for 50 counts,
    and are exact in practice at 400); below 50, numpy's exact sampler. The work is done in
    float32 blocks that stay in cache: memory traffic, not arithmetic, is the cost here.
    """
    lam = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
    counts = np.empty(lam.size, dtype=np.int32)
    block = min(_SAMPLING_BLOCK, max(lam.size, 1))
    z, sigma, correction, x = (np.empty(block, dtype=np.float32) for _ in range(4))
    for start in range(0, lam.size, block):
        stop = min(start + block, lam.size)
        n = stop - start
        lam_b, z_b, sigma_b, corr_b, x_b = lam[start:stop], z[:n], sigma[:n], correction[:n], x[:n]
        rng.standard_normal(out=z_b, dtype=np.float32)
        np.sqrt(np.maximum(lam_b, _POISSON_EXACT_BELOW, out=sigma_b), out=sigma_b)
        # x = lam + z (sigma + (1 - z^2) / (72 sigma)) - (1 - z^2) / 6 + 0.5, floored
        np.subtract(1.0, np.multiply(z_b, z_b, out=corr_b), out=corr_b)
        np.divide(corr_b, np.multiply(sigma_b, 72.0, out=x_b), out=x_b)
        x_b += sigma_b
        x_b *= z_b
        corr_b *= 1.0 / 6.0
        x_b -= corr_b
        x_b += lam_b
        x_b += 0.5
        np.maximum(np.floor(x_b, out=x_b), 0.0, out=x_b)
        counts[start:stop] = x_b
    small = lam < _POISSON_EXACT_BELOW
    if small.any():
        counts[small] = rng.poisson(lam[small].astype(np.float64))
    return counts.reshape(np.shape(expected))


def sample_maps(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts (int32, same shape) of expected maps; see `_sample_counts` for the method."""
    expected = np.asarray(expected)
    if expected.size and (not np.all(np.isfinite(expected)) or expected.min() < 0):
        raise ValueError("expected maps must be finite and >= 0")
    return _sample_counts(expected, _as_rng(rng))


def _as_ls_index(ls_index: Any, n_ls: int) -> np.ndarray:
    if isinstance(ls_index, slice):
        return np.arange(n_ls)[ls_index]
    index = np.atleast_1d(np.asarray(ls_index))
    if index.dtype.kind not in "iu" or index.ndim != 1:
        raise ValueError(f"ls_index must be an int, a slice or 1-D integers, got {ls_index!r}")
    if index.size and (index.min() < -n_ls or index.max() >= n_ls):
        raise ValueError(f"ls_index {index.tolist()} out of range for {n_ls} LS")
    return index


def _group_roc_subset(
    group_ids: Iterable[int],
    fraction: float,
    rng: np.random.Generator | None,
    geometry: RingGeometry = RING2,
) -> np.ndarray:
    """Flat model-space ROC indices of the groups, or a random `fraction` of each group's ROCs."""
    group_ids = [int(g) for g in np.atleast_1d(np.asarray(group_ids))]
    if any(g < 0 or g >= N_GROUPS for g in group_ids):
        raise ValueError(f"group ids must be in 0..{N_GROUPS - 1}, got {group_ids}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0 and rng is None:
        raise ValueError("a random generator `rng` is needed to kill a fraction of a group")
    parts = []
    for g in group_ids:
        rocs = geometry.group_rocs_model[g]
        if fraction < 1.0:
            n_killed = max(1, round(fraction * rocs.size))
            rocs = np.sort(rng.choice(rocs, size=n_killed, replace=False))
        parts.append(rocs)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)


def kill_groups(
    maps_model: np.ndarray,
    ls_index: int | slice | np.ndarray,
    group_ids: int | Iterable[int],
    fraction: float = 1.0,
    rng: np.random.Generator | None = None,
) -> int:
    """Zero in place the ROCs of power groups at the given LS of (N, 136, 48) maps (or Ring 1's
    (N, 88, 48): the ring is the maps' shape's).

    With `fraction` < 1 a random subset of that fraction of each group's ROCs is zeroed (the
    same subset at every LS, as a partial dropout stays the same while it lasts). Works on
    expected or sampled maps. Returns the number of ROCs newly killed: ROCs already zero at all
    the given LS (e.g. permanently dead) are not counted.
    """
    if not isinstance(maps_model, np.ndarray) or maps_model.ndim != 3:
        raise ValueError(f"Expected an (N, 136, 48) numpy array, got {type(maps_model).__name__}")
    geometries = [g for g in RINGS.values() if g.model_shape == maps_model.shape[1:]]
    if not geometries:
        raise ValueError(
            f"Expected maps of shape (N, 136, 48) or (N, 88, 48), got {maps_model.shape}"
        )
    ls = _as_ls_index(ls_index, maps_model.shape[0])
    rocs = _group_roc_subset(group_ids, fraction, rng, geometries[0])
    flat = maps_model.reshape(maps_model.shape[0], -1)  # a view: maps are contiguous here
    if not np.shares_memory(flat, maps_model):
        raise ValueError("maps_model must be C-contiguous to be modified in place")
    was_live = (flat[np.ix_(ls, rocs)] != 0).any(axis=0)
    flat[np.ix_(ls, rocs)] = 0
    return int(was_live.sum())


# ================================================================================================
# Fills, pileup and OMS columns
# ================================================================================================


@dataclass(frozen=True)
class Fill:
    """One LHC fill: pileup levelled at `pileup_start` for `level_ls`, then decaying."""

    number: int
    length_ls: int
    level_ls: int
    pileup_start: float
    pileup_end: float
    z_asymmetry: float

    def pileup_at(self, position_ls: np.ndarray) -> np.ndarray:
        """Smooth pileup at LS positions counted from the start of the fill."""
        t = np.asarray(position_ls, dtype=float)
        levelled = self.pileup_start * (1.0 - 0.02 * np.minimum(t, self.level_ls) / self.level_ls)
        decay_ls = max(self.length_ls - self.level_ls, 1)
        tau = decay_ls / np.log(0.98 * self.pileup_start / self.pileup_end)
        decay = np.exp(-np.maximum(t - self.level_ls, 0.0) / tau)
        return levelled * decay


def new_fill(number: int, rng: np.random.Generator, min_length_ls: int = 0) -> Fill:
    """A fill of 2500-6000 LS (at least `min_length_ls`), pileup ~63 -> ~20."""
    length = max(int(rng.integers(2500, 6001)), min_length_ls + 100)
    return Fill(
        number=number,
        length_ls=length,
        level_ls=int(rng.integers(400, min(1500, length // 2) + 1)),
        pileup_start=float(rng.uniform(61.5, 65.5)),
        pileup_end=float(rng.uniform(18.0, 24.0)),
        z_asymmetry=float(rng.uniform(0.0, 0.3)),
    )


@dataclass
class _DcsState:
    """Per-LS DCS flags and what they do to the data (all arrays of length n_ls)."""

    flags: dict[str, np.ndarray]
    collisions: np.ndarray  # beams present and colliding: pileup > 0
    recorded_fraction: np.ndarray  # recorded / delivered lumi (0 when CMS is not taking data)
    fpix_efficiency: np.ndarray  # 1, or a few percent while FPix HV is off
    nulls: dict[str, np.ndarray] = field(default_factory=dict)

    def good(self) -> np.ndarray:
        """All 8 DCS flags true and none null: the LS the model may flag."""
        good = np.ones_like(self.collisions)
        for name in DCS_FLAGS:
            good &= self.flags[name]
            if name in self.nulls:
                good &= ~self.nulls[name]
        return good


def _dcs_state(n_ls: int, rng: np.random.Generator, *, with_gaps: bool) -> _DcsState:
    """DCS flags: off at run start and end, short gaps in between (era runs), a few nulls."""
    flags = {name: np.ones(n_ls, dtype=bool) for name in DCS_FLAGS}
    collisions = np.ones(n_ls, dtype=bool)
    recorded_fraction = rng.normal(0.955, 0.006, size=n_ls).clip(0.9, 1.0)
    fpix_efficiency = np.ones(n_ls)

    # Run start: sometimes no stable beams yet (no collisions), then tracker HV ramps up.
    n_unstable = min(int(rng.integers(0, 4)), n_ls)
    flags["beams_stable"][:n_unstable] = False
    collisions[:n_unstable] = False
    for name in DETECTOR_READY_FLAGS:
        flags[name][: min(n_unstable + int(rng.integers(2, 6)), n_ls)] = False
    # Run end: CMS stops taking data a few LS before the run is closed.
    n_inactive = min(int(rng.integers(2, 5)), n_ls)
    flags["cms_active"][n_ls - n_inactive :] = False
    recorded_fraction[n_ls - n_inactive :] = 0.0

    if with_gaps:
        for _ in range(rng.poisson(n_ls / 1500)):
            length = int(rng.integers(1, 7))
            start = int(rng.integers(0, max(n_ls - length, 1)))
            names = rng.choice((*DETECTOR_READY_FLAGS, "cms_active"), size=rng.integers(1, 3))
            for name in set(names.tolist()):
                flags[name][start : start + length] = False
                if name == "cms_active":
                    recorded_fraction[start : start + length] = 0.0
        # Dead time: now and then CMS records only part of an LS.
        dead_time = rng.random(n_ls) < 1e-3
        recorded_fraction[dead_time] *= rng.uniform(0.02, 0.5, size=dead_time.sum())

    hv_off = ~flags["fpix_ready"]
    fpix_efficiency[hv_off] = rng.uniform(*HV_OFF_EFFICIENCY, size=hv_off.sum())
    state = _DcsState(flags, collisions, recorded_fraction, fpix_efficiency)
    if with_gaps:
        state.nulls = _null_positions(n_ls, rng)
    return state


def _null_positions(n_ls: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A few null OMS values per run, as OMS sometimes lacks an attribute for an LS."""
    nullable = (
        "pileup",
        "delivered_lumi_per_lumisection",
        "recorded_lumi_per_lumisection",
        "physics_flag",
        "prescale_name",
        *DCS_FLAGS,
    )
    nulls: dict[str, np.ndarray] = {}
    for _ in range(rng.poisson(0.6)):
        name = str(rng.choice(nullable))
        start = int(rng.integers(0, n_ls))
        mask = nulls.setdefault(name, np.zeros(n_ls, dtype=bool))
        mask[start : start + int(rng.integers(1, 4))] = True
    return nulls


def _prescales(pileup: np.ndarray, cms_active: np.ndarray) -> tuple[np.ndarray, list[str]]:
    thresholds = np.array([c[0] for c in _PRESCALE_COLUMNS])
    which = np.argmax(pileup[:, None] >= thresholds[None, :], axis=1)
    index = np.array([c[1] for c in _PRESCALE_COLUMNS])[which]
    names = np.array([c[2] for c in _PRESCALE_COLUMNS], dtype=object)[which]
    index = np.where(cms_active, index, -1)
    names = np.where(cms_active, names, "")
    return index, names.tolist()


def _oms_columns(
    run: int,
    fill: Fill,
    pileup: np.ndarray,
    fill_pileup: np.ndarray,
    delivered_fraction: np.ndarray,
    dcs: _DcsState,
) -> dict[str, list]:
    """OMS columns in the real JSON layout (Python lists, None for nulls)."""
    n_ls = pileup.size
    delivered = pileup * DELIVERED_LUMI_PER_PILEUP * delivered_fraction
    recorded = delivered * dcs.recorded_fraction
    # The prescale column follows the fill's pileup, also before collisions are declared.
    prescale_index, prescale_name = _prescales(fill_pileup, dcs.flags["cms_active"])
    columns: dict[str, list] = {
        "delivered_lumi_per_lumisection": np.round(delivered, 6).tolist(),
        "recorded_lumi_per_lumisection": np.round(recorded, 6).tolist(),
        "pileup": np.round(pileup, 6).tolist(),
        "physics_flag": (dcs.flags["beams_stable"] & dcs.collisions).tolist(),
        "prescale_index": prescale_index.tolist(),
        "prescale_name": prescale_name,
        **{name: dcs.flags[name].tolist() for name in DCS_FLAGS},
        "fill_number": [fill.number] * n_ls,
        "run_number": [run] * n_ls,
        "lumisection_number": list(range(1, n_ls + 1)),
    }
    for name, mask in dcs.nulls.items():
        column = columns[name]
        for i in np.flatnonzero(mask):
            column[i] = None
    return {key: columns[key] for key in OMS_KEYS}


# ================================================================================================
# Anomalies
# ================================================================================================


@dataclass(frozen=True)
class _Anomaly:
    kind: str
    first_ls_index: int  # 0-based position in the run
    n_ls: int
    group_ids: tuple[int, ...] = ()
    rocs: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.intp))
    factor: float = 0.0  # expected counts of `rocs` are multiplied by this


def _live_groups(detector: Detector, group_ids: Iterable[int]) -> list[int]:
    dead = set(detector.dead_group_ids)
    return [int(g) for g in group_ids if int(g) not in dead]


def _draw_groups(kind: str, detector: Detector, rng: np.random.Generator) -> tuple[int, ...]:
    """Power groups hit by one anomaly of `kind` (never only permanently dead ones)."""
    if kind == "Quarter":
        return tuple(int(g) for g in QUARTER_GROUPS[rng.integers(0, 4)])
    if kind in ("Multi-Disk", "Partial"):
        n_disks = int(rng.integers(2, 4)) if kind == "Multi-Disk" else int(rng.integers(1, 3))
        while True:
            candidate = _live_groups(detector, MULTIDISK_CANDIDATES[rng.integers(0, 16)])
            if len(candidate) >= n_disks:
                return tuple(sorted(rng.choice(candidate, size=n_disks, replace=False).tolist()))
            if kind == "Multi-Disk" and len(candidate) >= 2:
                return tuple(candidate)
    # Single-Disk and Hot-ROC: any live group.
    return (int(rng.choice(_live_groups(detector, range(N_GROUPS)))),)


def _make_anomaly(
    kind: str, first: int, n_ls: int, detector: Detector, rng: np.random.Generator
) -> _Anomaly:
    if kind == "Missing":
        return _Anomaly(kind, first, n_ls)
    groups = _draw_groups(kind, detector, rng)
    geometry = detector.geometry
    if kind == "Partial":
        rocs = _group_roc_subset(groups, float(rng.uniform(0.3, 0.9)), rng, geometry)
        return _Anomaly(kind, first, n_ls, groups, rocs, 0.0)
    if kind == "Hot-ROC":
        live_rocs = np.flatnonzero(detector.live_rocs.ravel())
        rocs = np.sort(rng.choice(live_rocs, size=int(rng.integers(1, 6)), replace=False))
        groups = tuple(sorted(set(geometry.group_id_flat[rocs].tolist())))
        return _Anomaly(kind, first, n_ls, groups, rocs, float(rng.uniform(5.0, 20.0)))
    rocs = _group_roc_subset(groups, 1.0, None, geometry)
    return _Anomaly(kind, first, n_ls, groups, rocs, 0.0)


def _anomaly_duration(kind: str, rng: np.random.Generator) -> int:
    if kind == "Missing":
        return int(rng.integers(1, 6))
    # Mostly short, sometimes up to 16 LS, as real power-group dropouts.
    return int(min(MAX_ANOMALY_LS, 1 + np.floor(rng.exponential(3.5))))


def _place(
    n_ls: int, candidates_ok: np.ndarray, taken: np.ndarray, rng: np.random.Generator
) -> int | None:
    """A random first LS index where `n_ls` consecutive LS are allowed and free (or None)."""
    n_total = candidates_ok.size
    if n_ls > n_total:
        return None
    window_ok = np.lib.stride_tricks.sliding_window_view(candidates_ok & ~taken, n_ls).all(axis=1)
    starts = np.flatnonzero(window_ok)
    return int(rng.choice(starts)) if starts.size else None


def _era_anomalies(
    n_ls: int,
    detector: Detector,
    dcs_good: np.ndarray,
    rng: np.random.Generator,
    anomaly_rate: float | None,
) -> list[_Anomaly]:
    """A few anomalies of every kind, at DCS-good LS, never overlapping (1 LS apart at least)."""
    n_anomalies = (
        int(rng.integers(2, 5)) if anomaly_rate is None else int(rng.poisson(anomaly_rate * n_ls))
    )
    kinds = rng.choice(ANOMALY_KINDS, size=n_anomalies, p=_ERA_KIND_PROBABILITIES)
    taken = np.zeros(n_ls, dtype=bool)
    anomalies = []
    for kind in kinds.tolist():
        duration = _anomaly_duration(kind, rng)
        first = _place(duration, dcs_good, taken, rng)
        if first is None:
            continue
        taken[max(first - 1, 0) : first + duration + 1] = True
        anomalies.append(_make_anomaly(kind, first, duration, detector, rng))
    return sorted(anomalies, key=lambda a: a.first_ls_index)


def _demo_anomalies(
    n_ls: int, detector: Detector, dcs_good: np.ndarray, rng: np.random.Generator
) -> list[_Anomaly]:
    """One Multi-Disk LS (a ROG dead on 3 disks) and a 3-LS Single-Disk, mid-run."""
    middle = np.zeros(n_ls, dtype=bool)
    middle[n_ls // 4 : 3 * n_ls // 4] = True
    allowed = dcs_good & middle
    taken = np.zeros(n_ls, dtype=bool)
    anomalies = []
    for kind, duration in (("Multi-Disk", 1), ("Single-Disk", 3)):
        first = _place(duration, allowed, taken, rng)
        if first is None:
            raise OptionError(f"a demo run of {n_ls} LS is too short for its anomalies")
        taken[max(first - 10, 0) : first + duration + 10] = True
        if kind == "Multi-Disk":
            full = [c for c in MULTIDISK_CANDIDATES if len(_live_groups(detector, c)) == 3]
            groups = tuple(int(g) for g in full[rng.integers(0, len(full))])
            rocs = _group_roc_subset(groups, 1.0, None, detector.geometry)
            anomaly = _Anomaly(kind, first, 1, groups, rocs)
        else:
            anomaly = _make_anomaly(kind, first, duration, detector, rng)
        anomalies.append(anomaly)
    return sorted(anomalies, key=lambda a: a.first_ls_index)


# Anomalies a readout group's power causes: they silence the group in both rings. Partial
# dropouts and hot ROCs are module-level: they stay in the ring they were drawn for.
_BOTH_RING_KINDS = ("Multi-Disk", "Quarter", "Single-Disk", "Missing")


_RING_LOCAL_KINDS = ("Partial", "Hot-ROC")


def _companion_anomalies(
    injected: list[_Anomaly],
    companion: Detector,
    dcs_good: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[_Anomaly], list[_Anomaly]]:
    """What the companion ring sees: (shared, own).

    shared: the primary ring's power-group outages with the companion's ROCs, the same groups
    and LS ("Missing" LS are absent from both files through `present`). own: as many
    module-level anomalies (Partial, Hot-ROC) of the companion's own as the primary ring has,
    of the same kinds, at other DCS-good LS (never next to another anomaly): each ring then has
    losses the other ring does not share, which a joint decision must not take for a group
    outage. Drawn from `rng`, the companion's generator only.
    """
    shared = []
    taken = np.zeros(dcs_good.size, dtype=bool)
    for anomaly in injected:
        first = anomaly.first_ls_index
        taken[max(first - 1, 0) : first + anomaly.n_ls + 1] = True
        if anomaly.kind in _BOTH_RING_KINDS and anomaly.kind != "Missing":
            rocs = _group_roc_subset(anomaly.group_ids, 1.0, None, companion.geometry)
            shared.append(_Anomaly(anomaly.kind, first, anomaly.n_ls, anomaly.group_ids, rocs))
    own = []
    for kind in [a.kind for a in injected if a.kind in _RING_LOCAL_KINDS]:
        duration = _anomaly_duration(kind, rng)
        first = _place(duration, dcs_good, taken, rng)
        if first is None:
            continue
        taken[max(first - 1, 0) : first + duration + 1] = True
        own.append(_make_anomaly(kind, first, duration, companion, rng))
    return shared, own


def _truth_rows(
    run: int,
    anomalies: list[_Anomaly],
    detector: Detector,
    companion: Detector | None = None,
) -> list[dict]:
    """One row per anomalous LS; with a `companion` ring, n_dead_rocs counts both rings' newly
    dead ROCs and `rings` says which ring(s) the anomaly silences ("1;2", or the primary's)."""
    live = detector.live_rocs.ravel()
    rows = []
    for anomaly in anomalies:
        names = ";".join(GROUP_NAMES[g] for g in anomaly.group_ids)
        n_dead = int(live[anomaly.rocs].sum()) if anomaly.factor == 0.0 else 0
        extra = {}
        if companion is not None:
            both = anomaly.kind in _BOTH_RING_KINDS
            rings = sorted({detector.geometry.ring, companion.geometry.ring})
            extra["rings"] = ";".join(map(str, rings)) if both else str(detector.geometry.ring)
            if both and anomaly.group_ids:
                companion_rocs = _group_roc_subset(anomaly.group_ids, 1.0, None, companion.geometry)
                n_dead += int(companion.live_rocs.ravel()[companion_rocs].sum())
        for i in range(anomaly.first_ls_index, anomaly.first_ls_index + anomaly.n_ls):
            rows.append(
                {
                    "run": run,
                    "ls": i + 1,
                    "anomaly_type": anomaly.kind,
                    "groups": names,
                    "n_dead_rocs": n_dead,
                    **extra,
                }
            )
    return rows


# ================================================================================================
# One run
# ================================================================================================


@dataclass(eq=False)
class SimulatedRun:
    """One simulated run.

    Attributes:
        run: run number.
        ls: (N,) LS numbers present in the parquet (LS "missing" from DIALS are not here).
        maps: (N, 140, 56) int32 cluster counts in map space (cross included, always 0).
        oms: OMS columns (OMS_KEYS) covering every LS 1..n_ls of the run, nulls as None.
        truth: one row per anomalous (run, ls): TRUTH_COLUMNS.
        pileup: (N,) true pileup of the present LS.
        occupancy_per_roc: (N,) mean expected clusters per live ROC of the present LS.
        dcs_good: (N,) all DCS flags true (and not null) at the present LS.
        fill: the fill the run belongs to.
        ring: the ring of `maps` (2 unless simulated on a Ring 1 detector).
        companion_maps: the other ring's maps of the same LS (`simulate_run(companion=...)`),
            e.g. Ring 1 next to Ring 2: the same pileup, DCS and power-group outages; else None.
    """

    run: int
    ls: np.ndarray
    maps: np.ndarray
    oms: dict[str, list]
    truth: pd.DataFrame
    pileup: np.ndarray
    occupancy_per_roc: np.ndarray
    dcs_good: np.ndarray
    fill: Fill
    ring: int = 2
    companion_maps: np.ndarray | None = None

    def maps_of(self, ring: int) -> np.ndarray:
        """The maps of ring 1 or 2 (the run's own or its companion's)."""
        if ring == self.ring:
            return self.maps
        if self.companion_maps is None:
            raise ValueError(f"run {self.run} was simulated for Ring {self.ring} only")
        return self.companion_maps


def _check_run_arguments(run: int, n_ls: int, anomalies: str) -> None:
    checked_integer(run, "run", minimum=1)
    checked_integer(n_ls, "n_ls", minimum=1)
    if anomalies not in ("era", "demo", "none"):
        raise ValueError(f"anomalies must be 'era', 'demo' or 'none', got {anomalies!r}")


def simulate_run(
    run: int,
    n_ls: int,
    detector: Detector,
    rng: np.random.Generator,
    *,
    anomalies: str = "era",
    anomaly_rate: float | None = None,
    fill: Fill | None = None,
    fill_position_ls: int = 0,
    clusters_per_pileup: float | None = None,
    companion: tuple[Detector, np.random.Generator] | None = None,
) -> SimulatedRun:
    """Simulate one run of `n_ls` LS: maps, OMS columns and truth.

    anomalies: "era" (2-4 anomalies of every kind, or Poisson(anomaly_rate * n_ls)), "demo"
    (one Multi-Disk LS on 3 disks and a 3-LS Single-Disk, DCS gaps/nulls/missing LS off) or
    "none" (clean training data). The run starts `fill_position_ls` LS into `fill` (a new fill
    when None). `clusters_per_pileup` defaults to a per-run draw around the detector's value.
    Anomalies are placed at DCS-good LS only, so every truth row is one the model may flag.

    `companion` (the other ring's detector and its own generator) also simulates that ring's
    maps of the same LS: the same pileup, DCS state, per-LS luminosity noise and missing LS,
    occupancy scaled by the two detectors' clusters_per_pileup, and the same power-group
    outages (Multi-Disk, Quarter, Single-Disk: a readout group powers both rings); Partial and
    Hot-ROC stay in `detector`'s ring, and the companion gets as many of its own elsewhere
    (`_companion_anomalies`). Everything of `detector`'s ring is drawn from `rng` exactly as
    without a companion (the companion draws only from its own generator), so its maps are the
    same numbers either way; the truth gains `rings` (which ring(s) each anomaly silences:
    "1;2", or one ring) and its n_dead_rocs counts both rings' dead ROCs.
    """
    _check_run_arguments(run, n_ls, anomalies)
    if anomaly_rate is not None and anomaly_rate < 0:
        raise OptionError(f"anomaly_rate must be >= 0, got {anomaly_rate}")
    if fill is None:
        fill = new_fill(1, rng, min_length_ls=n_ls)
    if clusters_per_pileup is None:
        clusters_per_pileup = detector.clusters_per_pileup * float(rng.normal(1.0, 0.1))
        # 9-17 for Ring 2; the same relative bounds for Ring 1's higher occupancy.
        scale = detector.clusters_per_pileup / NOMINAL_CLUSTERS_PER_PILEUP
        clusters_per_pileup = float(np.clip(clusters_per_pileup, 9.0 * scale, 17.0 * scale))

    dcs = _dcs_state(n_ls, rng, with_gaps=anomalies != "demo")
    fill_pileup = fill.pileup_at(fill_position_ls + np.arange(n_ls))
    pileup = np.where(dcs.collisions, fill_pileup * rng.normal(1.0, 0.006, n_ls), 0.0)
    delivered_fraction = np.ones(n_ls)
    delivered_fraction[-1] = rng.uniform(0.3, 0.9)  # the run ends inside its last LS
    occupancy = (
        clusters_per_pileup
        * pileup
        * delivered_fraction
        * dcs.recorded_fraction
        / 0.955
        * dcs.fpix_efficiency
        * rng.normal(1.0, 0.012, n_ls)
    ).clip(0.0) + NOISE_CLUSTERS_PER_ROC
    z_asymmetry = np.clip(fill.z_asymmetry + rng.normal(0.0, 0.01, n_ls), 0.0, 0.3)

    dcs_good = dcs.good()
    if anomalies == "era":
        injected = _era_anomalies(n_ls, detector, dcs_good, rng, anomaly_rate)
    elif anomalies == "demo":
        injected = _demo_anomalies(n_ls, detector, dcs_good, rng)
    else:
        injected = []

    present = np.ones(n_ls, dtype=bool)
    for anomaly in injected:
        if anomaly.kind == "Missing":
            present[anomaly.first_ls_index : anomaly.first_ls_index + anomaly.n_ls] = False
    present_index = np.flatnonzero(present)
    maps = _generate_maps(
        detector,
        occupancy[present_index],
        pileup[present_index],
        z_asymmetry[present_index],
        _multipliers_for_present(injected, present),
        rng,
    )
    oms = _oms_columns(run, fill, pileup, fill_pileup, delivered_fraction, dcs)
    columns = list(TRUTH_COLUMNS)
    companion_maps = None
    if companion is None:
        truth_rows = _truth_rows(run, injected, detector)
    else:
        other, other_rng = companion
        columns.append("rings")
        shared, own = _companion_anomalies(injected, other, dcs_good, other_rng)
        ratio = other.clusters_per_pileup / detector.clusters_per_pileup
        noise = NOISE_CLUSTERS_PER_ROC
        other_occupancy = (occupancy[present_index] - noise) * ratio + noise
        companion_maps = _generate_maps(
            other,
            other_occupancy,
            pileup[present_index],
            z_asymmetry[present_index],
            _multipliers_for_present(shared + own, present),
            other_rng,
        )
        own_rows = [
            {**row, "rings": str(other.geometry.ring)} for row in _truth_rows(run, own, other)
        ]
        truth_rows = sorted(
            _truth_rows(run, injected, detector, other) + own_rows, key=lambda row: row["ls"]
        )
    truth = pd.DataFrame(truth_rows, columns=columns)
    return SimulatedRun(
        run=int(run),
        ls=present_index + 1,
        maps=maps,
        oms=oms,
        truth=truth.astype({"run": "int64", "ls": "int64", "n_dead_rocs": "int64"}),
        pileup=pileup[present_index],
        occupancy_per_roc=occupancy[present_index],
        dcs_good=dcs_good[present_index],
        fill=fill,
        ring=detector.geometry.ring,
        companion_maps=companion_maps,
    )


def _multipliers_for_present(
    injected: list[_Anomaly], present: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(row indices among present LS, flat ROC indices, factor) of every map anomaly."""
    row_of_ls = np.cumsum(present) - 1
    out = []
    for anomaly in injected:
        if anomaly.kind == "Missing":
            continue
        ls = np.arange(anomaly.first_ls_index, anomaly.first_ls_index + anomaly.n_ls)
        out.append((row_of_ls[ls], anomaly.rocs, anomaly.factor))
    return out


def _generate_maps(
    detector: Detector,
    occupancy: np.ndarray,
    pileup: np.ndarray,
    z_asymmetry: np.ndarray,
    multipliers: list[tuple[np.ndarray, np.ndarray, float]],
    rng: np.random.Generator,
) -> np.ndarray:
    """(N, 140, 56) int32 counts (Ring 1: (N, 92, 56)), generated in chunks of LS (vectorised
    inside a chunk)."""
    geometry = detector.geometry
    n_ls = occupancy.size
    patterns = detector.patterns.reshape(3, -1).astype(np.float32)
    weights = pattern_weights(pileup, z_asymmetry).astype(np.float32)
    weights *= occupancy.astype(np.float32)[:, None]
    maps = np.empty((n_ls, *geometry.map_shape), dtype=np.int32)
    for start in range(0, n_ls, _CHUNK_LS):
        stop = min(start + _CHUNK_LS, n_ls)
        expected = weights[start:stop] @ patterns  # (chunk, 6528) float32
        for rows, rocs, factor in multipliers:
            local = rows[(rows >= start) & (rows < stop)] - start
            if local.size:
                expected[np.ix_(local, rocs)] *= factor
        counts = _sample_counts(expected, rng).reshape(-1, *geometry.model_shape)
        maps[start:stop] = insert_cross(counts, geometry=geometry)
    return maps


# ================================================================================================
# Many runs, files
# ================================================================================================


def parquet_name(era: str, geometry: RingGeometry = RING2) -> str:
    """DIALS file name convention for a ring's ME (Ring 2 by default) of the ZeroBias
    PromptReco dataset."""
    return f"ZeroBias-{era}-PromptReco-v1-DQMIO-{geometry.me.replace('/', '-')}.parquet"


RING_CHOICES = ("1", "2", "both")  # `simulate --ring`


def simulated_rings(ring: int | str) -> tuple[RingGeometry, ...]:
    """The rings `simulate(ring=...)` writes: (RING2,), (RING1,) or (RING1, RING2) for "both"."""
    text = str(ring).strip().lower()
    if text == "both":
        return (RING1, RING2)
    if text not in ("1", "2"):
        raise OptionError(f"ring must be 1, 2 or 'both', got {ring!r}")
    return (RINGS[int(text)],)


def output_paths(
    out_dir: str | Path, era: str = "Run2025Z", ring: int | str = 2
) -> dict[str, Path]:
    """The files `simulate` writes into `out_dir`: keys "parquet", "oms" and "truth".

    With `ring="both"` the two parquets are "parquet_ring1" and "parquet_ring2" (no "parquet"):
    a caller cannot take one ring's file for the pair by mistake. Public so that a caller can
    find a simulation already on disk without simulating again.
    """
    _check_era(era)
    out_dir = Path(out_dir)
    rings = simulated_rings(ring)
    if len(rings) == 1:
        parquets = {"parquet": out_dir / parquet_name(era, rings[0])}
    else:
        parquets = {f"parquet_ring{g.ring}": out_dir / parquet_name(era, g) for g in rings}
    return {
        **parquets,
        "oms": out_dir / f"omsdata_{era}-v1.json",
        "truth": out_dir / "truth.csv",
    }


def _check_era(era: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_]+", era or ""):
        raise OptionError(f"era must be letters, digits or '_' (e.g. 'Run2025Z'), got {era!r}")


def _iter_runs(
    runs: int,
    seed: int,
    *,
    ls_per_run: int | None,
    first_run: int,
    anomaly_rate: float | None,
    clean: bool,
    scenario: str,
    detector: Detector,
    companion: Detector | None = None,
) -> Iterator[SimulatedRun]:
    """Simulate runs one by one (so callers can stream them to disk); fills span runs.

    The schedule and each run draw from the streams they always had (children 1 and 2.. of
    `seed`); a `companion` ring draws from children of the otherwise unused child 0, so adding
    Ring 1 moves none of Ring 2's numbers.
    """
    seeds = np.random.SeedSequence(seed).spawn(runs + 2)
    companion_seeds = seeds[0].spawn(runs) if companion is not None else []
    schedule_rng = np.random.default_rng(seeds[1])
    anomalies = "none" if clean else ("demo" if scenario == "demo" else "era")
    fill: Fill | None = None
    position = 0
    run = first_run
    for i in range(runs):
        if ls_per_run is not None:
            n_ls = ls_per_run
        elif scenario == "demo":
            n_ls = 750
        else:
            n_ls = int(schedule_rng.integers(400, 1201))
        if fill is None or position + n_ls > fill.length_ls or scenario == "demo":
            number = 10000 if fill is None else fill.number + int(schedule_rng.integers(1, 4))
            fill = new_fill(number, schedule_rng, min_length_ls=n_ls)
            position = int(schedule_rng.integers(0, 30))
        yield simulate_run(
            run,
            n_ls,
            detector,
            np.random.default_rng(seeds[2 + i]),
            anomalies=anomalies,
            anomaly_rate=anomaly_rate,
            fill=fill,
            fill_position_ls=position,
            companion=None
            if companion is None
            else (companion, np.random.default_rng(companion_seeds[i])),
        )
        position += n_ls + int(schedule_rng.integers(3, 30))  # runs of a fill are a few LS apart
        run += int(schedule_rng.integers(1, 4))


def simulate(
    out_dir: str | Path,
    runs: int = 5,
    seed: int = 0,
    *,
    ls_per_run: int | None = None,
    first_run: int = 390000,
    anomaly_rate: float | None = None,
    clean: bool = False,
    era: str = "Run2025Z",
    scenario: str = "era",
    detector_seed: int = DETECTOR_SEED,
    value_type: str = DEFAULT_VALUE_TYPE,
    dead_groups: Iterable[str] = (),
    ring: int | str = 2,
) -> dict[str, Path]:
    """Write the DIALS parquet(s), OMS JSON and truth.csv of simulated runs into `out_dir`.

    All runs come from one detector (`detector_seed`, by default the project's simulated
    detector, `default_detector()`), as the runs of one era do: a model trained on one
    simulation can judge the runs of another with a different `seed`.

    Returns their paths (`output_paths`). Runs are generated and written one at a time, in row
    groups of ROW_GROUP_LS LS, so memory is bounded by the longest run. `dead_groups`: power
    groups dead in these runs on top of the detector's own (a later period of the same
    detector, `with_dead_groups`; in both rings with `ring="both"`). The parquet uses zstd
    level 1: compression dominates the writing time and level 1 keeps 100k LS within a minute
    while shrinking the file ~3x. `data` holds list<list<double>> as files saved from cmsdials
    do (`value_type="int32"`: integer lists).

    `ring`: 2 (the default: exactly the files of before Ring 1 existed), 1 (the Ring 1 ME's
    parquet, its truth with a `rings` column of "1") or "both": the two MEs of the same LS
    (runs, LS, pileup, DCS, missing LS) with the same power-group outages in both rings, one
    OMS JSON and one truth.csv whose last column `rings` says which ring(s) each anomaly
    silences ("1;2" for group outages and missing LS; "2" for Ring 2's Partial and Hot-ROC
    anomalies, "1" for as many of Ring 1's own, at other LS) and whose n_dead_rocs counts both
    rings. The Ring 2 parquet and the OMS JSON of "both" are byte-identical to `ring=2`'s of
    the same arguments, and its truth holds the same Ring 2 rows.
    """

    _check_era(era)
    rings = simulated_rings(ring)
    if scenario not in ("era", "demo"):
        raise OptionError(f"scenario must be 'era' or 'demo', got {scenario!r}")
    checked_integer(runs, "runs", minimum=1)
    if ls_per_run is not None:
        checked_integer(ls_per_run, "ls_per_run", minimum=1)
    if anomaly_rate is not None and anomaly_rate < 0:
        raise OptionError(f"anomaly_rate must be >= 0, got {anomaly_rate}")
    checked_integer(first_run, "first_run", minimum=1)
    if scenario == "demo":
        if clean:
            raise OptionError("--clean and --scenario demo contradict each other: pick one")
        if runs != 1:
            logger.debug("demo scenario: simulating exactly one run (ignoring runs=%d)", runs)
        runs = 1

    def detector_of(geometry: RingGeometry) -> Detector:
        detector = make_detector(detector_seed, geometry)
        return with_dead_groups(detector, dead_groups) if dead_groups else detector

    # The primary ring draws the run (Ring 2 whenever it is written, so its numbers never
    # move); Ring 1 is the companion of "both".
    primary = detector_of(rings[-1])
    companion = detector_of(RING1) if len(rings) == 2 else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir, era, ring)
    parquet_paths = {
        g.ring: paths["parquet"] if len(rings) == 1 else paths[f"parquet_ring{g.ring}"]
        for g in rings
    }
    oms: dict[str, list] = {key: [] for key in OMS_KEYS}
    truth_parts = []
    with contextlib.ExitStack() as stack:
        writers = {}
        for number, path in parquet_paths.items():
            partial = stack.enter_context(replacing(path))
            writers[number] = stack.enter_context(dials_parquet_writer(partial, value_type))
        for sim in _iter_runs(
            runs,
            seed,
            ls_per_run=ls_per_run,
            first_run=first_run,
            anomaly_rate=anomaly_rate,
            clean=clean,
            scenario=scenario,
            detector=primary,
            companion=companion,
        ):
            for number, writer in writers.items():
                maps = sim.maps_of(number)
                for start in range(0, sim.ls.size, ROW_GROUP_LS):
                    rows = slice(start, start + ROW_GROUP_LS)
                    writer.write_table(
                        dials_table(
                            maps[rows], sim.run, sim.ls[rows], era, value_type, RINGS[number]
                        )
                    )
            for key in OMS_KEYS:
                oms[key].extend(sim.oms[key])
            truth_parts.append(sim.truth)
            del sim
    # json.dumps (one shot) uses the C encoder; json.dump streams through the slow Python one.
    write_text(paths["oms"], json.dumps(oms))
    truth = pd.concat(truth_parts, ignore_index=True)
    if rings == (RING1,):
        truth["rings"] = "1"
    write_atomically(paths["truth"], lambda partial: truth.to_csv(partial, index=False))
    counts = truth.groupby("anomaly_type").size().to_dict()
    logger.info(
        "Simulated %d LS in %d run(s) of %s; anomalous LS by type: %s",
        len(oms["run_number"]),
        len(truth_parts),
        " and ".join(g.name for g in rings),
        counts or "none",
    )
    return paths
