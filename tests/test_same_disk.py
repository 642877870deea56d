"""Same-Disk: a lone anomalous disk of a Multi-Disk candidate whose partner disk cannot be judged.

Since 2024F FPix_BmO_D1_ROG2 is dead, so an outage of BmO ROG2 on disks 1 and 2 shows only on
disk 2. The model must type it `Same-Disk` (not a plain Single-Disk), leave the Flag as it was,
and type the same outage `Multi-Disk` when both disks are live. The session model (conftest) is
trained on the simulator's default detector, in which that group is dead; a second small model
is trained here on a detector in which it is live.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlserver_model import geometry as g
from mlserver_model.bad_ROC import Thresholds, search_significance
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.era.tables import era_tables
from pixelring2nmf.io.results import empty_results
from pixelring2nmf.sim import simulate as simulator

DEAD = "FPix_BmO_D1_ROG2"
OUTAGE = ["FPix_BmO_D1_ROG2", "FPix_BmO_D2_ROG2"]  # BmO ROG2 off on disks 1 and 2
ELSEWHERE = ["FPix_BpI_D1_ROG3"]  # a lone Single-Disk whose partners are all live
OCCUPANCY = 400.0  # clusters per ROC: every live group is judged


def _maps(detector: simulator.Detector, outages: list[list[str]], seed: int = 0) -> np.ndarray:
    """One sampled LS per outage (a list of groups switched off), cross included."""
    expected = simulator.expected_maps(detector, np.full(len(outages), OCCUPANCY))
    for i, groups in enumerate(outages):
        for name in groups:
            expected[i][g.GROUP_ID_MODEL == g.group_index(name)] = 0
    return insert_cross(simulator.sample_maps(expected, np.random.default_rng(seed)))


@pytest.fixture(scope="module")
def live_model() -> tuple[PixelRing2NMF, simulator.Detector]:
    """A model of a detector whose dead group is another one, so BmO D1 ROG2 is live."""
    from pixelring2nmf.model.train import train_model

    with pytest.MonkeyPatch.context() as patch:  # only while this detector is drawn
        patch.setattr(simulator, "PERMANENTLY_DEAD_GROUP", "FPix_BpO_D3_ROG4")
        detector = simulator.make_detector(simulator.DETECTOR_SEED)
    rng = np.random.default_rng(7)
    pileup = rng.uniform(20.0, 65.0, 300)
    expected = simulator.expected_maps(detector, pileup * simulator.NOMINAL_CLUSTERS_PER_PILEUP)
    maps = insert_cross(simulator.sample_maps(expected, rng))
    return train_model(maps, passes=100, seed=0, provenance={"data_files": ["simulated"]}), detector


def test_codes_are_indices_into_the_types_in_severity_order() -> None:
    assert g.ANOMALY_TYPES == ("none", "Single-Disk", "Same-Disk", "Multi-Disk", "Quarter")
    flags = np.zeros((4, 48), bool)
    flags[1, g.group_index("FPix_BpI_D1_ROG3")] = True  # Single-Disk
    flags[2, g.group_index("FPix_BmO_D2_ROG2")] = True  # Same-Disk (D1 unjudged)
    flags[3, g.QUARTER_GROUPS[0]] = True  # Quarter (holds Same-Disk and Multi-Disk shapes)
    flags[3, g.group_index(DEAD)] = False
    unjudged = np.zeros(48, bool)
    unjudged[g.group_index(DEAD)] = True
    codes = g.anomaly_type_codes(flags, unjudged)
    assert [g.ANOMALY_TYPES[c] for c in codes] == ["none", "Single-Disk", "Same-Disk", "Quarter"]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (["FPix_BmO_D2_ROG2"], "Same-Disk"),
        (["FPix_BmO_D3_ROG2"], "Same-Disk"),
        (["FPix_BmO_D2_ROG2", "FPix_BmO_D3_ROG2"], "Multi-Disk"),  # a real Multi-Disk stays
        (["FPix_BmO_D2_ROG2", "FPix_BpI_D1_ROG3"], "Same-Disk"),  # the most severe applies
        (["FPix_BmO_D2_ROG1"], "Single-Disk"),  # other ROG: its partners are live
        (ELSEWHERE, "Single-Disk"),
    ],
)
def test_typing_beside_a_dead_group(groups, expected) -> None:
    assert g.anomaly_type(groups, [DEAD]) == expected
    assert g.anomaly_type(groups) in ("Single-Disk", "Multi-Disk")  # nothing dead: never Same


def test_a_partner_with_too_few_live_rocs_in_the_ls_is_blind_only_if_it_was_tested() -> None:
    """A group the screen passed kept its clusters: judged healthy, not blind."""
    t = Thresholds()
    n_bad = np.zeros((2, 48), np.int32)
    n_live = np.zeros((2, 48), np.int32)
    lone, partner = g.group_index("FPix_BpI_D2_ROG3"), g.group_index("FPix_BpI_D1_ROG3")
    n_bad[:, lone] = n_live[:, lone] = 40
    n_live[:, partner] = t.min_live_rocs - 1
    tested = np.zeros((2, 48), bool)
    tested[:, lone] = True
    tested[0, partner] = True  # LS 0: screened, too few live ROCs; LS 1: passed the screen
    search = search_significance(n_bad, n_live, t, tested=tested)
    assert [g.ANOMALY_TYPES[c] for c in search.type_code] == ["Same-Disk", "Single-Disk"]
    assert (search.metric < t.metric_threshold).all()  # Same-Disk does not flag


def test_dead_partner_in_the_model_gives_same_disk_and_no_flag(model) -> None:
    assert model.unjudged_groups[g.group_index(DEAD)]
    maps = _maps(simulator.default_detector(), [OUTAGE, ELSEWHERE, []])
    result = model.predict(maps)
    assert result.anomaly_type.tolist() == ["Same-Disk", "Single-Disk", "none"]
    assert result.groups() == ["FPix_BmO_D2_ROG2", ELSEWHERE[0], ""]
    assert not result.flag.any()  # the served Flag is as before: Same-Disk does not flag


def test_the_same_outage_with_both_disks_live_is_multi_disk(live_model) -> None:
    model, detector = live_model
    assert not model.unjudged_groups[g.group_index(DEAD)]
    result = model.predict(_maps(detector, [OUTAGE, ELSEWHERE, []], seed=1))
    assert result.anomaly_type.tolist() == ["Multi-Disk", "Single-Disk", "none"]
    assert result.groups()[0] == ";".join(OUTAGE)
    assert result.flag.tolist() == [True, False, False]


def test_the_era_tables_carry_same_disk(model) -> None:
    """Type / Anomaly_Type of the range tables, the per-LS table and a run_summary count."""
    maps = _maps(simulator.default_detector(), [[], OUTAGE, OUTAGE, [], ELSEWHERE])
    result = model.predict(maps)
    results = pd.DataFrame(
        {
            "run": 390001,
            "ls": np.arange(1, 6),
            "flag": result.flag,
            "metric": result.metric.astype(float),
            "type": result.anomaly_type.astype(object),
            "groups": result.groups(),
            "dcs_good": True,
            "dcs_failed": "",
            "pileup": np.nan,
            "recorded_lumi": np.nan,
        }
    )
    assert list(results.columns) == list(empty_results().columns)
    tables = era_tables(results)
    assert tables.condensed.Type.tolist() == ["Same-Disk", "Single-Disk"]
    assert tables.condensed["First LS"].tolist() == [2, 5]
    assert tables.condensed["Last LS"].tolist() == [3, 5]
    assert tables.powergroup.Anomaly_Type.tolist() == ["Same-Disk", "Single-Disk"]
    assert tables.powergroup.Powergroup.tolist()[0] == "FPix_BmO_D2_ROG2"
    assert tables.per_ls.Anomaly_Type.tolist() == ["Same-Disk", "Same-Disk", "Single-Disk"]
    summary = tables.run_summary.iloc[0]
    assert summary["Same-Disk_LS"] == 2 and summary["Single-Disk_LS"] == 1
    assert summary["Flagged_LS"] == 0
