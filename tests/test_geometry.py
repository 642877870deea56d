"""Ring 2 geometry (docs/domain.md section 2), cross removal, and the folder's loading."""

from __future__ import annotations

import numpy as np
import pytest

from mlserver_model import geometry as g
from mlserver_model.preprocessor import insert_cross, remove_cross


def test_every_roc_bin_belongs_to_exactly_one_power_group():
    masks = g.GROUP_ID_MAP[None] == np.arange(48)[:, None, None]
    per_bin = masks.sum(axis=0)
    cross = np.zeros(g.MAP_SHAPE, bool)
    cross[68:72] = True
    cross[:, 24:32] = True
    assert (per_bin[~cross] == 1).all()
    assert (per_bin[cross] == 0).all()
    assert (~cross).sum() == 6528 == g.N_ROCS


def test_groups_have_128_or_160_rocs_and_rog3_is_the_wide_one():
    assert set(g.GROUP_N_ROCS) == {128, 160}
    assert all((n == 160) == (rog == 3) for n, rog in zip(g.GROUP_N_ROCS, g.GROUP_ROG, strict=True))
    assert g.GROUP_N_ROCS.sum() == 6528
    assert len(set(g.GROUP_NAMES)) == 48


def test_group_blocks_follow_disks_and_blade_ranges():
    # FPix_BpI_D2_ROG3: disk +2 (columns 40..47), blades +9..+13 (rows 104..123)
    rows, cols = np.nonzero(g.GROUP_ID_MAP == g.group_index("FPix_BpI_D2_ROG3"))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (104, 123, 40, 47)
    # FPix_BmO_D1_ROG2: disk -1 (columns 16..23), blades -8..-5 (rows 36..51)
    rows, cols = np.nonzero(g.GROUP_ID_MAP == g.group_index("FPix_BmO_D1_ROG2"))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (36, 51, 16, 23)
    assert g.disk_columns(-3) == slice(0, 8) and g.blade_rows(17) == slice(136, 140)


@pytest.mark.parametrize(
    ("row", "column", "name"),
    [
        (0, 0, "FPix_BmO_D3_BLD17_PNL2_RNG2_ROC15"),
        (1, 3, "FPix_BmO_D3_BLD17_PNL2_RNG2_ROC3"),
        (2, 3, "FPix_BmO_D3_BLD17_PNL1_RNG2_ROC3"),
        (3, 3, "FPix_BmO_D3_BLD17_PNL1_RNG2_ROC12"),
        (72, 16, "FPix_BmI_D1_BLD1_PNL2_RNG2_ROC15"),
        (139, 7, "FPix_BmI_D3_BLD17_PNL1_RNG2_ROC8"),
        (0, 32, "FPix_BpO_D1_BLD17_PNL2_RNG2_ROC7"),
        (5, 50, "FPix_BpO_D3_BLD16_PNL2_RNG2_ROC10"),
        (72, 32, "FPix_BpI_D1_BLD1_PNL2_RNG2_ROC7"),
        (139, 55, "FPix_BpI_D3_BLD17_PNL1_RNG2_ROC0"),
    ],
)
def test_roc_names_on_every_shell(row, column, name):
    assert g.roc_name(row, column) == name


def test_roc_names_are_unique_and_the_cross_has_none():
    names = {g.roc_name(r, c) for r in range(140) for c in range(56) if g.GROUP_ID_MAP[r, c] >= 0}
    assert len(names) == 6528
    with pytest.raises(ValueError, match="cross"):
        g.roc_name(70, 10)
    with pytest.raises(ValueError, match="outside"):
        g.roc_name(140, 0)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([], "none"),
        (["FPix_BmO_D1_ROG2"], "Single-Disk"),
        (["FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3"], "Multi-Disk"),
        (["FPix_BpI_D1_ROG3", "FPix_BpI_D3_ROG3"], "Multi-Disk"),
        (["FPix_BmO_D1_ROG4", "FPix_BmO_D2_ROG4", "FPix_BmO_D3_ROG4"], "Multi-Disk"),
        (["FPix_BpI_D1_ROG3", "FPix_BpO_D2_ROG3"], "Single-Disk"),  # other blade side
        (["FPix_BpI_D1_ROG3", "FPix_BmI_D2_ROG3"], "Single-Disk"),  # other z side
        (["FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG2"], "Single-Disk"),  # other ROG
        ([f"FPix_BmI_D{d}_ROG{r}" for d in (1, 2, 3) for r in (1, 2, 3, 4)], "Quarter"),
    ],
)
def test_anomaly_typing_of_hand_made_group_sets(groups, expected):
    assert g.anomaly_type(groups) == expected


def test_a_quarter_with_a_dead_group_still_counts_when_that_group_cannot_be_judged():
    flags = np.zeros((1, 48), bool)
    flags[0, g.QUARTER_GROUPS[0]] = True
    flags[0, g.group_index("FPix_BmO_D1_ROG2")] = False
    assert g.ANOMALY_TYPES[g.anomaly_type_codes(flags)[0]] == "Multi-Disk"
    unjudged = np.zeros(48, bool)
    unjudged[g.group_index("FPix_BmO_D1_ROG2")] = True
    assert g.ANOMALY_TYPES[g.anomaly_type_codes(flags, unjudged)[0]] == "Quarter"


def test_group_totals_in_map_space_match_a_plain_sum():
    maps = np.random.default_rng(0).random((3, 140, 56)).astype(np.float32)
    totals = g.group_totals_map(maps.reshape(3, -1))
    plain = np.stack([[maps[i][g.GROUP_ID_MAP == k].sum() for k in range(48)] for i in range(3)])
    np.testing.assert_allclose(totals, plain, rtol=1e-5)


def test_cross_removal_round_trip_and_errors():
    maps = np.random.default_rng(1).integers(1, 100, (4, 140, 56))
    model = remove_cross(maps)
    assert model.shape == (4, 136, 48)
    back = insert_cross(model)
    assert not back[:, 68:72].any() and not back[:, :, 24:32].any()
    keep = g.GROUP_ID_MAP >= 0
    np.testing.assert_array_equal(back[:, keep], maps[:, keep])
    with pytest.raises(ValueError, match=r"\(n, 140, 56\), got \(4, 136, 48\)"):
        remove_cross(model)
    with pytest.raises(ValueError, match=r"\(n, 136, 48\), got \(4, 140, 56\)"):
        insert_cross(maps)
