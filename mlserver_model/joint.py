"""One decision for the whole forward pixel: both rings' evidence, per power group.

A readout group powers blades of Ring 1 and Ring 2, so a group outage silences its ROCs in both
rings at once, while a module-level loss stays in one ring. Each ring keeps its own model (its
components describe its own map) and its own fit; the decision pools them per group:

- *ROC by ROC*: a group is tested in both rings when either ring's screen picked it, and its bad
  and live ROCs are added over the rings; >= `group_fraction` of the live ROCs of both rings bad
  makes it anomalous. More live ROCs per group means a group stays judgeable at lower occupancy.
- *The group as a whole*: its observed clusters, summed over both rings, against its expectation
  summed likewise. A group that lost at least `min_relative_deficit` of all its expected clusters
  (a smooth misfit loses 10-30 %, a group outage ~100 %), significantly so by the same formula
  as a ROC (with the model-error floor as eps), is anomalous with that lost share as its
  fraction. This is what catches an outage at an occupancy where no single ROC can be judged: a
  silent group of 250 ROCs expected to hold 0.3 clusters each is missing 75 clusters, a 8-sigma
  loss, while each ROC's silence means nothing.

Flag, Metric, AnomalyType and Groups then follow from the fractions exactly as for one ring
(bad_ROC.group_search), so DIALS reads the joint model like the Ring 2 one. An LS present in one
ring only is judged on that ring's evidence alone (the toolkit counts such LS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact import (
    JOINT_GEOMETRY_VERSION,
    JOINT_RINGS,
    VALID_RUNS_KEY,
    ArtifactError,
    check_valid_runs,
    file_rings,
    load_artifact,
    save_artifact,
)
from .bad_ROC import Thresholds, group_search, silence_floor
from .dftools import dcs_filter
from .errors import InputError
from .geometry import RingGeometry
from .pixelring2nmf import PixelRing2NMF, PredictionResult, check_maps

JOINT_MODEL_NAME = "pixel-fpix-nmf"


class JointNMF:
    """A model of both rings: one `PixelRing2NMF` per ring and one set of thresholds.

    `rings` maps the ring number to that ring's model; the two share `thresholds` (the joint
    decision is one rule). Inference never changes the model, so one instance serves
    concurrent requests.
    """

    name = JOINT_MODEL_NAME
    geometries: tuple[RingGeometry, ...] = JOINT_RINGS

    def __init__(
        self,
        rings: Mapping[int, PixelRing2NMF],
        thresholds: Thresholds | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        wanted = sorted(g.ring for g in self.geometries)
        if sorted(rings) != wanted:
            raise ValueError(f"a joint model needs the rings {wanted}, got {sorted(rings)}")
        for ring, model in rings.items():
            if model.geometry.ring != ring:
                raise ValueError(f"the model given for ring {ring} is a {model.geometry.name} one")
        self.thresholds = thresholds or Thresholds()
        self.rings = {
            g.ring: _with_thresholds(rings[g.ring], self.thresholds) for g in self.geometries
        }
        self.metadata = dict(metadata or {})
        # A group is never judged only when no ring can see it (dead in both rings' components).
        self.unjudged_groups = np.logical_and.reduce(
            [m.unjudged_groups for m in self.rings.values()]
        )
        # The smallest expectation at which a whole group's silence is significant (one "ROC"
        # of eps = the model-error floor): below it the group test cannot speak.
        self._group_floor = float(
            silence_floor(
                np.float64(self.thresholds.model_error_floor), self.thresholds.z_threshold
            )
        )

    @property
    def valid_runs(self) -> tuple[int, int | None] | None:
        """(first, last) run of the model's period, as PixelRing2NMF.valid_runs."""
        value = self.metadata.get(VALID_RUNS_KEY)
        return None if value is None else check_valid_runs(value)

    # ---- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> JointNMF:
        payload = load_artifact(path)
        if file_rings(payload["geometry_version"]) != JOINT_RINGS:
            raise ArtifactError(f"{path} is a one-ring model, not a joint model of both rings")
        return cls.from_payload(payload, path)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], path: str | Path) -> JointNMF:
        """The joint model of a checked joint model-file payload."""
        rings = {}
        for geometry in JOINT_RINGS:
            per_ring = {
                **payload,
                "components": payload["components"][geometry.input_name],
                "model_error": payload["model_error"][geometry.input_name],
            }
            rings[geometry.ring] = PixelRing2NMF.from_payload(per_ring, geometry, path)
        metadata = {k: v for k, v in payload.items() if k not in ("components", "model_error")}
        return cls(rings, rings[JOINT_RINGS[0].ring].thresholds, metadata)

    def save(self, path: str | Path) -> Path:
        payload = {
            "version": __version__,
            "training": {},
            **self.metadata,
            "name": self.name,
            "geometry_version": JOINT_GEOMETRY_VERSION,
            "components": {
                g.input_name: m.components.reshape(-1, *g.model_shape) for g, m in self._models()
            },
            "model_error": {
                g.input_name: m.model_error.reshape(g.model_shape) for g, m in self._models()
            },
            "thresholds": asdict(self.thresholds),
        }
        return save_artifact(payload, path)

    def _models(self):
        return ((g, self.rings[g.ring]) for g in self.geometries)

    # ---- inference ---------------------------------------------------------------------------
    def check_ring_maps(self, maps_by_ring: Mapping[int, Any]) -> dict[int, np.ndarray]:
        """The maps of the rings given (at least one), checked, all with the same LS count."""
        maps = {
            ring: check_maps(value, self.rings[ring].geometry)
            for ring, value in maps_by_ring.items()
            if value is not None and ring in self.rings
        }
        unknown = sorted(set(maps_by_ring) - set(self.rings))
        if unknown:
            raise InputError(f"The joint model has rings 1 and 2, not {unknown}")
        if not maps:
            raise InputError("The joint model needs the maps of Ring 1, Ring 2 or both")
        counts = {f"Ring {ring}": len(m) for ring, m in maps.items()}
        if len(set(counts.values())) > 1:
            raise InputError(
                f"Ring 1 and Ring 2 must hold the same lumisections, got {counts} maps"
            )
        return maps

    def predict(
        self, maps_by_ring: Mapping[int, Any], oms: Mapping[str, Any] | None = None
    ) -> PredictionResult:
        """Flag, Metric, anomaly type and groups of every LS from the maps of one or both
        rings ({1: (N, 92, 56), 2: (N, 140, 56)}, the same N LS in the same order)."""
        maps = self.check_ring_maps(maps_by_ring)
        n_ls = len(next(iter(maps.values())))
        dcs = dcs_filter(oms, n_ls)  # before the heavy work: a bad OMS tensor fails fast
        fraction, blind = self.group_fractions(maps)
        search = group_search(fraction, self.thresholds.group_fraction, self.unjudged_groups, blind)
        return PredictionResult.of_search(search, dcs, self.thresholds)

    def group_fractions(self, maps: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 48) anomalous share of each group over the rings given, and (N, 48) the groups
        that could not be judged in each LS (module docstring)."""
        t = self.thresholds
        evidence = {ring: self.rings[ring].group_evidence(m) for ring, m in maps.items()}
        tested = np.logical_or.reduce([e.screened(t.screen_deficit) for e in evidence.values()])
        n_bad = np.zeros(tested.shape, dtype=np.int32)
        n_live = np.zeros_like(n_bad)
        for ring, m in maps.items():
            ring_bad, ring_live = self.rings[ring].count_bad(m, evidence[ring].weights, tested)
            n_bad += ring_bad
            n_live += ring_live
        fraction = np.divide(n_bad, n_live, out=np.zeros(n_bad.shape), where=n_live > 0)
        roc_blind = n_live < t.min_live_rocs
        fraction[roc_blind] = 0.0
        expected = sum(e.expected_totals.astype(np.float64) for e in evidence.values())
        observed = sum(e.observed_totals.astype(np.float64) for e in evidence.values())
        missing = expected - observed
        lost = np.divide(missing, expected, out=np.zeros(n_bad.shape), where=expected > 0)
        sigma = np.sqrt(expected * (1.0 + t.model_error_floor**2 * expected) + 1.0)
        group_silent = (lost >= t.min_relative_deficit) & (missing > t.z_threshold * sigma)
        fraction = np.where(group_silent, np.maximum(fraction, lost), fraction)
        blind = tested & roc_blind & (expected < self._group_floor)
        return fraction, blind


def _with_thresholds(model: PixelRing2NMF, thresholds: Thresholds) -> PixelRing2NMF:
    """The ring's model under the joint thresholds (rebuilt only if they differ)."""
    if model.thresholds == thresholds:
        return model
    return PixelRing2NMF(
        model.components, model.model_error, thresholds, model.metadata, model.geometry
    )


def load_model(path: str | Path) -> PixelRing2NMF | JointNMF:
    """The model of a model file, whichever ring(s) it holds (its geometry version says)."""
    payload = load_artifact(path)
    rings = file_rings(payload["geometry_version"])
    if rings == JOINT_RINGS:
        return JointNMF.from_payload(payload, path)
    return PixelRing2NMF.from_payload(payload, rings[0], path)
