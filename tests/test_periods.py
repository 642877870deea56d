"""Models by period (issue 18): one model per detector period, chosen by run number.

A simulated era of two periods: runs 1-2 from detector X (the simulator's default), runs 3 on
from detector Y, the same detector after FPix_BpI_D3_ROG1 died (as FPix_BmO_D1_ROG2 died at
run 382799). Model X is trained on a clean run of X with `--valid-runs 1:2`, model Y on a clean
run of Y with `--valid-runs 3:`. The era judged with both must give each run its own model and
exactly the tables the truth implies; judging Y's runs with X's model instead reports the dead
group as a persistent anomaly in every run (a stale model), which is why the choice matters.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BUILD_KEY, REPO

from mlserver_model.artifact import ArtifactError, load_artifact
from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.errors import OptionError
from pixelring2nmf.model.periods import ModelSet, RunRange, parse_run_range, run_ranges_text
from pixelring2nmf.serving.dism import load_template
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.truthcheck import compare_with_truth

DEAD_IN_Y = "FPix_BpI_D3_ROG1"
TRAIN_PASSES = "150"  # fits these maps to the 5 % model-error floor (as conftest's model)


def _main(*args: str | Path) -> int:
    return cli_main([str(a) for a in args])


def _parquet(folder: Path) -> Path:
    (path,) = folder.glob("*.parquet")
    return path


def _oms(folder: Path) -> Path:
    (path,) = folder.glob("oms*.json")
    return path


@pytest.fixture(scope="module")
def two_periods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The era's two folders (x: runs 1-2, y: runs 3 on) and the two models (a few seconds)."""
    root = tmp_path_factory.mktemp("periods")
    simulator.simulate(root / "x", runs=2, seed=3, ls_per_run=200, first_run=1)
    simulator.simulate(
        root / "y", runs=2, seed=4, ls_per_run=200, first_run=3, dead_groups=[DEAD_IN_Y]
    )
    for name, dead, seed in (("tx", [], 11), ("ty", [DEAD_IN_Y], 12)):
        simulator.simulate(
            root / name, runs=1, seed=seed, ls_per_run=400, first_run=100, clean=True,
            dead_groups=dead,
        )  # fmt: skip
    for name, valid in (("x", "1:2"), ("y", "3:")):
        train = root / f"t{name}"
        code = _main(
            "train", "--parquet", _parquet(train), "--oms", _oms(train), "--passes",
            TRAIN_PASSES, "--out", root / f"model_{name}.joblib", "--valid-runs", valid,
        )  # fmt: skip
        assert code == 0
    return {
        "x": root / "x",
        "y": root / "y",
        "model_x": root / "model_x.joblib",
        "model_y": root / "model_y.joblib",
        "root": root,
    }


def _era(p: dict[str, Path], out: Path, *extra: str | Path, models=None) -> int:
    models = models or [p["model_x"], p["model_y"]]
    return _main(
        "era", "--parquet", p["x"], p["y"], "--oms", _oms(p["x"]), _oms(p["y"]),
        "--model", *models, "--out", out, "--no-progress", "--workers", "1", *extra,
    )  # fmt: skip


def _truth(p: dict[str, Path]) -> pd.DataFrame:
    return pd.concat(
        [pd.read_csv(p[k] / "truth.csv", keep_default_na=False) for k in ("x", "y")],
        ignore_index=True,
    )


def _era_json(out: Path) -> dict:
    return json.loads((out / "era.json").read_text())


# ---------------------------------------------------------------------------------- model file


def test_train_stores_the_period_and_older_files_are_valid_for_every_run(
    two_periods, model_path: Path
) -> None:
    model_x = PixelRing2NMF.load(two_periods["model_x"])
    assert model_x.valid_runs == (1, 2)
    assert PixelRing2NMF.load(two_periods["model_y"]).valid_runs == (3, None)
    assert load_artifact(two_periods["model_y"])["valid_runs"] == {"first": 3, "last": None}
    # conftest's model is written without the field, as every file before periods
    old = PixelRing2NMF.load(model_path)
    assert "valid_runs" not in load_artifact(model_path)
    assert old.valid_runs is None and RunRange.of_model(old).every_run
    assert ModelSet.load([model_path]).single is not None  # one file, every run: as before
    assert ModelSet.load([model_path]).index_of(np.array([1, 382799, 999999])).tolist() == [0] * 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5:3", "--valid-runs '5:3': LAST 3 is before FIRST 5"),
        ("a:b", "--valid-runs 'a:b': expected FIRST:LAST run numbers"),
        ("0:4", "run numbers start at 1"),
    ],
)
def test_a_bad_period_is_one_clear_line(text: str, message: str, tmp_path: Path, capsys) -> None:
    code = _main("train", "--parquet", tmp_path / "none.parquet", "--out", tmp_path / "m.joblib",
                 "--valid-runs", text)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.joblib").exists()


def test_a_file_with_a_broken_period_is_refused(model: PixelRing2NMF, tmp_path: Path) -> None:
    model.metadata["valid_runs"] = {"first": 5, "last": 3}
    try:
        with pytest.raises(ArtifactError, match="last must be null"):
            model.save(tmp_path / "bad.joblib")
    finally:
        del model.metadata["valid_runs"]


def test_ranges_are_named_compactly() -> None:
    assert run_ranges_text([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert parse_run_range("382800:", "--x") == RunRange(382800, None)
    assert parse_run_range("5", "--x") == RunRange(5, 5)
    with pytest.raises(OptionError):
        parse_run_range("3:x", "--x")


# ---------------------------------------------------------------------------------- era


def test_each_run_is_judged_by_its_own_model_and_the_tables_are_the_truth(
    two_periods, tmp_path: Path
) -> None:
    out = tmp_path / "era"
    assert _era(two_periods, out, "--workers", "2") == 0
    results = pd.read_parquet(out / "lumisections.parquet")
    assert results.columns[-1] == "model"
    x, y = str(two_periods["model_x"]), str(two_periods["model_y"])
    expected = np.where(results.run <= 2, x, y)
    assert (results.model.to_numpy() == expected).all()
    assert set(results.run[results.run > 2]) and set(results.run[results.run <= 2]) == {1, 2}
    summary = pd.read_csv(out / "run_summary.csv")
    assert summary.columns[-1] == "Model"
    assert dict(zip(summary.Run_Number, summary.Model, strict=True)) == {
        run: (x if run <= 2 else y) for run in summary.Run_Number
    }
    status = _era_json(out)
    assert status["complete"] is True
    listed = {m["path"]: m for m in status["models"]}
    assert listed[x]["runs"] == [1, 2] and listed[x]["valid_runs"] == {"first": 1, "last": 2}
    assert listed[y]["runs"] == sorted(set(results.run[results.run > 2]))
    assert listed[y]["validity"] == "runs 3 onwards" and len(listed[y]["sha256"]) == 64
    # the tables the truth implies: every planted anomaly found, no false row, no dead group
    powergroup = pd.read_csv(out / "powergroup.csv", keep_default_na=False)
    unjudged = PixelRing2NMF.load(two_periods["model_y"]).unjudged_groups
    comparison = compare_with_truth(powergroup, _truth(two_periods), unjudged)
    assert comparison.perfect, comparison.describe()
    assert sum(comparison.injected.values()) >= 4
    assert pd.read_csv(out / "persistent.csv").empty


def test_judging_a_period_with_the_other_periods_model_gives_a_wrong_answer(
    two_periods, tmp_path: Path
) -> None:
    """Model X knows nothing of the group that died: in Y's runs it is anomalous in every LS,
    reported as a persistent anomaly of every run; model Y knows it is dead."""
    stale = tmp_path / "x_on_y.joblib"
    model_x = PixelRing2NMF.load(two_periods["model_x"])
    del model_x.metadata["valid_runs"]  # the same model, valid for every run
    model_x.save(stale)
    results = {}
    for name, model in (("right", two_periods["model_y"]), ("stale", stale)):
        out = tmp_path / name
        code = _main(
            "era", "--parquet", two_periods["y"], "--oms", _oms(two_periods["y"]), "--model",
            model, "--out", out, "--no-progress", "--workers", "1",
        )  # fmt: skip
        assert code == 0
        results[name] = pd.read_csv(out / "persistent.csv")
    assert results["right"].empty
    assert set(results["stale"].Powergroup) == {DEAD_IN_Y}
    assert len(results["stale"]) == 2  # every run of the period


def test_runs_covered_by_no_model_are_refused_before_any_work(
    two_periods, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "era"
    assert _era(two_periods, out, models=[two_periods["model_x"]]) == 2
    err = capsys.readouterr().err
    runs_y = run_ranges_text(pd.read_csv(two_periods["y"] / "truth.csv").run)
    assert f"run(s) covered by no model: {runs_y} (models: " in err
    assert f"{two_periods['model_x']} (runs 1-2)" in err and "--skip-uncovered" in err
    status = _era_json(out)
    assert status["state"] == "failed" and "covered by no model" in status["reason"]
    assert pd.read_parquet(out / "lumisections.parquet").empty  # nothing judged


def test_runs_covered_by_two_models_are_refused(two_periods, tmp_path: Path, capsys) -> None:
    overlapping = tmp_path / "x_to_3.joblib"
    model_x = PixelRing2NMF.load(two_periods["model_x"])
    model_x.metadata["valid_runs"] = {"first": 1, "last": 3}
    model_x.save(overlapping)
    out = tmp_path / "era"
    assert _era(two_periods, out, models=[overlapping, two_periods["model_y"]]) == 2
    err = capsys.readouterr().err
    assert "1 run(s) covered by two models, run(s) 3 by " in err
    assert f"{overlapping} and {two_periods['model_y']}" in err
    assert pd.read_parquet(out / "lumisections.parquet").empty
    # --skip-uncovered does not settle a run two models claim
    assert _era(two_periods, tmp_path / "b", "--skip-uncovered",
                models=[overlapping, two_periods["model_y"]]) == 2  # fmt: skip


def test_skip_uncovered_judges_the_rest_and_lists_the_skipped(two_periods, tmp_path) -> None:
    out = tmp_path / "era"
    assert _era(two_periods, out, "--skip-uncovered", models=[two_periods["model_x"]]) == 0
    results = pd.read_parquet(out / "lumisections.parquet")
    assert set(results.run) == {1, 2}
    skipped = sorted(set(pd.read_csv(two_periods["y"] / "truth.csv").run))
    status = _era_json(out)
    assert status["skipped_runs"] == skipped
    assert status["models"][0]["runs"] == [1, 2]
    assert any("--skip-uncovered" in w for w in status["warnings"])


def test_exclude_runs_leaves_ranges_out(two_periods, tmp_path: Path) -> None:
    out = tmp_path / "era"
    assert _era(two_periods, out, "--exclude-runs", "2:3") == 0
    results = pd.read_parquet(out / "lumisections.parquet")
    assert not set(results.run) & {2, 3} and 1 in set(results.run)
    status = _era_json(out)
    assert status["exclude_runs"] == ["2:3"]
    assert status["excluded_runs"] == [2, 3]
    # an excluded run needs no model: model X alone with Y's runs excluded judges 1-2
    assert _era(two_periods, tmp_path / "b", "--exclude-runs", "3:",
                models=[two_periods["model_x"]]) == 0  # fmt: skip
    assert _main("era", "--parquet", two_periods["x"], "--out", tmp_path / "c",
                 "--exclude-runs", "4:1") == 2  # fmt: skip


# ---------------------------------------------------------------------------------- predict, plot


def test_predict_with_two_models(two_periods, tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    both = tmp_path / "both.parquet"
    tables = [pq.read_table(_parquet(two_periods[k])) for k in ("x", "y")]
    pq.write_table(pa.concat_tables(tables), both)
    out = tmp_path / "predict.csv"
    models = [two_periods["model_x"], two_periods["model_y"]]
    assert _main("predict", "--parquet", both, "--model", *models, "--out", out) == 0
    printed = capsys.readouterr().out
    assert f"Model {models[0]} (runs 1-2): run(s) 1-2" in printed
    assert printed.count("[INFO]: Flagging results (after filtering)") == 2
    table = pd.read_csv(out)
    assert table.columns[-1] == "model" and len(table) == sum(t.num_rows for t in tables)
    assert (table.model == np.where(table.run <= 2, str(models[0]), str(models[1]))).all()
    assert _main("predict", "--parquet", both, "--model", models[0]) == 2
    assert "covered by no model" in capsys.readouterr().err


def test_plot_takes_the_model_of_the_run(two_periods, tmp_path: Path, capsys) -> None:
    models = [two_periods["model_x"], two_periods["model_y"]]
    parquets = [two_periods["x"], two_periods["y"]]
    out = tmp_path / "ls.png"
    assert _main("plot", "--parquet", *parquets, "--run", "3", "--ls", "10", "--model",
                 *models, "--out", out) == 0  # fmt: skip
    assert out.stat().st_size > 0
    assert f"run 3 judged by {models[1]} (runs 3 onwards)" in capsys.readouterr().out
    assert _main("plot", "--parquet", *parquets, "--run", "3", "--ls", "10", "--model",
                 models[0], "--out", tmp_path / "b.png") == 2  # fmt: skip
    assert "covered by no model: 3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- build


def _template(tmp_path: Path, model: Path, **conditions) -> Path:
    content = yaml.safe_load((REPO / "template.yaml").read_text())
    properties = content["Resources"][BUILD_KEY]["Properties"]
    properties["CodeUri"] = str(REPO / "mlserver_model")
    properties["ModelUri"] = str(model)
    for name, value in conditions.items():
        if value is None:
            properties["InferenceOnConditions"].pop(name, None)
        else:
            properties["InferenceOnConditions"][name] = value
    path = tmp_path / f"template-{len(list(tmp_path.glob('template-*')))}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _built_conditions(build: Path) -> dict:
    """The built template's conditions, after the dism-core check `build` makes (its ModelUri
    is the file's name beside the code, as dismcli writes it: pointed there to be checked)."""
    content = yaml.safe_load((build / "template.yaml").read_text())
    properties = content["Resources"][BUILD_KEY]["Properties"]
    properties["ModelUri"] = str(Path(properties["CodeUri"]) / properties["ModelUri"])
    (build / "checked.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    with contextlib.chdir(build):  # its paths are relative to the build
        template = load_template("checked.yaml")
    return template.Resources[BUILD_KEY].Properties.InferenceOnConditions.model_dump()


def test_build_writes_and_checks_the_run_conditions(
    two_periods, model_path, tmp_path: Path, monkeypatch, capsys
) -> None:
    build = tmp_path / "build"
    monkeypatch.setenv("BUILD_PATH", str(build))
    model_x, model_y = two_periods["model_x"], two_periods["model_y"]
    # written when the template leaves them out; an open period writes no MaxRunNumber
    template = _template(tmp_path, model_y, MinRunNumber=None, MaxRunNumber=None)
    assert _main("build", "-f", template) == 0
    assert "MinRunNumber 3, no MaxRunNumber written from the model's period (runs 3 onwards)" in (
        capsys.readouterr().out
    )
    conditions = _built_conditions(build)
    assert conditions["MinRunNumber"] == 3 and conditions["MaxRunNumber"] is None
    assert (
        "MinRunNumber"
        not in yaml.safe_load(template.read_text())["Resources"][BUILD_KEY]["Properties"][
            "InferenceOnConditions"
        ]
    )  # the template given is never rewritten
    # checked, and said, when the template states them
    template = _template(tmp_path, model_x, MinRunNumber=1, MaxRunNumber=2)
    assert _main("build", "-f", template) == 0
    assert "MinRunNumber 1, MaxRunNumber 2 agree with the model's period (runs 1-2)" in (
        capsys.readouterr().out
    )
    assert _built_conditions(build)["MaxRunNumber"] == 2
    # a disagreement is refused (the previous build stays), unless --runs-from-model
    template = _template(tmp_path, model_x)  # the repository's 382800-999999
    assert _main("build", "-f", template) == 2
    err = capsys.readouterr().err
    assert "MinRunNumber 382800, MaxRunNumber 999999 disagree with the period" in err
    assert "(runs 1-2)" in err and "--runs-from-model" in err
    assert _built_conditions(build)["MaxRunNumber"] == 2
    assert _main("build", "-f", template, "--runs-from-model") == 0
    assert "replaced by the model's period" in capsys.readouterr().out
    conditions = _built_conditions(build)
    assert (conditions["MinRunNumber"], conditions["MaxRunNumber"]) == (1, 2)
    # an older model file states no period: the template's conditions are kept, and said
    assert _main("build", "-f", _template(tmp_path, model_path)) == 0
    assert "states no period (valid for every run)" in capsys.readouterr().out
    conditions = _built_conditions(build)
    assert (conditions["MinRunNumber"], conditions["MaxRunNumber"]) == (382800, 999999)


def test_a_row_group_of_both_periods_is_split_by_model_here_and_on_dask(
    two_periods, tmp_path: Path
) -> None:
    """One row group holding the runs of both periods: its footer cannot say which runs it
    holds (its run column is read before any judging), every chunk holds LS of both models
    and is split by model; in this process and on a Dask cluster's workers (the models in the
    plugin) the results are those of the two files judged apart."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mixed = tmp_path / "mixed" / "both.parquet"
    mixed.parent.mkdir()
    tables = [pq.read_table(_parquet(two_periods[k])) for k in ("x", "y")]
    pq.write_table(pa.concat_tables(tables), mixed, row_group_size=1_000_000)
    assert pq.ParquetFile(mixed).metadata.num_row_groups == 1
    oms = [_oms(two_periods["x"]), _oms(two_periods["y"])]
    models = [two_periods["model_x"], two_periods["model_y"]]
    assert _era(two_periods, tmp_path / "apart") == 0
    reference = pd.read_parquet(tmp_path / "apart" / "lumisections.parquet")
    for where in (("--workers", "1"), ("--dask", "local:1")):
        out = tmp_path / where[1].replace(":", "")
        code = _main("era", "--parquet", mixed, "--oms", *oms, "--model", *models, "--out", out,
                     "--no-progress", *where)  # fmt: skip
        assert code == 0, where
        pd.testing.assert_frame_equal(pd.read_parquet(out / "lumisections.parquet"), reference)
        status = _era_json(out)
        assert [m["runs"] for m in status["models"]] == [
            m["runs"] for m in _era_json(tmp_path / "apart")["models"]
        ]
    # the one row group holds an uncovered run too: refused before judging, also here
    assert _main("era", "--parquet", mixed, "--model", models[0], "--out", tmp_path / "no",
                 "--no-progress", "--workers", "1") == 2  # fmt: skip
