"""The logic of the Ring 1 / Ring 2 / joint detection study (bench/detection.py --rings), on
tiny inputs: which ROCs an outage silences, what "caught" means, how the lowest occupancy is
read off a table, and that one small study sees what the bench reports (the joint model catches
a ROG dead on 2 disks at an occupancy where neither ring alone can)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlserver_model.geometry import GROUP_NAMES, RING1, RING2, group_index
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation import rings
from pixelring2nmf.validation.evaluation import StudySize
from pixelring2nmf.validation.mismatch import (
    NONE,
    RING2_COORDINATES,
    Mismatch,
    ring_coordinates,
    smooth_fields,
)


def test_ring2_coordinates_are_the_ones_todays_fields_use():
    mine = ring_coordinates(RING2)
    for name in ("disk", "phi", "radius", "disk_slot"):
        assert np.array_equal(getattr(mine, name), getattr(RING2_COORDINATES, name))
    # the same seed gives today's Ring 2 fields whether or not the ROCs are named
    assert np.array_equal(
        smooth_fields(3, 0.3, np.random.default_rng(1)),
        smooth_fields(3, 0.3, np.random.default_rng(1), RING2_COORDINATES),
    )


def test_one_field_covers_both_rings_coherently():
    fields = smooth_fields(4, 0.3, np.random.default_rng(2), rings.BOTH_COORDINATES)
    assert fields.shape == (4, RING1.n_rocs + RING2.n_rocs)
    assert np.abs(fields - 1).max(axis=1) == pytest.approx(0.3)
    # a ROC of Ring 1 and one of Ring 2 at (nearly) the same place get (nearly) the same field
    one, two = (ring_coordinates(g) for g in (RING1, RING2))
    i = int(np.flatnonzero((one.disk == 2) & (one.radius == 1.0))[0])
    j = int(np.argmin(np.abs(two.phi - one.phi[i]) + 10 * (two.disk != 2) + (two.radius != 1.0)))
    split = rings.split(fields)
    assert np.abs(split[1][:, i] - split[2][:, j]).max() < 0.05


def test_kill_silences_the_group_in_both_rings_and_nothing_else():
    both = np.ones((2, rings.N_BOTH))
    g = group_index("FPix_BpI_D3_ROG3")
    rings.kill(both, np.array([[g], [0]]))
    parts = rings.split(both)
    for ring, geometry in rings.RING_OF.items():
        assert np.array_equal(parts[ring][0] == 0, geometry.group_id_flat == g)
        assert np.array_equal(parts[ring][1] == 0, geometry.group_id_flat == 0)
    assert (parts[1][0] == 0).sum() == 64 and (parts[2][0] == 0).sum() == 160


def test_caught_needs_the_flag_and_the_dead_groups_for_two_disks():
    flag = np.array([True, True, False])
    anomalous = np.zeros((3, len(GROUP_NAMES)), bool)
    anomalous[0, [4, 8]] = True  # both dead groups named
    anomalous[1, 4] = True  # one of them only
    anomalous[2, [4, 8]] = True  # named, not flagged
    dead = np.array([[4, 8]] * 3)
    assert rings.caught(rings.TWO_DISKS, flag, anomalous, dead).tolist() == [True, False, False]
    one = np.array([[4]] * 3)
    assert rings.caught(rings.ONE_DISK, ~flag, anomalous, one).tolist() == [True, True, True]
    assert not rings.caught(rings.CLEAN, flag, anomalous, one[:, :0]).any()


def test_lowest_occupancy_is_where_every_higher_occupancy_passes():
    def rows(rates):
        return pd.DataFrame({"occupancy": [1, 5, 20, 100], "rate": rates})

    assert rings.lowest_occupancy(rows([0.5, 1.0, 1.0, 1.0])) == 5
    assert rings.lowest_occupancy(rows([1.0, 0.98, 0.995, 1.0])) == 20  # a dip above resets it
    assert rings.lowest_occupancy(rows([1.0, 1.0, 1.0, 1.0])) == 1
    assert rings.lowest_occupancy(rows([1.0, 1.0, 1.0, 0.9])) is None


def test_rings_share_the_ls_scale_at_the_stated_ratio():
    make = rings.simulated_both_maker(2.0)
    parts = rings.split(make(np.array([10.0, 300.0]), np.random.default_rng(3)))
    for ring, ratio in ((1, 2.0), (2, 1.0)):
        live = simulator.default_detector(rings.RING_OF[ring]).live_rocs.ravel()
        assert parts[ring][:, live].mean(axis=1) == pytest.approx(ratio * np.array([10, 300]))


@pytest.fixture(scope="module")
def detectors() -> rings.Detectors:
    """Small models of the simulated detector, both rings (fewer LS and passes than the bench)."""
    make = rings.simulated_both_maker()
    rng = np.random.default_rng(5)
    return rings.train_detectors(make, 150, rng, simulator.sample_maps, passes=30)


def test_a_small_study_finds_what_the_bench_reports(detectors):
    make = rings.simulated_both_maker()
    levels = [
        rings.BothLevel(NONE.name, make),
        rings.BothLevel("field 30 %", rings.mismatched(make, Mismatch("f", 0.3))),
    ]
    table = rings.rings_study(
        detectors,
        levels,
        simulator.sample_maps,
        occupancies=(1, 200),
        size=StudySize(anomalous_ls_per_cell=40, clean_ls_per_cell=40),
        seed=7,
    )
    assert len(table) == 2 * 3 * 2 * 3 and set(table.detector) == set(rings.DETECTORS)
    clean = table[table.scenario == rings.CLEAN]
    assert clean.flagged.sum() == 0 and clean.caught.sum() == 0
    two = table[table.scenario == rings.TWO_DISKS].set_index(["level", "occupancy", "detector"])
    for level in (NONE.name, "field 30 %"):
        # at 1 cluster per ROC no single ring can tell, the pooled group total can
        assert two.loc[(level, 1, "joint"), "rate"] == 1.0
        assert two.loc[(level, 1, "Ring 2 alone"), "rate"] == 0.0
        assert two.loc[(level, 1, "Ring 1 alone"), "rate"] == 0.0
        for detector in rings.DETECTORS:
            assert two.loc[(level, 200, detector), "rate"] == 1.0
    one = table[table.scenario == rings.ONE_DISK]
    assert one.flagged.sum() == 0  # a Single-Disk outage is named, never flagged
    assert one[one.occupancy == 200].rate.min() == 1.0
