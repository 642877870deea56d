"""Maps that are *not* the model's own: smooth misfit, overdispersion, a refitted NMF.

No held-out real data exist, and every map the simulator or the real components make is an
exact mixture of what the model learned, so a detection study on them measures the rule in the
one situation that never happens. Real maps differ from a 5-component model in two ways, and
this module makes both on purpose:

- *model mismatch*: the detector's shape drifts during a period (beam spot, gains, radial
  gradient), so a real map is the model's shape times a smooth field. `smooth_fields` draws
  such fields, one per LS, with a chosen peak deviation (10-30 %); `refit_pair` builds a
  second, equally good NMF of the same data, whose maps a model trained on the first fit sees;
- *overdispersion*: per-ROC, per-LS variations beyond Poisson (5-10 %): `overdispersed`.

The fields are built from the detector's own coordinates (azimuth of the blade, radial
position inside the disk, disk), because that is how real misfits look: a beam-spot shift
lowers the same azimuth on every disk, which is exactly the shape of a Multi-Disk anomaly,
only shallower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlserver_model.geometry import DISKS, N_ROCS, RingGeometry
from mlserver_model.nmf2d import BatchedNNLS

from ..sim.simulate import model_coordinates

# Expected healthy maps (N, 6528) for given mean occupancies per live ROC (N,).
MapMaker = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Per ROC of the model space (flat, 6528): disk (-3..3 without 0), azimuth of the blade (rad),
# radial position inside the disk (0 = innermost column, 1 = outermost), disk slot (0..5).
_COORDINATES = model_coordinates()
ROC_DISK = _COORDINATES["disk"].ravel()
ROC_PHI_RAD = _COORDINATES["phi"].ravel()
ROC_RADIUS = _COORDINATES["radial_index"].ravel() / 7.0
_DISK_SLOT = _COORDINATES["disk_slot"].ravel()


@dataclass(frozen=True, eq=False)
class RocCoordinates:
    """Per-ROC places of one model space (one ring, or both rings side by side), flat.

    The smooth fields are functions of these, so a field drawn on both rings at once is the
    same beam-spot shift or bump on both (a real misfit does not know the rings apart).
    """

    disk: np.ndarray  # -3..3 without 0
    phi: np.ndarray  # azimuth of the blade (rad)
    radius: np.ndarray  # 0 = innermost column, 1 = outermost
    disk_slot: np.ndarray  # 0..5

    @classmethod
    def join(cls, parts: tuple[RocCoordinates, ...]) -> RocCoordinates:
        """The ROCs of several model spaces, concatenated in the order given."""
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )


def ring_coordinates(geometry: RingGeometry) -> RocCoordinates:
    """The places of one ring's ROCs, as the simulator draws its patterns on them."""
    c = model_coordinates(geometry)
    return RocCoordinates(
        c["disk"].ravel(), c["phi"].ravel(), c["radial_index"].ravel() / 7.0, c["disk_slot"].ravel()
    )


RING2_COORDINATES = RocCoordinates(ROC_DISK, ROC_PHI_RAD, ROC_RADIUS, _DISK_SLOT)


def _smooth_modes(where: RocCoordinates = RING2_COORDINATES) -> np.ndarray:
    """(n_modes, n_rocs) fixed smooth shapes, each scaled to unit peak: the field's alphabet."""
    phi, radius, z_sign = where.phi, where.radius - 0.5, np.sign(where.disk)
    modes = []
    for m in (1, 2, 3):  # azimuthal modulations, the same on every disk (beam spot) or z-odd
        for trig in (np.cos, np.sin):
            modes += [trig(m * phi), trig(m * phi) * z_sign]
    modes.append(z_sign * 1.0)  # +z / -z asymmetry
    for slot in range(len(DISKS)):  # each disk: its own level and radial gradient
        on_disk = (where.disk_slot == slot).astype(float)
        modes += [on_disk, on_disk * radius]
    modes += [radius, radius * z_sign]
    stacked = np.array(modes)
    return stacked / np.abs(stacked).max(axis=1, keepdims=True)


SMOOTH_MODES = _smooth_modes()
_cached_modes = functools.cache(_smooth_modes)  # per RocCoordinates instance (by identity)


def _blobs(
    n_ls: int, rng: np.random.Generator, where: RocCoordinates = RING2_COORDINATES
) -> np.ndarray:
    """(N, 6528) one azimuthal bump per LS, on one z side or both, ~1-2 ROGs wide, peak 1.

    A bump in azimuth on several disks is the smooth misfit closest to a Multi-Disk anomaly
    (same ROG low on every disk): the hardest case for a rule, so every field gets one.
    """
    centre = rng.uniform(0.0, 2 * np.pi, (n_ls, 1))
    width = rng.uniform(0.3, 0.8, (n_ls, 1))  # rad; one ROG spans ~0.7-0.9 rad
    distance = np.angle(np.exp(1j * (where.phi[None, :] - centre)))
    bump = np.exp(-0.5 * (distance / width) ** 2)
    side = rng.integers(-1, 2, (n_ls, 1))  # -1: -z only, 1: +z only, 0: both
    on_side = (side == 0) | (np.sign(where.disk)[None, :] == side)
    per_disk = rng.uniform(0.5, 1.0, (n_ls, len(DISKS)))[:, where.disk_slot]
    return bump * on_side * per_disk


def smooth_shapes(
    n_ls: int, rng: np.random.Generator, where: RocCoordinates | None = None
) -> np.ndarray:
    """(N, 6528) smooth shapes g with max |g| = 1, one per LS (`where`: other ROCs than
    Ring 2's, e.g. both rings side by side).

    g mixes random smooth modes (azimuthal, radial, per-disk, z asymmetry) with a signed
    azimuthal bump; its sign is random, so half of the bumps are dips.
    """
    modes = SMOOTH_MODES if where is None else _cached_modes(where)
    coefficients = rng.normal(0.0, 1.0, (n_ls, len(modes)))
    g = coefficients @ modes
    g += rng.normal(0.0, 2.0, (n_ls, 1)) * _blobs(n_ls, rng, where or RING2_COORDINATES)
    return g / np.abs(g).max(axis=1, keepdims=True)


def smooth_fields(
    n_ls: int, amplitude: float, rng: np.random.Generator, where: RocCoordinates | None = None
) -> np.ndarray:
    """(N, 6528) multiplicative fields 1 + amplitude * g, g = `smooth_shapes`, one per LS.

    `amplitude` is the peak relative deviation: 0.3 leaves some ROCs of every LS 30 % away
    from the model's shape.
    """
    if not 0.0 <= amplitude < 1.0:
        raise ValueError(f"amplitude must be in [0, 1), got {amplitude}")
    return 1.0 + amplitude * smooth_shapes(n_ls, rng, where)


def overdispersed(
    expected: np.ndarray, relative_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Expected counts times an independent Gamma(mean 1, sd relative_sigma) per ROC and LS.

    Poisson counts of the result are a negative binomial: the extra per-ROC, per-LS scatter
    (noise, efficiency jitter) that a Poisson model does not have.
    """
    if relative_sigma <= 0:
        return expected
    shape = 1.0 / relative_sigma**2
    return expected * rng.gamma(shape, 1.0 / shape, size=expected.shape)


@dataclass(frozen=True)
class Mismatch:
    """How test maps differ from the model's: a smooth field and/or overdispersion."""

    name: str
    field_amplitude: float = 0.0  # peak relative deviation of the smooth field
    overdispersion: float = 0.0  # relative sd of the per-ROC, per-LS scatter

    def apply(self, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, 6528) expected counts as the mismatched detector would give them."""
        out = expected.reshape(len(expected), N_ROCS)
        if self.field_amplitude > 0:
            out = out * smooth_fields(len(out), self.field_amplitude, rng)
        return overdispersed(out, self.overdispersion, rng)

    def on(self, make_expected: MapMaker) -> MapMaker:
        """A map maker whose maps carry this mismatch."""

        def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return self.apply(make_expected(occupancy, rng), rng)

        return make


NONE = Mismatch("none (the model's own maps)")
MISMATCH_LEVELS = (
    NONE,
    Mismatch("smooth field 10 %", field_amplitude=0.10),
    Mismatch("smooth field 20 %", field_amplitude=0.20),
    Mismatch("smooth field 30 %", field_amplitude=0.30),
    Mismatch("overdispersion 5 %", overdispersion=0.05),
    Mismatch("overdispersion 10 %", overdispersion=0.10),
    Mismatch("field 30 % + overdispersion 10 %", field_amplitude=0.30, overdispersion=0.10),
)


def period_fields(
    n_ls: int,
    amplitude: float,
    rng: np.random.Generator,
    n_modes: int = 6,
    where: RocCoordinates | None = None,
) -> np.ndarray:
    """(N, 6528) fields 1 + amplitude * g of a drifting detector, LS in time order.

    g mixes `n_modes` fixed smooth shapes whose weights drift linearly from one random
    setting to another over the N LS, with a per-LS jitter of a third of that: structure a
    5-component fit of the whole period captures only in part, and a fit of its first half
    differently from a fit of its second half (unlike `smooth_fields`, a new shape every LS,
    which a fit averages away). Each LS's g is scaled to a peak of 1.
    """
    shapes = smooth_shapes(n_modes, rng, where)
    start, end = rng.normal(0.0, 1.0, (2, 1, n_modes))
    time_fraction = np.linspace(0.0, 1.0, n_ls)[:, None]
    weights = start + (end - start) * time_fraction
    weights += rng.normal(0.0, 1.0 / 3.0, (n_ls, n_modes))
    g = weights @ shapes
    g /= np.abs(g).max(axis=1, keepdims=True)
    return 1.0 + amplitude * g


def scaled_maker(components: np.ndarray, weights_pool: np.ndarray) -> MapMaker:
    """Maps W @ H with W drawn from a pool of per-LS weights, scaled to the asked occupancy.

    Occupancy is the mean over *live* ROCs (those the shape expects to hold >= 5 % of the
    mean), as in the simulator, so a permanently dead group does not lower it.
    """
    h = np.asarray(components, dtype=np.float64).reshape(len(components), N_ROCS)
    pool = np.asarray(weights_pool, dtype=np.float64)
    profile = h.mean(axis=0)
    live = profile >= 0.05 * profile.mean()

    def make(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        expected = pool[rng.integers(len(pool), size=len(occupancy))] @ h
        live_mean = expected[:, live].mean(axis=1)
        return expected * (np.asarray(occupancy, dtype=np.float64) / live_mean)[:, None]

    return make


@dataclass(frozen=True)
class RefitPair:
    """Two equally good NMF fits of the same data: train on `first`, test on `second`.

    `relative_misfit_rms` is how far the second fit's maps are from the first fit's best
    approximation of them (noise-free, over live ROCs): the size of the mismatch this makes.
    """

    first: MapMaker
    second: MapMaker
    relative_misfit_rms: float
    relative_misfit_p99: float


def refit_pair(
    make_expected: MapMaker,
    rng: np.random.Generator,
    *,
    n_ls: int = 900,
    field_amplitude: float = 0.15,
    passes: int = 200,
) -> RefitPair:
    """Fit a 5-component NMF twice, on the two halves of one period's maps, with two seeds.

    The period's maps are `make_expected` maps (occupancy 200-1400) times the fields of a
    detector drifting during the period (`period_fields`, peak `field_amplitude`), so they are
    *not* an exact 5-component mixture, as real maps are not; Poisson-sampled. Each half's fit
    describes its own half as well as the other does its own; a model trained on maps of the
    first fit then meets maps of the second: the issue's "different but equally good NMF fit
    of the same period", with the drift that makes one.
    """
    from ..model.train import fit_components

    occupancy = rng.uniform(200.0, 1400.0, 2 * n_ls)
    truth = make_expected(occupancy, rng) * period_fields(2 * n_ls, field_amplitude, rng)
    counts = rng.poisson(truth).astype(np.float64)
    halves = (counts[:n_ls], counts[n_ls:])
    fits = [
        fit_components(half.reshape(n_ls, -1), passes=passes, seed=seed)
        for seed, half in zip((1, 2), halves, strict=True)
    ]
    pools = [
        BatchedNNLS(h).solve(half @ h.T) / half.mean(axis=1, keepdims=True)
        for h, half in zip(fits, halves, strict=True)
    ]
    first, second = (scaled_maker(h, pool) for h, pool in zip(fits, pools, strict=True))
    rms, p99 = _misfit(second(np.full(500, 1000.0), rng), fits[0])
    return RefitPair(first, second, rms, p99)


def _misfit(expected: np.ndarray, components: np.ndarray) -> tuple[float, float]:
    """RMS and 99th percentile of |x / (best fit of x on components) - 1| over live ROCs."""
    h = np.asarray(components, dtype=np.float64)
    best = BatchedNNLS(h).solve(expected @ h.T) @ h
    live = best > 0.05 * best.mean(axis=1, keepdims=True)
    relative = np.abs(expected[live] / best[live] - 1.0)
    return float(np.sqrt(np.mean(relative**2))), float(np.quantile(relative, 0.99))
