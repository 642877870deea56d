"""The PixelRing2NMF pipeline, step by step, for a batch of lumisections.

validate -> project on the components (the cross has no weight) -> reconstruct (exact NNLS)
-> screen the power groups -> bad ROCs of the screened groups (bad_ROC.py: significantly *and*
largely below the reconstruction) -> power-group search -> DCS filter -> one PredictionResult.

Why a screen: testing all 6528 ROCs of every LS takes ten elementwise passes over 20 MB for a 750-LS
run, the largest cost of inference. But a group can only have 40 % of its live ROCs bad if its total
count is clearly below its expected total, and both totals come almost for free: the observed ones
from the chunk pass that projects the maps on the components, the expected ones from W times the
components' group totals. So only groups whose deficit exceeds `screen_deficit` (10 %) of their
expectation are tested ROC by ROC: none in a healthy LS, the dead groups of an anomalous one, and a
few per LS when the data stray from the model (a smooth 30 % misfit puts ~6 groups per LS above 10
%, ~14 above 5 %). A bad ROC has lost at least half of its expected clusters, so a group with 40 %
of its live ROCs bad is ~20 % short or more: measured, >= 34 % on the model's own maps and >= 21 %
under a 30 % smooth misfit with 10 % overdispersion, for ROGs 40 % dead on two disks. The screen can
hide an anomalous group only if hot ROCs in the same group add more than ~10 % of its expected total
on top of such a misfit.

The screened groups are judged one group at a time, vectorised over the LS that screened it
(at most 48 passes, never a loop over LS): the LS share the group's ROCs, so their counts are
one block slice of the maps and their expectations one (n, K) @ (K, R) product.

Hot ROCs. A ROC that counts far above its expectation (a noisy readout) must not move the fit:
least squares lifts the whole reconstruction towards it, and the rest of the detector then reads
as dead (measured before this step: one ROC at 3,000x its expectation turned 1 in 4 healthy LS
into Quarter flags). Every chunk's largest count is compared with its LS's total (one reduction
over the chunk, the total comes with the projection); an LS where one ROC holds more than
`HOT_SHARE` of its clusters is refitted with each ROC far above its reconstruction replaced by
that reconstruction, repeated until the fit settles. Replacing a value by its prediction is the
EM step for a missing value, so the fit converges to the one without those ROCs. Healthy ROCs
never come near that share (at most ~1/1000 of the LS), so a healthy LS never takes the extra
step, and a hot ROC below it is too small a part of the LS to move the fit.

Lumisections are processed in chunks of _CHUNK_LS so that temporaries stay in the CPU cache;
there is no Python loop over individual lumisections.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import (
    VALID_RUNS_KEY,
    ArtifactError,
    check_valid_runs,
    file_rings,
    load_artifact,
    save_artifact,
)
from .bad_ROC import (
    GroupSearch,
    Thresholds,
    bad_count_limit,
    deficit_significance,
    live_rocs,
    search_significance,
    silence_floor,
)
from .dftools import DcsResult, dcs_filter
from .errors import InputError
from .geometry import (
    ANOMALY_TYPES,
    GROUP_NAMES_ARRAY,
    N_GROUPS,
    RING2,
    RINGS,
    RingGeometry,
)
from .nmf2d import BatchedNNLS
from .preprocessor import insert_cross, remove_cross

DEFAULT_MODEL_PATH = Path(__file__).with_name("pixelring2nmf.joblib")
MODEL_NAME = "pixel-ring2-nmf"  # the Ring 2 model's, as DIALS registers it


def model_name(geometry: RingGeometry) -> str:
    """The name DIALS registers a one-ring model under: pixel-ring2-nmf, pixel-ring1-nmf."""
    return f"pixel-ring{geometry.ring}-nmf"


# The largest count of one ROC in one LS the model accepts: what an unsigned 32-bit histogram bin
# holds (an LS has ~1e9 bunch crossings, so no real count comes near), and small enough that the
# float32 arithmetic of inference stays finite (sums over 7840 bins of counts up to 2^32 times
# components of mean 1, and squares of the expectations, are far below float32's 3.4e38).
MAX_COUNT = 2**32 - 1

# Hot ROCs (module docstring). An LS is refitted when one ROC holds more than HOT_SHARE of its
# clusters (13x the mean ROC; the largest ROC of a healthy map holds at most ~7x the mean, on the
# simulated detector and on maps of the real 2025C components at every mismatch level of the
# detection study, 20-2000 clusters per ROC; a false suspect only costs a refit); a ROC is
# then hot when its count is above HOT_FACTOR times its reconstruction and HOT_Z standard
# deviations (Poisson and model error) above it, which no healthy ROC and no misfit reaches.
HOT_SHARE = 0.002
HOT_FACTOR = 3.0
HOT_Z = 5.0
HOT_MAX_REFITS = 20  # the fit settles in a few; a bound, not a tolerance
HOT_SETTLED = 1e-5  # relative change of the NNLS right-hand sides at which it has settled


@dataclass(frozen=True)
class PredictionResult:
    """Per-LS outcome of one batch, in the order the LS were given.

    The pipeline logs nothing: whoever runs it (the MLServer handler, the `predict` command)
    prints `flagging_lines()`, and the era, which judges a thousand LS at a time, stays quiet.
    """

    flag: np.ndarray  # (N,) bool: Metric >= threshold and DCS good
    metric: np.ndarray  # (N,) float32, 0 for a healthy LS
    anomaly_type: np.ndarray  # (N,) str, one of geometry.ANOMALY_TYPES
    anomalous_groups: np.ndarray  # (N, 48) bool, columns geometry.GROUP_NAMES
    dcs: DcsResult
    n_flagged_before_dcs: int  # LS whose Metric reached the threshold, DCS filter aside
    roc_maps: dict[str, np.ndarray] | None = None  # (N, rows, 56) each, cross re-inserted

    @classmethod
    def of_search(
        cls,
        search: GroupSearch,
        dcs: DcsResult,
        thresholds: Thresholds,
        roc_maps: dict[str, np.ndarray] | None = None,
    ) -> PredictionResult:
        """The result of a group search (one ring's or the joint one) after the DCS filter."""
        flag_before = search.metric >= thresholds.metric_threshold
        return cls(
            flag=flag_before & dcs.good,
            metric=search.metric,
            anomaly_type=np.asarray(ANOMALY_TYPES)[search.type_code],
            anomalous_groups=search.anomalous_groups,
            dcs=dcs,
            n_flagged_before_dcs=int(flag_before.sum()),
            roc_maps=roc_maps,
        )

    def groups(self) -> list[str]:
        """';'-joined names of each LS's anomalous power groups ('' when none)."""
        return [";".join(GROUP_NAMES_ARRAY[row]) for row in self.anomalous_groups]

    def flagging_lines(self) -> tuple[str, str, str]:
        """The original deployment's three log lines, word for word (tools grep them)."""
        n_ls = len(self.flag)
        return (
            f"[INFO]: Flagging results (before filtering): flagged {self.n_flagged_before_dcs} "
            f"out of {n_ls} lumisections.",
            f"[INFO]: Filtering: selected {self.dcs.n_good} out of {n_ls} lumisections.",
            f"[INFO]: Flagging results (after filtering): flagged {int(self.flag.sum())} out of "
            f"{n_ls} lumisections.",
        )


# LS per inference chunk: 16 maps (500 kB as float32) stay in the core's L2 cache between the
# cast, the check and the two products that read them (measured: 12 % faster than 128).
_CHUNK_LS = 16


def check_maps(maps_nyx: Any, geometry: RingGeometry = RING2) -> np.ndarray:
    """The maps as an (N, rows, 56) numeric array, or an InputError that says what is wrong."""
    maps = np.asarray(maps_nyx)
    shape = geometry.map_shape
    if maps.ndim != 3 or maps.shape[1:] != shape:
        raise InputError(
            f"Expected {geometry.name} maps of shape (n, {shape[0]}, {shape[1]}), got {maps.shape}"
        )
    if maps.dtype.kind not in "biuf":
        raise InputError(f"Expected numeric occupancy counts, got dtype {maps.dtype}")
    return maps


def check_counts(
    maps: np.ndarray,
    *,
    first_ls: int = 0,
    row_max: np.ndarray | None = None,
    geometry: RingGeometry = RING2,
) -> None:
    """Refuse counts that are negative, NaN, infinite or above MAX_COUNT (two reductions).

    The message names the first offending value and its place (LS, then the map's row and
    column when the maps are (N, rows, 56) or (N, rows * 56)); `first_ls` is the LS number of
    maps[0] when the maps are a chunk of a larger batch. `row_max`, each LS's largest count
    when the caller has it already (the hot-ROC test), saves one of the two passes.
    """
    if not len(maps):
        return
    limit = _count_limit(maps.dtype)
    lowest = maps.min()
    highest = maps.max() if row_max is None else row_max.max()
    if lowest >= 0 and highest <= limit:  # False for NaN
        return
    bad = ~((maps >= 0) & (maps <= limit))  # error path only: a full pass is fine
    index = np.unravel_index(int(np.argmax(bad)), maps.shape)
    value = maps[index]
    where = f"LS {first_ls + int(index[0])}"
    shape = geometry.map_shape
    if maps.shape[1:] in (shape, (shape[0] * shape[1],)):  # maps, or the flat chunks
        row, column = np.unravel_index(np.ravel_multi_index(index[1:], maps.shape[1:]), shape)
        where += f", row {int(row)}, column {int(column)}"
    what = "NaN" if np.isnan(value) else str(value.item())
    raise InputError(
        f"Occupancy counts must be finite and in [0, {MAX_COUNT}], found {what} at {where}"
    )


def _count_limit(dtype: np.dtype) -> float:
    """MAX_COUNT in `dtype`, rounded down: float32 has no 2^32 - 1, and rounding up to 2^32
    would let 2^32 through (compared in the maps' own dtype: numpy 1.26 would use float64)."""
    if dtype.kind != "f":
        return MAX_COUNT
    limit = np.asarray(MAX_COUNT, dtype=dtype)
    return limit if float(limit) <= MAX_COUNT else np.nextafter(limit, dtype.type(0))


def to_model_space(maps_nyx: Any, geometry: RingGeometry = RING2) -> np.ndarray:
    """Validate (N, rows, 56) maps and return them as float32 (N, ROCs) without the cross."""
    rocs = remove_cross(check_maps(maps_nyx, geometry), geometry)  # the cross is ignored
    check_counts(rocs)
    return rocs.astype(np.float32).reshape(len(rocs), geometry.n_rocs)


def _group_blocks(geometry: RingGeometry) -> tuple[tuple[slice, slice], ...]:
    """(rows, columns) of each power group in the map: every group is one rectangular block."""
    blocks = []
    group_id_map = geometry.group_id_map
    for g in range(N_GROUPS):
        rows, columns = np.nonzero(group_id_map == g)
        block = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
        if (group_id_map[block] != g).any() or group_id_map[block].size != len(rows):
            raise AssertionError(f"power group {g} is not a rectangular block of the map")
        blocks.append(block)
    return tuple(blocks)


_GROUP_BLOCKS = {ring: _group_blocks(geometry) for ring, geometry in RINGS.items()}


@dataclass(frozen=True)
class GroupEvidence:
    """One ring's fit of a batch, summed per power group (all float32)."""

    weights: np.ndarray  # (N, K) NNLS weights of the components
    observed_totals: np.ndarray  # (N, 48) clusters per group, hot ROCs replaced by their fit
    expected_totals: np.ndarray  # (N, 48) the reconstruction's clusters per group

    def screened(self, screen_deficit: float) -> np.ndarray:
        """(N, 48) groups short of more than `screen_deficit` of their expectation (module
        docstring): the only ones worth testing ROC by ROC."""
        deficit = self.expected_totals - self.observed_totals
        return deficit > screen_deficit * self.expected_totals


@dataclass(frozen=True)
class _GroupTables:
    """What judging one power group ROC by ROC needs, in the order of its map block."""

    block: tuple[slice, slice]  # (rows, columns) of the map
    components: np.ndarray  # (K, R) float32
    error_squared: np.ndarray  # (R,) float32, eps^2
    silence_floor: np.ndarray  # (R,) float32, see bad_ROC.silence_floor


def _count_per_row(mask: np.ndarray) -> np.ndarray:
    """(n,) number of True per row of an (n, R) bool array, R < 65536.

    Summing the bytes as uint16 is ~2.5x faster than bool.sum(axis=1), which converts every
    element to a 64-bit integer first.
    """
    return np.add.reduce(mask.view(np.uint8), axis=1, dtype=np.uint16)


class PixelRing2NMF:
    """A trained model of one ring: components, per-ROC model error and thresholds; inference only.

    The name is the project's; the ring is the model's `geometry` (Ring 2 unless told), which a
    model file states by its geometry version. Build one with `PixelRing2NMF.load(path)` (the
    safe loader) or from training (the toolkit's `pixelring2nmf.model.train.train_model`).
    Inference never changes the model, so one instance serves concurrent requests.
    """

    def __init__(
        self,
        components: np.ndarray,
        model_error: np.ndarray,
        thresholds: Thresholds | None = None,
        metadata: Mapping[str, Any] | None = None,
        geometry: RingGeometry = RING2,
    ) -> None:
        self.geometry = geometry
        n_rocs, model_shape, map_shape = geometry.n_rocs, geometry.model_shape, geometry.map_shape
        map_bins = map_shape[0] * map_shape[1]
        components = np.asarray(components, dtype=np.float32).reshape(len(components), n_rocs)
        model_error = np.asarray(model_error, dtype=np.float32).reshape(n_rocs)
        self.thresholds = thresholds or Thresholds()
        self.metadata = dict(metadata or {})
        self.components = components
        self.model_error = np.maximum(model_error, self.thresholds.model_error_floor)
        self._nnls = BatchedNNLS(components)
        k = len(components)
        # Map-space versions (zero at the cross) so chunks never need the cross removed.
        components_map = insert_cross(components.reshape(k, *model_shape), 0, geometry).reshape(
            k, map_bins
        )
        # The NNLS right-hand side is one product; column k of ones adds each LS's total over
        # its ROCs (for the hot-ROC test), and zero columns pad to a multiple of 8, which
        # OpenBLAS multiplies markedly faster than 5 or 53 columns.
        self._projection = np.zeros((map_bins, -(-(k + 1) // 8) * 8), dtype=np.float32)
        self._projection[:, :k] = components_map.T
        self._projection[:, k] = geometry.group_id_map.ravel() >= 0  # every bin but the cross
        self._components_map = components_map
        self._components_group_totals = geometry.group_totals_map(components_map)  # (K, 48)
        # Groups with fewer live ROCs than min_live_rocs in the components (a permanently dead
        # group) are never judged; derived from the model, so a retrained model updates it.
        profile = components.mean(axis=0)
        live_profile = profile >= self.thresholds.live_fraction * profile.mean()
        live_per_group = np.bincount(geometry.group_id_flat, weights=live_profile, minlength=48)
        self.unjudged_groups = live_per_group < self.thresholds.min_live_rocs
        self._model_error_map = insert_cross(
            self.model_error.reshape(1, *model_shape), 0, geometry
        )[0].ravel()
        # Below this expectation a ROC's silence would not be significant: it is not live.
        self._silence_floor_map = silence_floor(
            self._model_error_map, self.thresholds.z_threshold
        ).astype(np.float32)
        error_map = self._model_error_map.reshape(map_shape)
        floor_map = self._silence_floor_map.reshape(map_shape)
        components_nyx = components_map.reshape(k, *map_shape)
        self._groups = tuple(
            _GroupTables(
                block=(rows, columns),
                components=np.ascontiguousarray(components_nyx[:, rows, columns].reshape(k, -1)),
                error_squared=error_map[rows, columns].ravel() ** 2,
                silence_floor=floor_map[rows, columns].ravel(),
            )
            for rows, columns in _GROUP_BLOCKS[geometry.ring]
        )

    @property
    def valid_runs(self) -> tuple[int, int | None] | None:
        """(first, last) run of the period this model is valid for, last None when open; None
        for a file that states no period (written before periods existed): every run. The
        toolkit chooses a model per run by it; inference never looks at it."""
        value = self.metadata.get(VALID_RUNS_KEY)
        return None if value is None else check_valid_runs(value)

    # ---- persistence -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The name DIALS registers this model under (template Name, MLServer model name)."""
        return model_name(self.geometry)

    @property
    def geometries(self) -> tuple[RingGeometry, ...]:
        """The ring(s) whose maps the model takes (one here; both for a `JointNMF`)."""
        return (self.geometry,)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_PATH) -> PixelRing2NMF:
        """A one-ring model file (either ring); a joint file is `joint.load_model`'s."""
        payload = load_artifact(path)
        rings = file_rings(payload["geometry_version"])
        if len(rings) != 1:
            raise ArtifactError(
                f"{path} is a joint model of both rings: load it with joint.load_model"
            )
        return cls.from_payload(payload, rings[0], path)

    @classmethod
    def from_payload(
        cls, payload: Mapping[str, Any], geometry: RingGeometry, path: str | Path
    ) -> PixelRing2NMF:
        """One ring's model from a checked model-file payload (components of that ring)."""
        try:
            thresholds = Thresholds.from_mapping(payload["thresholds"])
        except ValueError as error:
            raise ArtifactError(f"{path}: {error}") from None
        return cls(
            components=payload["components"],
            model_error=payload["model_error"],
            thresholds=thresholds,
            metadata={k: v for k, v in payload.items() if k not in ("components", "model_error")},
            geometry=geometry,
        )

    def save(self, path: str | Path) -> Path:
        model_shape = self.geometry.model_shape
        payload = {
            "version": __version__,
            "training": {},
            **self.metadata,
            "name": self.name,
            "geometry_version": self.geometry.version,
            "components": self.components.reshape(-1, *model_shape),
            "model_error": self.model_error.reshape(model_shape),
            "thresholds": asdict(self.thresholds),
        }
        return save_artifact(payload, path)

    # ---- inference ---------------------------------------------------------------------------
    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Expected counts (N, 6528) float32 of model-space maps x (N, 6528) float32."""
        weights = self._nnls.solve(x @ self.components.T)
        return weights.astype(np.float32) @ self.components

    def predict(
        self, maps_nyx: Any, oms: Mapping[str, Any] | None = None, *, roc_maps: bool = False
    ) -> PredictionResult:
        """Flag, Metric, anomaly type and groups of every LS of a (N, rows, 56) batch."""
        maps = check_maps(maps_nyx, self.geometry)
        n_ls = len(maps)
        dcs = dcs_filter(oms, n_ls)  # before the heavy work: a bad OMS tensor fails fast
        n_bad, n_live, screened = self._screened_counts(maps)
        search = search_significance(
            n_bad, n_live, self.thresholds, self.unjudged_groups, tested=screened
        )
        return PredictionResult.of_search(
            search, dcs, self.thresholds, self.roc_maps(maps) if roc_maps else None
        )

    def _chunks(self, maps: np.ndarray):
        """Yield (slice, float32 (m, 7840) maps as fitted, float32 (m, K) NNLS right-hand sides).

        Maps that already are C-contiguous float32 are used in place; others (the MLServer
        handler's counts, parquet's int32) are cast chunk by chunk into a buffer that stays in
        the CPU cache. In an LS with a hot ROC (module docstring) the maps yielded hold the
        reconstruction in place of its hot ROCs, and the right-hand sides are those of the fit
        without them; the caller's maps are never changed.
        """
        map_bins = self._components_map.shape[1]
        flat = maps.reshape(len(maps), map_bins)
        in_place = flat.dtype == np.float32 and flat.flags.c_contiguous
        buffer = None if in_place else np.empty((min(_CHUNK_LS, len(maps)), map_bins), np.float32)
        k = len(self.components)
        for start in range(0, len(maps), _CHUNK_LS):
            rows = slice(start, min(start + _CHUNK_LS, len(maps)))
            if in_place:
                x = flat[rows]
            else:
                # on the cached copy: one read of the input, not two (an integer beyond
                # float32's range casts to a finite float, caught by the bound all the same)
                x = buffer[: rows.stop - rows.start]
                np.copyto(x, flat[rows], casting="unsafe")
            row_max = x.max(axis=1)  # the bound check and the hot-ROC test share this pass
            try:
                check_counts(x, first_ls=start, row_max=row_max, geometry=self.geometry)
            except InputError:
                if in_place:
                    raise
                # the counts as sent decide, and are named: the cast may have rounded a
                # valid count at the limit up, or a huge integer to a float
                check_counts(flat[rows], first_ls=start, geometry=self.geometry)
            products = x @ self._projection
            rhs, total = products[:, :k], products[:, k]
            suspects = np.flatnonzero(row_max > HOT_SHARE * total)
            if suspects.size:
                x = x.copy() if in_place else x
                x[suspects], rhs[suspects] = self._refit_without_hot_rocs(
                    x[suspects], rhs[suspects]
                )
            yield rows, x, rhs

    def _refit_without_hot_rocs(
        self, x: np.ndarray, rhs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(maps, NNLS right-hand sides) of LS x (n, 7840) with every hot ROC replaced by its
        reconstruction, refitted until the fit settles (module docstring)."""
        k = len(self.components)
        error_squared = self._model_error_map**2
        fitted = x
        for _ in range(HOT_MAX_REFITS):
            expected = self._nnls.solve(rhs).astype(np.float32) @ self._components_map
            sigma = np.sqrt(expected * (1.0 + error_squared * expected) + 1.0)
            hot = x > HOT_FACTOR * expected + HOT_Z * sigma
            fitted = np.where(hot, expected, x)
            refitted = (fitted @ self._projection)[:, :k]
            settled = np.allclose(refitted, rhs, rtol=HOT_SETTLED, atol=0.0)
            rhs = refitted
            if settled:
                break
        return fitted, rhs

    def _screened_counts(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 48) bad and live ROC counts, non-zero only for the groups the screen picked,
        and (N, 48) which groups it picked (counted ROC by ROC)."""
        evidence = self.group_evidence(maps)
        screened = evidence.screened(self.thresholds.screen_deficit)
        n_bad, n_live = self.count_bad(maps, evidence.weights, screened)
        return n_bad, n_live, screened

    def group_evidence(self, maps: np.ndarray) -> GroupEvidence:
        """The fit of every LS of checked (N, rows, 56) maps and its power-group totals: one
        chunked pass over the maps (the joint model combines two rings' evidence from here)."""
        n_ls, k = len(maps), len(self.components)
        rhs = np.empty((n_ls, k), dtype=np.float32)
        observed_totals = np.empty((n_ls, N_GROUPS), dtype=np.float32)
        for rows, x, chunk_rhs in self._chunks(maps):
            rhs[rows] = chunk_rhs
            observed_totals[rows] = self.geometry.group_totals_map(x)
        weights = self._nnls.solve(rhs).astype(np.float32)
        return GroupEvidence(weights, observed_totals, weights @ self._components_group_totals)

    def count_bad(
        self, maps: np.ndarray, weights: np.ndarray, tested: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 48) bad and live ROC counts of the `tested` (N, 48) groups, zero elsewhere."""
        n_bad = np.zeros(tested.shape, dtype=np.int32)
        n_live = np.zeros_like(n_bad)
        # one pass per tested group (module docstring), over the LS that test it
        for group in np.flatnonzero(tested.any(axis=0)):
            ls = np.flatnonzero(tested[:, group])
            n_live[ls, group], n_bad[ls, group] = self._judge_group(
                maps, ls, weights[ls], self._groups[group]
            )
        return n_bad, n_live

    def _judge_group(
        self, maps: np.ndarray, ls: np.ndarray, weights: np.ndarray, group: _GroupTables
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n,) live and bad ROC counts of one power group in the LS `ls` of (N, 140, 56) maps."""
        t = self.thresholds
        rows, columns = group.block
        counts = maps[ls, rows, columns].reshape(len(ls), -1).astype(np.float32)
        expected = weights @ group.components  # (n, R)
        # components have mean 1, so the LS's mean expectation per ROC is the sum of its W
        live = live_rocs(expected, weights.sum(axis=1), t.live_fraction, group.silence_floor)
        limit = bad_count_limit(expected, group.error_squared, t, np.empty_like(expected))
        bad = counts < limit
        bad &= live
        return _count_per_row(live), _count_per_row(bad)

    def _expected_chunks(self, maps: np.ndarray):
        """Yield (slice, counts, expected), both float32 (m, 7840), chunk by chunk."""
        for rows, x, rhs in self._chunks(maps):
            yield rows, x, self._nnls.solve(rhs).astype(np.float32) @ self._components_map

    def roc_maps(self, maps_nyx: Any) -> dict[str, np.ndarray]:
        """Per-ROC maps (N, 140, 56) for plots: reconstruction, significance, bad ROCs.

        Every ROC is tested here (no screen), so "bad" shows each bad live ROC (significantly
        and largely below its reconstruction, bad_ROC.py), including the odd one in a healthy
        group; "significance" is z alone, for every ROC. The cross is zero.
        """
        geometry = self.geometry
        maps = check_maps(maps_nyx, geometry)
        map_bins = self._components_map.shape[1]
        shape = (len(maps), map_bins)
        out = {
            "reconstruction": np.empty(shape, np.float32),
            "bad": np.empty(shape, bool),
            "significance": np.empty(shape, np.float32),
        }
        roc_bins = geometry.group_id_map.ravel() >= 0  # everything but the cross
        t = self.thresholds
        counts = maps.reshape(len(maps), map_bins)
        for rows, _, expected in self._expected_chunks(maps):
            x = counts[rows].astype(np.float32)  # the counts as sent, hot ROCs included
            out["reconstruction"][rows] = expected
            z = deficit_significance(x, expected, self._model_error_map)
            mean = expected.sum(axis=1) / geometry.n_rocs
            live = live_rocs(expected, mean, t.live_fraction, self._silence_floor_map)
            limit = bad_count_limit(expected, self._model_error_map**2, t, np.empty_like(expected))
            out["significance"][rows] = np.where(roc_bins, z, 0.0)
            out["bad"][rows] = live & (x < limit)
        return {name: array.reshape(len(maps), *geometry.map_shape) for name, array in out.items()}
