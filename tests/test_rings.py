"""Both rings in the runtime: Ring 1 geometry (docs/domain.md, Ring 1), one-ring model files of
either ring, and the joint decision (mlserver_model/joint.py) on maps drawn from smooth models.

The models here are built from hand-made smooth components, not trained: these tests are about
geometry, files and the decision rule, and must not depend on the simulator or on training.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlserver_model import geometry as g
from mlserver_model.artifact import JOINT_GEOMETRY_VERSION, ArtifactError
from mlserver_model.errors import InputError
from mlserver_model.joint import JOINT_MODEL_NAME, JointNMF, load_model
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross, remove_cross

DEAD_TWO_DISKS = ("FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3")


def smooth_components(geometry: g.RingGeometry, k: int = 3) -> np.ndarray:
    """(k, rows, 48) positive smooth shapes of mean 1: radial fall-off, azimuth, z asymmetry."""
    rows, columns = np.meshgrid(
        np.arange(geometry.model_shape[0]), np.arange(geometry.model_shape[1]), indexing="ij"
    )
    phase = rows / geometry.model_shape[0] * 2 * np.pi
    shapes = [
        1.0 + 0.3 * np.cos(phase),
        1.0 + 0.5 * (columns % 8) / 7,
        1.0 + 0.4 * (columns >= 24) + 0.2 * np.sin(phase),
    ][:k]
    components = np.stack(shapes).astype(np.float32)
    return components / components.mean(axis=(1, 2), keepdims=True)


def ring_model(geometry: g.RingGeometry) -> PixelRing2NMF:
    return PixelRing2NMF(
        smooth_components(geometry), np.full(geometry.model_shape, 0.05), geometry=geometry
    )


def draw_maps(model: PixelRing2NMF, occupancy: float, n: int, seed: int, dead=()) -> np.ndarray:
    """(n, rows, 56) Poisson maps of `occupancy` clusters per ROC, `dead` groups silent."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, (n, len(model.components)))
    weights *= occupancy / weights.sum(axis=1, keepdims=True)
    counts = rng.poisson(weights @ model.components)
    for name in dead:
        counts[:, model.geometry.group_id_flat == g.group_index(name)] = 0
    return insert_cross(counts.reshape(n, *model.geometry.model_shape), 0, model.geometry).astype(
        np.int32
    )


@pytest.fixture(scope="module")
def joint() -> JointNMF:
    return JointNMF({1: ring_model(g.RING1), 2: ring_model(g.RING2)})


# ---- geometry ------------------------------------------------------------------------------


def test_ring1_map_cross_and_rocs():
    ring1 = g.RING1
    assert (ring1.map_shape, ring1.model_shape, ring1.n_rocs) == ((92, 56), (88, 48), 4224)
    assert ring1.cross_rows == slice(44, 48) and ring1.blades == (*range(-11, 0), *range(1, 12))
    assert (ring1.group_id_map[44:48] == -1).all() and (ring1.group_id_map[:, 24:32] == -1).all()
    assert ring1.group_n_rocs.sum() == 4224 and (ring1.group_id_flat >= 0).all()
    assert ring1.me.endswith("PXRing_1") and g.RING2.me.endswith("PXRing_2")


@pytest.mark.parametrize(
    ("name", "blades"),
    [
        ("FPix_BpI_D2_ROG1", (1, 3)),
        ("FPix_BpI_D2_ROG2", (4, 6)),
        ("FPix_BpI_D2_ROG3", (7, 8)),
        ("FPix_BmO_D1_ROG4", (-11, -9)),
    ],
)
def test_ring1_groups_cover_their_blade_ranges(name, blades):
    ring1 = g.RING1
    rows, columns = np.nonzero(ring1.group_id_map == g.group_index(name))
    first, last = blades
    assert (
        rows.min() == ring1.blade_rows(first).start
        and rows.max() == ring1.blade_rows(last).stop - 1
    )
    disk = (1 if "_Bp" in name else -1) * int(name[10])
    assert (columns.min(), columns.max() + 1) == (
        ring1.disk_columns(disk).start,
        ring1.disk_columns(disk).stop,
    )


def test_ring1_roc_names_are_unique_and_name_ring_1():
    ring1 = g.RING1
    names = [
        ring1.roc_name(r, c) for r in range(92) for c in range(56) if ring1.group_id_map[r, c] >= 0
    ]
    assert len(set(names)) == 4224 and all("_RNG1_" in n for n in names)
    assert ring1.roc_name(0, 0) == "FPix_BmO_D3_BLD11_PNL2_RNG1_ROC15"
    with pytest.raises(ValueError, match="cross"):
        ring1.roc_name(44, 0)
    with pytest.raises(ValueError, match="outside"):
        ring1.roc_name(92, 0)


def test_ring2_names_are_the_ring2_geometry():
    assert g.MAP_SHAPE == g.RING2.map_shape == (140, 56) and g.N_ROCS == 6528
    assert g.GROUP_ID_MAP is g.RING2.group_id_map
    assert g.ring_geometry("Ring 1") is g.RING1 and g.ring_geometry(2) is g.RING2
    with pytest.raises(ValueError, match="rings 1 and 2"):
        g.ring_geometry(3)


def test_ring1_cross_round_trip_and_group_totals():
    maps = np.random.default_rng(0).integers(0, 50, (3, 92, 56))
    model_space = remove_cross(maps, g.RING1)
    assert model_space.shape == (3, 88, 48)
    back = insert_cross(model_space, 0, g.RING1)
    kept = g.RING1.group_id_map >= 0
    assert (back[:, kept] == maps[:, kept]).all() and (back[:, ~kept] == 0).all()
    totals = g.RING1.group_totals_map(maps.reshape(3, -1).astype(np.float32))
    by_hand = [[maps[i][g.RING1.group_id_map == j].sum() for j in range(48)] for i in range(3)]
    np.testing.assert_allclose(totals, by_hand)


# ---- model files -------------------------------------------------------------------------------


def test_ring1_model_file_round_trip_keeps_its_ring(tmp_path):
    model = ring_model(g.RING1)
    loaded = PixelRing2NMF.load(model.save(tmp_path / "ring1.joblib"))
    assert loaded.geometry is g.RING1 and loaded.name == "pixel-ring1-nmf"
    assert loaded.metadata["geometry_version"] == g.RING1.version
    np.testing.assert_array_equal(loaded.components, model.components)
    assert type(load_model(tmp_path / "ring1.joblib")) is PixelRing2NMF


def test_joint_model_file_round_trip(joint, tmp_path):
    path = joint.save(tmp_path / "fpix.joblib")
    loaded = load_model(path)
    assert isinstance(loaded, JointNMF) and loaded.name == JOINT_MODEL_NAME
    assert loaded.metadata["geometry_version"] == JOINT_GEOMETRY_VERSION
    for ring in (1, 2):
        np.testing.assert_array_equal(loaded.rings[ring].components, joint.rings[ring].components)
        assert loaded.rings[ring].geometry is g.RINGS[ring]
    with pytest.raises(ArtifactError, match="joint"):
        PixelRing2NMF.load(path)


def test_a_ring1_array_in_a_ring2_file_is_refused(tmp_path):
    model = ring_model(g.RING1)
    path = model.save(tmp_path / "ring1.joblib")
    import pickle

    payload = pickle.loads(path.read_bytes())
    payload["geometry_version"] = g.RING2.version  # claims Ring 2, holds (K, 88, 48)
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(ArtifactError, match=r"shape must be \(K, 136, 48\)"):
        PixelRing2NMF.load(path)


# ---- the decision ------------------------------------------------------------------------------


def test_ring1_model_flags_a_rog_dead_on_two_disks():
    model = ring_model(g.RING1)
    result = model.predict(draw_maps(model, 200.0, 20, seed=1, dead=DEAD_TWO_DISKS))
    assert result.flag.all() and set(result.anomaly_type) == {"Multi-Disk"}
    assert all(set(groups.split(";")) == set(DEAD_TWO_DISKS) for groups in result.groups())
    healthy = model.predict(draw_maps(model, 200.0, 50, seed=2))
    assert not healthy.flag.any() and not healthy.anomalous_groups.any()


def test_ring_mismatch_of_maps_is_an_input_error():
    with pytest.raises(InputError, match=r"Ring 1 maps of shape \(n, 92, 56\)"):
        ring_model(g.RING1).predict(np.zeros((2, 140, 56)))


@pytest.mark.parametrize("occupancy", [1.0, 3.0])
def test_joint_catches_at_an_occupancy_where_neither_ring_alone_can(joint, occupancy):
    maps = {
        ring: draw_maps(model, occupancy, 40, seed=ring, dead=DEAD_TWO_DISKS)
        for ring, model in joint.rings.items()
    }
    for ring, model in joint.rings.items():
        assert not model.predict(maps[ring]).flag.any()  # each ring's ROCs too sparse to judge
    result = joint.predict(maps)
    assert result.flag.all() and set(result.anomaly_type) == {"Multi-Disk"}
    assert all(set(groups.split(";")) == set(DEAD_TWO_DISKS) for groups in result.groups())


@pytest.mark.parametrize("occupancy", [0.5, 3.0, 30.0, 300.0])
def test_joint_does_not_flag_healthy_lumisections(joint, occupancy):
    maps = {
        ring: draw_maps(model, occupancy, 100, seed=10 + ring)
        for ring, model in joint.rings.items()
    }
    result = joint.predict(maps)
    assert not result.flag.any() and not result.anomalous_groups.any()


def test_joint_judges_a_lumisection_of_one_ring_on_that_ring(joint):
    ring1_only = {1: draw_maps(joint.rings[1], 30.0, 10, seed=5, dead=DEAD_TWO_DISKS)}
    assert joint.predict(ring1_only).flag.all()
    healthy = {2: draw_maps(joint.rings[2], 30.0, 10, seed=6)}
    assert not joint.predict(healthy).flag.any()


def test_joint_a_group_dead_in_one_ring_counts_by_that_rings_share_of_its_rocs(joint):
    """One ring's part of a group lost (Ring 2 alone: the other ring keeps its clusters) is not
    the silent group of a readout outage: the pooled group is ~70 % short, so the group-total
    test stays out (it needs the clusters of both rings gone) and the ROC count decides: its
    share is Ring 2's share of the group's live ROCs, still anomalous as Ring 2 alone says."""
    maps = {
        1: draw_maps(joint.rings[1], 300.0, 20, seed=7),
        2: draw_maps(joint.rings[2], 300.0, 20, seed=8, dead=DEAD_TWO_DISKS),
    }
    fraction, _ = joint.group_fractions(maps)
    dead = [g.group_index(n) for n in DEAD_TWO_DISKS]
    # Ring 2's part is 100 % bad, Ring 1's healthy: the pooled share is Ring 2's share of ROCs
    share = g.RING2.group_n_rocs[dead] / (g.RING1.group_n_rocs[dead] + g.RING2.group_n_rocs[dead])
    np.testing.assert_allclose(fraction[:, dead], np.broadcast_to(share, (20, 2)), atol=0.02)


def test_joint_refuses_rings_of_different_lengths_and_no_maps(joint):
    with pytest.raises(InputError, match="same lumisections"):
        joint.predict({1: np.zeros((2, 92, 56)), 2: np.zeros((3, 140, 56))})
    with pytest.raises(InputError, match="Ring 1, Ring 2 or both"):
        joint.predict({})
    with pytest.raises(InputError, match=r"Ring 2 maps of shape \(n, 140, 56\)"):
        joint.predict({2: np.zeros((2, 92, 56))})
