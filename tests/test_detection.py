"""Detection when the data are not the model's own: mismatch, overdispersion, edge cases.

The acceptance bars of `bench/detection.py` (no flag on clean LS, Single-Disk, dead-module and
hot-ROC LS; >= 99 % of ROGs dead on 2 or 3 disks and of dead quarters, >= 95 % of 60 %-dead
ROGs, from 50 clusters per ROC) are checked here on fewer LS, with a small model trained in
a fixture on simulated clean maps, so nothing depends on the shipped model file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlserver_model import pixelring2nmf as pipeline
from mlserver_model.geometry import GROUP_ID_FLAT, group_index
from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf import cli
from pixelring2nmf.model.train import train_model
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.evaluation import (
    BAR_OCCUPANCIES,
    HOT_ROC_SCENARIOS,
    OCCUPANCIES,
    SCENARIOS_BY_NAME,
    Level,
    Rule,
    StudySize,
    clean_training_maps,
    detection_study,
    detector_maker,
    failures,
    real_component_maker,
    score_era,
    significance_only,
)
from pixelring2nmf.validation.mismatch import MISMATCH_LEVELS, NONE, Mismatch, refit_pair
from pixelring2nmf.validation.original import OriginalPipeline

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REAL_COMPONENTS = REFERENCE / "ring2_nmf_components_2025C.npy"
WORST = Mismatch("field 30 % + overdispersion 10 %", field_amplitude=0.3, overdispersion=0.1)
MUST_FLAG = [n for n, s in SCENARIOS_BY_NAME.items() if s.must_flag is not None]
MUST_STAY_QUIET = [n for n, s in SCENARIOS_BY_NAME.items() if s.must_stay_quiet]
DETECTOR = simulator.default_detector()


simulated_maker = detector_maker(DETECTOR)


@pytest.fixture(scope="module")
def model() -> PixelRing2NMF:
    """A small model of the simulated detector (fewer LS and passes than a real one)."""
    return train_model(
        clean_training_maps(simulated_maker, 500, np.random.default_rng(1)), passes=60
    )


def flags_of(model: PixelRing2NMF):
    return lambda maps: model.predict(maps).flag


def sample(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return simulator.sample_maps(expected, rng)


def test_clean_maps_stay_quiet_under_every_mismatch(model):
    levels = [Level(m.name, m.on(simulated_maker)) for m in MISMATCH_LEVELS]
    rules = [
        Rule("ours", flags_of(model)),
        Rule("significance only", flags_of(significance_only(model))),
    ]
    table = detection_study(
        rules,
        levels,
        sample,
        ~model.unjudged_groups,
        scenarios=[SCENARIOS_BY_NAME["clean"]],
        size=StudySize(clean_ls_per_cell=200),
        seed=3,
    )
    assert set(table.occupancy) == set(OCCUPANCIES)
    assert table[table.rule == "ours"].n_ls.sum() == 200 * len(OCCUPANCIES) * len(levels)
    assert failures(table) == []
    # the mismatch has teeth: without the relative condition the same maps raise flags
    previous = table[(table.rule == "significance only") & (table.level == WORST.name)]
    assert previous[previous.occupancy >= 1000].flagged.sum() > 0


def test_outages_are_found_and_quiet_cases_stay_quiet_under_the_worst_mismatch(model):
    scenarios = [SCENARIOS_BY_NAME[n] for n in MUST_FLAG + MUST_STAY_QUIET if n != "clean"]
    table = detection_study(
        [Rule("ours", flags_of(model))],
        [Level(NONE.name, simulated_maker), Level(WORST.name, WORST.on(simulated_maker))],
        sample,
        ~model.unjudged_groups,
        scenarios=scenarios,
        occupancies=BAR_OCCUPANCIES,
        size=StudySize(anomalous_ls_per_cell=100),
        seed=4,
    )
    assert failures(table) == []
    assert table[table.scenario.isin(MUST_FLAG)].rate.min() >= 0.95


def test_partial_outages_near_the_group_threshold(model):
    """30 % dead on two disks is below the 40 % threshold, 50 % above; 40 % sits on it."""
    names = [f"{p}% of ROG dead on 2 disks" for p in (30, 40, 50)]
    table = detection_study(
        [Rule("ours", flags_of(model))],
        [Level(WORST.name, WORST.on(simulated_maker))],
        sample,
        ~model.unjudged_groups,
        scenarios=[SCENARIOS_BY_NAME[n] for n in names],
        occupancies=BAR_OCCUPANCIES,
        size=StudySize(anomalous_ls_per_cell=100),
        seed=5,
    )
    rate = table.groupby("scenario").rate
    assert rate.max()[names[0]] == 0.0
    assert rate.min()[names[2]] >= 0.9
    # on the threshold a group is anomalous about half of the time (which ROCs die varies)
    assert 0.2 < table[table.scenario == names[1]].rate.mean() < 0.99


def test_low_occupancy_ls_of_20_to_50_clusters_per_roc(model):
    table = detection_study(
        [Rule("ours", flags_of(model))],
        [Level(WORST.name, WORST.on(simulated_maker))],
        sample,
        ~model.unjudged_groups,
        scenarios=[SCENARIOS_BY_NAME[n] for n in ("clean", "dead ROG on 2 disks", "Single-Disk")],
        occupancies=(20, 30, 50),
        size=StudySize(anomalous_ls_per_cell=200, clean_ls_per_cell=300),
        seed=6,
    )
    by_cell = table.set_index(["scenario", "occupancy"]).rate
    assert by_cell["clean"].max() == 0.0 and by_cell["Single-Disk"].max() == 0.0
    # a dead ROG stays visible: only ROCs whose silence would be significant are counted
    assert by_cell[("dead ROG on 2 disks", 30)] >= 0.95
    assert by_cell[("dead ROG on 2 disks", 50)] >= 0.99
    assert by_cell[("dead ROG on 2 disks", 20)] >= 0.5


def test_a_model_trained_on_another_nmf_fit_of_the_period_stays_quiet():
    """Train on maps of one NMF fit of a drifting period, judge maps of a second fit."""
    rng = np.random.default_rng(7)
    pair = refit_pair(simulated_maker, rng, n_ls=300, field_amplitude=0.5, passes=50)
    assert pair.relative_misfit_rms > 0.02  # a real mismatch, not a copy of the first fit
    model = train_model(clean_training_maps(pair.first, 400, np.random.default_rng(8)), passes=60)
    table = detection_study(
        [Rule("ours", flags_of(model))],
        [Level("refit", pair.second)],
        sample,
        ~model.unjudged_groups,
        scenarios=[SCENARIOS_BY_NAME[n] for n in ("clean", "dead ROG on 2 disks")],
        occupancies=(50, 400, 2000),
        size=StudySize(anomalous_ls_per_cell=100, clean_ls_per_cell=300),
        seed=9,
    )
    assert failures(table) == []


def _run_maps(n_ls: int, seed: int, mismatch: Mismatch = NONE) -> tuple[np.ndarray, object]:
    """Expected maps (N, 6528) of a fill-like run (occupancy 900 -> 300) and its generator."""
    rng = np.random.default_rng(seed)
    expected = simulator.expected_maps(DETECTOR, np.linspace(900, 300, n_ls)).reshape(n_ls, -1)
    return mismatch.apply(expected, rng), rng


def _group_rocs(name: str) -> np.ndarray:
    return np.flatnonzero(GROUP_ID_FLAT == group_index(name))


def test_a_module_dying_mid_run_is_not_an_anomaly_but_an_outage_after_it_is(model):
    expected, rng = _run_maps(200, seed=10, mismatch=Mismatch("field 20 %", 0.2))
    group = "FPix_BpO_D2_ROG3"
    module = _group_rocs(group)[:16]  # the first 2 ROC rows x 8 of the group: one module
    expected[100:, module] = 0.0  # dies at LS 100 and stays dead
    expected[150, _group_rocs("FPix_BmI_D1_ROG1")] = 0.0
    expected[150, _group_rocs("FPix_BmI_D3_ROG1")] = 0.0
    maps = insert_cross(sample(expected.reshape(-1, 136, 48), rng))
    result = model.predict(maps)
    assert np.flatnonzero(result.flag).tolist() == [150]
    assert not result.anomalous_groups[:, group_index(group)].any()
    assert (result.metric[100:150] < 1.0).all()


def test_hot_rocs_neither_raise_a_flag_nor_hide_an_outage(model):
    expected, rng = _run_maps(4, seed=11, mismatch=Mismatch("field 20 %", 0.2))
    hot = np.array([_group_rocs(f"FPix_BpI_D{d}_ROG2")[5] for d in (1, 2, 3)])
    expected[:, hot] *= 20.0  # three ROCs counting x20 in every LS
    expected[1, hot[:1]] *= 5.0  # one of them x100
    for ls in (2, 3):  # and the ROG of the hot ROCs dead on two disks, but for them
        for name in ("FPix_BpI_D1_ROG2", "FPix_BpI_D2_ROG2"):
            rocs = np.setdiff1d(_group_rocs(name), hot)
            expected[ls, rocs] = 0.0
    result = model.predict(insert_cross(sample(expected.reshape(-1, 136, 48), rng)))
    assert result.flag.tolist() == [False, False, True, True]


@pytest.mark.parametrize("scenario", HOT_ROC_SCENARIOS)
def test_one_hot_roc_at_10x_to_10000x_never_flags(model, scenario, monkeypatch):
    """One ROC per LS far above its expectation, at every occupancy, own maps and the worst
    mismatch: never a flag. Without the refit the same maps do flag from 1,000x on."""

    def study() -> pd.DataFrame:
        return detection_study(
            [Rule("ours", flags_of(model))],
            [Level(NONE.name, simulated_maker), Level(WORST.name, WORST.on(simulated_maker))],
            sample,
            ~model.unjudged_groups,
            scenarios=[SCENARIOS_BY_NAME[scenario]],
            occupancies=OCCUPANCIES,
            size=StudySize(anomalous_ls_per_cell=100),
            seed=9,
        )

    assert study().flagged.sum() == 0
    if scenario == HOT_ROC_SCENARIOS[-1]:
        monkeypatch.setattr(pipeline, "HOT_SHARE", np.inf)  # no LS is ever refitted
        assert study().flagged.sum() > 0


def test_metric_is_continuous_and_reaches_one_exactly_when_flagged(model):
    table_maps = []
    for fraction_dead in (0.0, 0.2, 0.35, 0.4, 0.45, 0.6, 1.0):
        expected, rng = _run_maps(30, seed=12, mismatch=WORST)
        for name in ("FPix_BmO_D2_ROG3", "FPix_BmO_D3_ROG3"):
            rocs = _group_rocs(name)
            expected[:, rocs[: int(np.ceil(fraction_dead * len(rocs)))]] = 0.0
        table_maps.append(insert_cross(sample(expected.reshape(-1, 136, 48), rng)))
    result = model.predict(np.concatenate(table_maps))
    metric = result.metric.reshape(7, 30)
    assert np.array_equal(result.flag, result.metric >= 1.0)
    medians = np.median(metric, axis=1)
    assert medians[0] < 0.1  # clean under the worst mismatch: far from a flag
    assert np.all(np.diff(medians) > 0)  # grows with the extent of the outage
    assert 0.3 < medians[2] < 1.0 and medians[-1] >= 2.0


def test_the_screen_never_changes_a_decision(model):
    """Screened inference equals judging every group ROC by ROC, on mismatched anomalies."""
    expected, rng = _run_maps(120, seed=13, mismatch=WORST)
    for ls, fraction in zip(range(0, 120, 4), np.linspace(0.2, 1.0, 30), strict=True):
        for name in ("FPix_BpO_D1_ROG4", "FPix_BpO_D3_ROG4"):
            rocs = _group_rocs(name)
            expected[ls, rocs[rng.random(len(rocs)) < fraction]] = 0.0
    maps = insert_cross(sample(expected.reshape(-1, 136, 48), rng))
    # every group whose expectation is not zero is judged ROC by ROC
    every_group = dataclasses.replace(model.thresholds, screen_deficit=-1e30)
    unscreened = PixelRing2NMF(model.components, model.model_error, every_group)
    screened_result, full_result = model.predict(maps), unscreened.predict(maps)
    assert screened_result.flag.sum() >= 10  # the comparison is about LS that flag
    assert np.array_equal(screened_result.flag, full_result.flag)
    assert np.array_equal(screened_result.metric, full_result.metric)


def test_per_roc_bad_map_agrees_with_the_group_search(model):
    expected, rng = _run_maps(3, seed=14, mismatch=WORST)
    expected[1, _group_rocs("FPix_BmI_D2_ROG4")] = 0.0
    maps = insert_cross(sample(expected.reshape(-1, 136, 48), rng))
    per_roc = model.roc_maps(maps)
    bad, reconstruction = per_roc["bad"], per_roc["reconstruction"]
    in_group = insert_cross((GROUP_ID_FLAT == group_index("FPix_BmI_D2_ROG4")).reshape(1, 136, 48))[
        0
    ]
    clearly_live = in_group & (reconstruction[1] > 50)  # silent where ~50+ were expected
    assert clearly_live.sum() > 100
    assert bad[1][clearly_live].all() and not bad[1][~in_group].any()
    assert bad[0].sum() < 10 and bad[2].sum() < 10  # a 30 % misfit leaves (almost) nothing bad


def test_the_original_pipeline_is_rebuilt_from_its_own_nmf():
    maps = clean_training_maps(simulated_maker, 300, np.random.default_rng(15))
    original = OriginalPipeline.train(maps, passes=10)
    assert original.nmf.components_.shape == (5, 136 * 48)
    np.testing.assert_allclose(original.nmf.components_.mean(axis=1), 1.0)
    rng = np.random.default_rng(16)
    expected = simulated_maker(np.array([1500.0, 1500.0, 100.0, 100.0]), rng)
    for ls in (1, 3):
        for name in ("FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3"):
            expected[ls, _group_rocs(name)] = 0.0
    result = original.predict(insert_cross(sample(expected.reshape(-1, 136, 48), rng)))
    # its raw-loss rule sees a dead ROG at high occupancy and misses it at low occupancy
    assert result.flag.tolist() == [False, True, False, False]


def test_a_simulated_era_is_scored_against_its_truth(model, tmp_path):
    paths = simulator.simulate(tmp_path, runs=3, seed=17, ls_per_run=400, anomaly_rate=0.02)
    truth = pd.read_csv(paths["truth"])
    from pixelring2nmf.io.oms import align_oms, read_oms_json
    from pixelring2nmf.io.parquet import read_dials_parquet

    data = read_dials_parquet(paths["parquet"])
    oms = align_oms(read_oms_json(paths["oms"]), data.run, data.ls)
    flags = pd.DataFrame(
        {"run": data.run, "ls": data.ls, "flag": model.predict(data.maps, oms).flag}
    )
    live = np.bincount(GROUP_ID_FLAT, weights=DETECTOR.live_rocs.ravel(), minlength=48)
    score = score_era(truth, {"ours": flags}, live).set_index("category")
    assert score.ls_injected.drop("clean").sum() == len(truth)
    assert score.ls_in_data.sum() == len(data)
    multidisk = score.loc[score.index.str.startswith("Multi-Disk")]
    assert multidisk.ls_injected.sum() > 0
    assert (multidisk.ls_flagged == multidisk.ls_in_data).all()
    quiet = score[score.expected == "quiet"]
    assert quiet.ls_flagged.sum() == 0


@pytest.mark.skipif(not REAL_COMPONENTS.exists(), reason="../shared/reference is absent")
def test_detection_on_maps_from_the_real_components(tmp_path):
    make = real_component_maker(np.load(REAL_COMPONENTS))
    maps = clean_training_maps(make, 600, np.random.default_rng(18))
    parquet = simulator.write_dials_parquet(
        tmp_path / "real_components.parquet", maps, 392642, np.arange(1, len(maps) + 1)
    )
    model_path = tmp_path / "real.joblib"
    assert cli.main(["train", "--parquet", str(parquet), "--out", str(model_path)]) == 0
    model = PixelRing2NMF.load(model_path)
    assert model.metadata["training"]["n_ls_used"] == len(maps)
    table = detection_study(
        [Rule("ours", flags_of(model))],
        [Level(NONE.name, make), Level(WORST.name, WORST.on(make))],
        lambda e, r: r.poisson(e),
        ~model.unjudged_groups,
        scenarios=[SCENARIOS_BY_NAME[n] for n in [*MUST_FLAG, "clean", "Single-Disk"]],
        occupancies=BAR_OCCUPANCIES,
        size=StudySize(anomalous_ls_per_cell=100, clean_ls_per_cell=300),
        seed=19,
    )
    assert failures(table) == []
