"""Ring 1 and the joint model through the toolkit: train, predict, era, plot, stats, compare.

Real commands (`cli.main`) on the simulator's files: a Ring 1 demo (one Multi-Disk LS), and a
simulation of both rings whose files are cut so that some LS are in one ring only and a run
spans several tasks. The session models (conftest: `ring1_model_path`, `joint_model_path`)
judge them; `train` itself is run on small clean simulations with few passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlserver_model.geometry import RING1, RING2, RINGS
from mlserver_model.joint import JointNMF, load_model
from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.era.joint import RINGS_COLUMN, pair_rings
from pixelring2nmf.era.tables import era_tables
from pixelring2nmf.io.results import ERA_RESULT_COLUMNS
from pixelring2nmf.model.rings import JOINT_RING_NAME, JOINT_RING_NUM, TableRing
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.truthcheck import compare_with_truth

BOTH_ARGS = ("--ring", "both", "--runs", "2", "--ls-per-run", "260", "--seed", "11")
DROPPED_LS = 30  # LS cut from one ring's file (each ring loses a different stretch)
TASK_LS = 100  # row groups of the cut files and era --task-ls: a run spans several tasks


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _parquet(folder: Path, ring: int) -> Path:
    return folder / simulator.parquet_name("Run2025Z", RINGS[ring])


def _oms(folder: Path) -> Path:
    (oms,) = folder.glob("oms*.json")
    return oms


def _truth(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "truth.csv", keep_default_na=False, dtype={"rings": str})


@pytest.fixture(scope="module")
def ring1_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`simulate --scenario demo --ring 1 --seed 1`: one 750-LS run, one Multi-Disk LS."""
    out = tmp_path_factory.mktemp("ring1_demo")
    assert cli_main(["simulate", "--out", str(out), "--scenario", "demo", "--ring", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def ring1_era(ring1_demo: Path, ring1_model_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ring1_era") / "era"
    code = cli_main(
        [
            "era",
            "--parquet",
            str(ring1_demo),
            "--oms",
            str(_oms(ring1_demo)),
            "--model",
            str(ring1_model_path),
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def _cut(source: Path, target: Path, run: int, first: int, last: int) -> int:
    """`source` without run `run`'s LS first..last, in row groups of TASK_LS; LS dropped."""
    table = pq.read_table(source)
    drop = pc.and_(
        pc.equal(table["run_number"], run),
        pc.and_(
            pc.greater_equal(table["ls_number"], first), pc.less_equal(table["ls_number"], last)
        ),
    )
    kept = table.filter(pc.invert(drop))
    pq.write_table(kept, target, row_group_size=TASK_LS)
    return table.num_rows - kept.num_rows


def _quiet_stretch(truth: pd.DataFrame, run: int, start: int) -> int:
    """The first LS >= start of a stretch of DROPPED_LS LS of `run` without any injection."""
    anomalous = set(truth[truth.run == run].ls)
    first = start
    while any(ls in anomalous for ls in range(first, first + DROPPED_LS)):
        first += 1
    return first


@pytest.fixture(scope="module")
def both_rings(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`simulate --ring both`, then each ring's file cut: Ring 1 loses a stretch of the first
    run, Ring 2 one of the second (stretches without injections), so those LS are in one ring."""
    root = tmp_path_factory.mktemp("both_rings")
    sim = root / "sim"
    assert cli_main(["simulate", "--out", str(sim), *BOTH_ARGS]) == 0
    truth = _truth(sim)
    runs = sorted(set(pq.read_table(_parquet(sim, 2), columns=["run_number"])[0].to_pylist()))
    cut = root / "cut"
    cut.mkdir()
    (cut / _oms(sim).name).write_bytes(_oms(sim).read_bytes())
    first1 = _quiet_stretch(truth, runs[0], 20)
    first2 = _quiet_stretch(truth, runs[1], 100)
    last1, last2 = first1 + DROPPED_LS - 1, first2 + DROPPED_LS - 1
    dropped = {
        1: _cut(_parquet(sim, 1), _parquet(cut, 1), runs[0], first1, last1),
        2: _cut(_parquet(sim, 2), _parquet(cut, 2), runs[1], first2, last2),
    }
    return {"sim": sim, "cut": cut, "truth": truth, "dropped": dropped}


# ---------------------------------------------------------------------------- train


def test_train_ring1_and_joint_from_parquet(capsys, tmp_path: Path) -> None:
    """A Ring 1 file trains a Ring 1 model; both rings' files with --joint one joint model of
    both (its period stored); mixing rings without --joint, or --joint on one ring, is refused."""
    sim = tmp_path / "clean"
    args = ["--ring", "both", "--clean", "--runs", "1", "--ls-per-run", "120", "--seed", "2"]
    assert cli_main(["simulate", "--out", str(sim), *args]) == 0
    ring1 = tmp_path / "r1.joblib"
    common = ("--passes", "20", "--oms", _oms(sim))
    code, out, _ = _cli(capsys, "train", "--parquet", _parquet(sim, 1), "--out", ring1, *common)
    assert code == 0 and "Model written" in out
    model = PixelRing2NMF.load(ring1)
    assert model.geometry is RING1 and model.name == "pixel-ring1-nmf"
    assert model.components.shape[1] == RING1.n_rocs

    joint = tmp_path / "fpix.joblib"
    files = (_parquet(sim, 2), _parquet(sim, 1))  # any order: the files say their ring
    code, out, _ = _cli(
        capsys,
        "train",
        "--parquet",
        *files,
        "--joint",
        "--out",
        joint,
        "--valid-runs",
        "1:",
        *common,
    )
    assert code == 0 and "Ring 1 (1 file(s)):" in out and "Ring 2 (1 file(s)):" in out
    fpix = load_model(joint)
    assert isinstance(fpix, JointNMF) and fpix.valid_runs == (1, None)
    assert {r: m.geometry for r, m in fpix.rings.items()} == {1: RING1, 2: RING2}
    assert set(fpix.metadata["training"]) == {"Ring1", "Ring2"}

    code, _, err = _cli(capsys, "train", "--parquet", *files, "--out", tmp_path / "x.joblib")
    assert code == 2 and "--joint" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(
        capsys, "train", "--parquet", files[0], "--joint", "--out", tmp_path / "y.joblib"
    )
    assert code == 2 and "both rings" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- Ring 1 alone


def test_ring1_predict_flags_the_demo_multi_disk_ls(
    capsys, ring1_demo: Path, ring1_model_path: Path, tmp_path: Path
) -> None:
    truth = _truth(ring1_demo)
    (multi,) = truth[truth.anomaly_type == "Multi-Disk"].itertuples()
    out = tmp_path / "p.csv"
    code, stdout, _ = _cli(
        capsys,
        "predict",
        "--parquet",
        _parquet(ring1_demo, 1),
        "--oms",
        _oms(ring1_demo),
        "--model",
        ring1_model_path,
        "--out",
        out,
    )
    assert code == 0 and "[INFO]: Flagging results (after filtering)" in stdout
    results = pd.read_csv(out, keep_default_na=False)
    flagged = results[results.flag]
    assert list(zip(flagged.run, flagged.ls, strict=True)) == [(multi.run, multi.ls)]
    assert flagged.groups.iloc[0] == multi.groups and flagged.type.iloc[0] == "Multi-Disk"


def test_ring1_era_tables_say_ring_1(ring1_era: Path, ring1_demo: Path) -> None:
    status = json.loads((ring1_era / "era.json").read_text())
    assert status["complete"] and status["ring"] == "Ring 1"
    powergroup = pd.read_csv(ring1_era / "powergroup.csv")
    per_ls = pd.read_csv(ring1_era / "per_ls.csv")
    condensed = pd.read_csv(ring1_era / "condensed.csv")
    assert len(powergroup) and set(powergroup.Ring_Num) == {1} and set(per_ls.Ring_Num) == {1}
    assert set(condensed["Row/Quarter"]) == {"Ring 1"}
    truth = _truth(ring1_demo)
    multi = truth[truth.anomaly_type == "Multi-Disk"].iloc[0]
    row = powergroup[powergroup.Anomaly_Type == "Multi-Disk"].iloc[0]
    assert (row.Run_Number, row.Start_LS, row.End_LS) == (multi.run, multi.ls, multi.ls)
    assert row.Powergroup == multi.groups.replace(";", ":")


def test_ring1_plot_stats_compare(
    capsys, ring1_era: Path, ring1_demo: Path, ring1_model_path: Path, tmp_path: Path
) -> None:
    truth = _truth(ring1_demo)
    multi = truth[truth.anomaly_type == "Multi-Disk"].iloc[0]
    png = tmp_path / "ls.png"
    code, _, _ = _cli(
        capsys,
        "plot",
        "--parquet",
        ring1_demo,
        "--run",
        multi.run,
        "--ls",
        multi.ls,
        "--model",
        ring1_model_path,
        "--out",
        png,
    )
    assert code == 0 and png.stat().st_size > 10_000

    code, out, _ = _cli(capsys, "stats", "--era", ring1_era, "--out", tmp_path / "stats")
    assert code == 0 and (tmp_path / "stats" / "powergroups_heatmap.png").is_file()
    table = pd.read_csv(tmp_path / "stats" / "powergroups.csv")
    counted = table.set_index("Powergroup").Anomalous_LS
    assert all(counted[g] >= 1 for g in multi.groups.split(";"))

    # the original's Ring 1 sheet (its layout, Ring_Num 1) and one Ring 2 row, left out
    ours = pd.read_csv(ring1_era / "powergroup.csv").iloc[:, :8]
    ring2_row = ours.iloc[[0]].assign(Ring_Num=2, Start_LS=1, End_LS=1, Num_LS=1)
    original = tmp_path / "original_ring1.csv"
    pd.concat([ours, ring2_row]).to_csv(original, index=False)
    code, out, _ = _cli(
        capsys, "compare", "--era", ring1_era, "--original", original, "--out", tmp_path / "c"
    )
    assert code == 0 and "1 Ring 2 row(s) left out" in out
    counts = json.loads((tmp_path / "c" / "compare.json").read_text())["counts"]
    assert counts["agree"] == len(ours) and counts["only original"] == 0
    assert counts["other_ring_rows"] == 1

    each = tmp_path / "each"
    code, _, _ = _cli(
        capsys, "plot", "--era", ring1_era, "--each-ls", "--out", each, "--workers", 1
    )
    index = pd.read_csv(each / "index.csv")
    assert code == 0 and (multi.run, multi.ls) in set(zip(index.run, index.ls, strict=True))
    assert all((each / name).stat().st_size > 10_000 for name in index.file)


# ---------------------------------------------------------------------------- mismatches


def test_a_ring_mismatch_is_one_line_before_any_work(
    capsys,
    ring1_demo: Path,
    ring1_era: Path,
    demo_files: tuple[Path, Path],
    model_path: Path,
    ring1_model_path: Path,
    tmp_path: Path,
) -> None:
    """Ring 1 data to a Ring 2 model and the reverse: exit 2, one line naming both rings."""
    ring1_file, ring2_file = _parquet(ring1_demo, 1), demo_files[0]
    commands = {
        "predict ring1->ring2": ["predict", "--parquet", ring1_file, "--model", model_path],
        "predict ring2->ring1": ["predict", "--parquet", ring2_file, "--model", ring1_model_path],
        "plot": [
            *("plot", "--parquet", ring1_file, "--run", 390000, "--ls", 1),
            *("--model", model_path, "--out", tmp_path / "x.png"),
        ],
        "era": [
            *("era", "--parquet", ring2_file, "--model", ring1_model_path),
            *("--out", tmp_path / "era", "--workers", "1", "--no-progress"),
        ],
        "stats": ["stats", "--era", ring1_era, "--model", model_path, "--out", tmp_path / "s"],
        "models of two rings": [
            *("predict", "--parquet", ring1_file, "--model", ring1_model_path, model_path)
        ],
    }
    for name, args in commands.items():
        code, out, err = _cli(capsys, *args)
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert code == 2, name
        assert len(errors) == 1 and "Ring 1" in errors[0] and "Ring 2" in errors[0], (name, err)
        assert "Flagging results" not in out, name
    assert not (tmp_path / "x.png").exists()
    status = json.loads((tmp_path / "era" / "era.json").read_text())
    assert status["state"] == "failed" and "Ring 2 maps" in status["reason"]
    assert pd.read_csv(tmp_path / "era" / "lumisections.csv").empty


def test_table_ring_columns() -> None:
    """Ring_Num and Row/Quarter follow the ring; Ring 2's are what they always were."""
    results = pd.DataFrame(
        {
            "run": [5, 5],
            "ls": [1, 2],
            "flag": [True, False],
            "metric": [3.0, 0.0],
            "type": ["Multi-Disk", "none"],
            "groups": ["FPix_BmO_D1_ROG1;FPix_BmO_D2_ROG1", ""],
            "dcs_good": [True, True],
            "dcs_failed": ["", ""],
            "pileup": [50.0, 50.0],
            "recorded_lumi": [0.5, 0.5],
        }
    ).astype(ERA_RESULT_COLUMNS)
    for rings, number, name in (((2,), 2, "Ring 2"), ((1,), 1, "Ring 1")):
        tables = era_tables(results, ring=TableRing.of_rings(rings))
        assert tables.powergroup.Ring_Num.tolist() == [number]
        assert tables.per_ls.Ring_Num.tolist() == [number]
        assert tables.condensed["Row/Quarter"].tolist() == [name]
    joint = era_tables(results, ring=TableRing.of_rings((1, 2)))
    assert joint.powergroup.Ring_Num.tolist() == [JOINT_RING_NUM]
    assert joint.condensed["Row/Quarter"].tolist() == [JOINT_RING_NAME]
    assert era_tables(results).powergroup.equals(
        era_tables(results, ring=TableRing.of_rings((2,))).powergroup
    )


# ---------------------------------------------------------------------------- joint


def test_pair_rings_by_run_and_ls() -> None:
    maps1, maps2 = np.zeros((3, *RING1.map_shape)), np.ones((3, *RING2.map_shape))
    run = np.array([7, 7, 8])
    batches = pair_rings(
        {1: (maps1, run, np.array([1, 2, 1])), 2: (maps2, run, np.array([2, 3, 1]))}
    )
    seen = [(sorted(m), r.tolist(), ls.tolist()) for m, r, ls in batches]
    assert seen == [([1, 2], [7, 8], [2, 1]), ([1], [7], [1]), ([2], [7], [3])]


def _joint_era(cut: Path, model: Path, out: Path, *where: str) -> Path:
    args = ["era", "--parquet", _parquet(cut, 1), _parquet(cut, 2), "--oms", _oms(cut)]
    args += ["--model", model, "--out", out, *where, "--task-ls", TASK_LS, "--no-progress"]
    assert cli_main([str(a) for a in args]) == 0
    return out


@pytest.fixture(scope="module")
def joint_eras(both_rings: dict, joint_model_path: Path, tmp_path_factory) -> dict[str, Path]:
    """The cut files' joint era in 2 worker processes and in this process."""
    root = tmp_path_factory.mktemp("joint_eras")
    return {
        workers: _joint_era(
            both_rings["cut"], joint_model_path, root / workers, "--workers", workers
        )
        for workers in ("2", "1")
    }


def test_joint_era_finds_the_outages_and_counts_one_ring_ls(
    both_rings: dict, joint_eras: dict[str, Path], joint_model_path: Path
) -> None:
    truth = both_rings["truth"]
    eras = joint_eras
    first, second = (eras[w] / "lumisections.csv" for w in ("2", "1"))
    assert first.read_bytes() == second.read_bytes()  # where the tasks ran does not matter

    status = json.loads((eras["2"] / "era.json").read_text())
    dropped = both_rings["dropped"]
    # the LS cut from Ring 1 are in Ring 2 only, and the reverse
    assert status["ring"] == "Ring 1+2"
    assert status["ls_one_ring_only"] == {"Ring 1": dropped[2], "Ring 2": dropped[1]}
    results = pd.read_parquet(eras["2"] / "lumisections.parquet")
    assert results.duplicated(["run", "ls"]).sum() == 0
    assert status["ls_both_rings"] == int((results[RINGS_COLUMN] == "1+2").sum())
    assert len(results) == status["ls_both_rings"] + dropped[1] + dropped[2]

    powergroup = pd.read_csv(eras["2"] / "powergroup.csv", dtype={"Ring_Num": str})
    joint = load_model(joint_model_path)
    check = compare_with_truth(powergroup, truth, joint.unjudged_groups)
    assert sum(check.injected.values()) > 0
    assert check.perfect, check.describe()
    assert set(powergroup.Ring_Num) == {JOINT_RING_NUM}


def test_joint_predict_and_plot(
    capsys, both_rings: dict, joint_model_path: Path, tmp_path: Path
) -> None:
    cut, truth = both_rings["cut"], both_rings["truth"]
    out = tmp_path / "p.csv"
    code, stdout, _ = _cli(
        capsys,
        *("predict", "--parquet", _parquet(cut, 2), _parquet(cut, 1), "--oms", _oms(cut)),
        *("--model", joint_model_path, "--out", out),
    )
    assert code == 0
    assert "LS in both rings" in stdout and "LS in Ring 1 only" in stdout
    results = pd.read_csv(out, dtype={RINGS_COLUMN: str})
    dropped = both_rings["dropped"]
    counts = results[RINGS_COLUMN].value_counts().to_dict()
    assert counts["1"] == dropped[2] and counts["2"] == dropped[1]

    group_outage = truth[truth.rings == "1;2"].iloc[0]
    png = tmp_path / "joint.png"
    code, _, _ = _cli(
        capsys,
        *("plot", "--parquet", cut, "--run", group_outage.run, "--ls", group_outage.ls),
        *("--model", joint_model_path, "--oms", _oms(cut), "--out", png),
    )
    assert code == 0 and png.stat().st_size > 10_000
    row = results[(results.run == group_outage.run) & (results.ls == group_outage.ls)].iloc[0]
    assert set(group_outage.groups.split(";")) <= set(row.groups.split(";"))


def test_joint_era_on_dask_is_the_same(
    both_rings: dict, joint_eras: dict[str, Path], joint_model_path: Path, tmp_path: Path
) -> None:
    """The JointEra travels to the Dask workers (a plugin) and pairs there the same way."""
    pytest.importorskip("distributed")
    out = _joint_era(both_rings["cut"], joint_model_path, tmp_path / "dask", "--dask", "local:2")
    local = joint_eras["1"] / "lumisections.csv"
    assert (out / "lumisections.csv").read_bytes() == local.read_bytes()
    assert (out / "powergroup.csv").read_bytes() == (
        joint_eras["1"] / "powergroup.csv"
    ).read_bytes()


def test_a_joint_era_is_not_mixed_with_one_ring(
    capsys, joint_eras: dict[str, Path], ring1_era: Path, tmp_path: Path
) -> None:
    """stats counts one ring at a time; compare and plot --each-ls refuse a joint era."""
    joint = joint_eras["1"]
    code, _, _ = _cli(capsys, "stats", "--era", joint, "--out", tmp_path / "s")
    assert code == 0 and (tmp_path / "s" / "powergroups.csv").is_file()
    refused = {
        "stats": ["stats", "--era", joint, ring1_era, "--out", tmp_path / "s2"],
        "compare": [
            "compare",
            "--era",
            joint,
            "--original",
            tmp_path / "o.csv",
            "--out",
            tmp_path / "c",
        ],
        "each-ls": ["plot", "--era", joint, "--each-ls", "--out", tmp_path / "e"],
    }
    for name, args in refused.items():
        code, _, err = _cli(capsys, *args)
        assert code == 2 and "Ring 1+2" in err and len(err.strip().splitlines()) == 1, name
