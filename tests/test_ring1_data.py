"""Ring 1 data: `simulate --ring 1|both`, parquets read as their ring, fetch-dials --ring 1.

The files are the real command's outputs (`cli.main`), read back by the toolkit's reader and by
pyarrow. Ring 2 must not move: its files with `--ring 2`, with no option and inside `--ring both`
are compared byte for byte (main's own files are compared by scripts/ring2_outputs.sh).
"""

from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_dials import FakeDials

from mlserver_model.geometry import GROUP_NAMES, RING1, RING2, RINGS
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.errors import DataError
from pixelring2nmf.io.parquet import (
    Ring2Data,
    RingData,
    iter_dials_parquet,
    iter_row_group,
    open_dials_parquet,
    parquet_geometry,
    read_dials_parquet,
    write_dials_parquet,
)
from pixelring2nmf.sim import simulate as simulator

SIM_ARGS = ("--runs", "2", "--ls-per-run", "150", "--seed", "7", "--anomaly-rate", "0.04")
GROUP_KINDS = ("Multi-Disk", "Quarter", "Single-Disk")
TRUTH_COLUMNS = ["run", "ls", "anomaly_type", "groups", "n_dead_rocs"]


def _simulate(out: Path, *extra: str) -> Path:
    assert cli_main(["simulate", "--out", str(out), *SIM_ARGS, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same simulation with no --ring, --ring 2, --ring 1 and --ring both (300 LS each)."""
    root = tmp_path_factory.mktemp("ring1_sims")
    return {
        "default": _simulate(root / "default"),
        "2": _simulate(root / "r2", "--ring", "2"),
        "1": _simulate(root / "r1", "--ring", "1"),
        "both": _simulate(root / "both", "--ring", "both"),
    }


def _parquet(folder: Path, ring: int) -> Path:
    return folder / simulator.parquet_name("Run2025Z", RINGS[ring])


def _truth(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "truth.csv", keep_default_na=False, dtype={"rings": str})


def _group_mask(geometry, names: str) -> np.ndarray:
    """(rows, 56) map bins of these ';'-joined power groups."""
    ids = [GROUP_NAMES.index(name) for name in names.split(";")]
    return np.isin(geometry.group_id_map, ids)


# --------------------------------------------------------------------------- Ring 2 unchanged


def test_ring2_files_are_the_same_with_ring_2_no_option_and_both(sims) -> None:
    """Ring 2's draws never depend on Ring 1: same parquet and OMS bytes in all three."""
    default, ring2, both = sims["default"], sims["2"], sims["both"]
    assert sorted(p.name for p in default.iterdir()) == sorted(p.name for p in ring2.iterdir())
    for name in (_parquet(default, 2).name, "omsdata_Run2025Z-v1.json", "truth.csv"):
        assert (default / name).read_bytes() == (ring2 / name).read_bytes(), name
    assert _parquet(both, 2).read_bytes() == _parquet(default, 2).read_bytes()
    oms = "omsdata_Run2025Z-v1.json"
    assert (both / oms).read_bytes() == (default / oms).read_bytes()
    assert list(_truth(default).columns) == TRUTH_COLUMNS  # no `rings` column for Ring 2
    # the same anomalies, in the same LS; `rings` appended last
    truth_both = _truth(both)
    assert list(truth_both.columns) == [*TRUTH_COLUMNS, "rings"]
    keys = ["run", "ls", "anomaly_type", "groups"]
    in_ring2 = truth_both[truth_both.rings != "1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(in_ring2[keys], _truth(default)[keys])


# --------------------------------------------------------------------------- Ring 1 files


def test_ring1_file_is_read_as_ring1(sims) -> None:
    folder = sims["1"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([_parquet(folder, 1).name, "omsdata_Run2025Z-v1.json", "truth.csv"])
    path = _parquet(folder, 1)
    assert path.name.endswith(
        "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_1.parquet"
    )
    table = pq.read_table(path, columns=["me", "x_bin", "y_bin", "y_min", "y_max", "x_min"])
    assert set(table.column("me").to_pylist()) == {RING1.me}
    assert set(table.column("x_bin").to_pylist()) == {56.0}
    assert set(table.column("y_bin").to_pylist()) == {92.0}
    assert set(table.column("y_min").to_pylist()) == {-11.5}
    assert set(table.column("y_max").to_pylist()) == {11.5}
    assert parquet_geometry(path) is RING1
    data = read_dials_parquet(path)
    assert isinstance(data, RingData) and Ring2Data is RingData
    assert data.geometry is RING1 and data.ring == 1
    assert data.maps.shape == (len(data), 92, 56) and len(data) > 250
    assert not data.maps[:, RING1.cross_rows].any() and not data.maps[:, :, 24:32].any()
    chunks = list(iter_dials_parquet(path, max_ls=100))
    assert {c.geometry for c in chunks} == {RING1}
    np.testing.assert_array_equal(np.concatenate([c.maps for c in chunks]), data.maps)
    with open_dials_parquet(path) as parquet_file:
        first = next(iter_row_group(parquet_file, 0, path, max_ls=50))
    assert first.geometry is RING1 and first.maps.shape[1:] == (92, 56)
    truth = _truth(folder)
    assert list(truth.columns) == [*TRUTH_COLUMNS, "rings"] and set(truth.rings) == {"1"}


def test_ring1_occupancy_is_higher_than_ring2s(sims) -> None:
    """Same pileup, ~1.6x the clusters per ROC (closer to the beam)."""
    ring1 = read_dials_parquet(_parquet(sims["both"], 1))
    ring2 = read_dials_parquet(_parquet(sims["both"], 2))
    per_roc_1 = ring1.maps.sum(axis=(1, 2)) / RING1.n_rocs
    per_roc_2 = ring2.maps.sum(axis=(1, 2)) / RING2.n_rocs
    busy = per_roc_2 > 300
    ratio = np.median(per_roc_1[busy] / per_roc_2[busy])
    assert 1.45 < ratio < 1.75, ratio


def test_both_rings_share_their_ls_and_their_group_outages(sims) -> None:
    folder = sims["both"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            _parquet(folder, 1).name,
            _parquet(folder, 2).name,
            "omsdata_Run2025Z-v1.json",
            "truth.csv",
        ]
    )
    ring1, ring2 = (read_dials_parquet(_parquet(folder, r)) for r in (1, 2))
    assert ring1.geometry is RING1 and ring2.geometry is RING2
    np.testing.assert_array_equal(ring1.run, ring2.run)
    np.testing.assert_array_equal(ring1.ls, ring2.ls)
    oms = json.loads((folder / "omsdata_Run2025Z-v1.json").read_text())
    oms_keys = set(zip(oms["run_number"], oms["lumisection_number"], strict=True))
    truth = _truth(folder)
    missing = set(truth[truth.anomaly_type == "Missing"][["run", "ls"]].itertuples(index=False))
    present = set(zip(ring1.run.tolist(), ring1.ls.tolist(), strict=True))
    assert present | missing == oms_keys and not present & missing

    keys = zip(ring1.run.tolist(), ring1.ls.tolist(), strict=True)
    row_of = {key: i for i, key in enumerate(keys)}
    outages = truth[truth.anomaly_type.isin(GROUP_KINDS)]
    assert len(outages) >= 3 and set(outages.rings) == {"1;2"}
    for row in outages.itertuples(index=False):
        i = row_of[(row.run, row.ls)]
        for data in (ring1, ring2):
            assert not data.maps[i][_group_mask(data.geometry, row.groups)].any(), row
    # module-level anomalies stay in their ring: the other keeps counting in those groups
    local = truth[truth.anomaly_type.isin(["Partial", "Hot-ROC"])]
    assert set(local.rings) == {"1", "2"}
    for row in local.itertuples(index=False):
        i = row_of[(row.run, row.ls)]
        hit, spared = (ring1, ring2) if row.rings == "1" else (ring2, ring1)
        assert spared.maps[i][_group_mask(spared.geometry, row.groups)].sum() > 1000, row
        in_group = hit.maps[i][_group_mask(hit.geometry, row.groups)]
        if row.anomaly_type == "Partial":  # its ROCs newly zero in the ring it hits
            assert row.n_dead_rocs > 0
            assert (in_group == 0).sum() >= row.n_dead_rocs, row
        else:
            assert row.n_dead_rocs == 0
    # n_dead_rocs counts both rings' ROCs of the dead groups
    first = outages.iloc[0]
    live_1 = (ring1.maps.sum(axis=0) > 0)[_group_mask(RING1, first.groups)].sum()
    live_2 = (ring2.maps.sum(axis=0) > 0)[_group_mask(RING2, first.groups)].sum()
    assert first.n_dead_rocs == live_1 + live_2


def test_ring1_demo_and_dead_groups(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert cli_main(["simulate", "--out", str(demo), "--scenario", "demo", "--ring", "1"]) == 0
    data = read_dials_parquet(_parquet(demo, 1))
    truth = _truth(demo)
    assert truth.anomaly_type.tolist().count("Multi-Disk") == 1
    (multi,) = truth[truth.anomaly_type == "Multi-Disk"].itertuples(index=False)
    assert len(multi.groups.split(";")) == 3
    i = int(np.flatnonzero((data.run == multi.run) & (data.ls == multi.ls))[0])
    mask = _group_mask(RING1, multi.groups)
    assert not data.maps[i][mask].any() and data.maps[i - 1][mask].sum() > 1000
    # The default Ring 1 detector has no permanently dead group (FPix_BmO_D1_ROG2 is Ring 2's)
    assert simulator.default_detector(RING1).dead_group_ids == ()
    assert simulator.default_detector().dead_group_ids == (GROUP_NAMES.index("FPix_BmO_D1_ROG2"),)

    dead = "FPix_BpI_D3_ROG1"
    out = tmp_path / "dead"
    args = ["--runs", "1", "--ls-per-run", "40", "--clean", "--dead-groups", dead]
    assert cli_main(["simulate", "--out", str(out), "--ring", "both", *args]) == 0
    for ring in (1, 2):
        data = read_dials_parquet(_parquet(out, ring))
        mask = _group_mask(data.geometry, dead)
        assert not data.maps[:, mask].any() and data.maps[:, ~mask].sum() > 0


# --------------------------------------------------------------------------- reading checks


def _table(path: Path) -> pa.Table:
    return pq.read_table(path)


def test_a_file_mixing_both_rings_is_refused(sims, tmp_path: Path) -> None:
    ring1 = _table(_parquet(sims["both"], 1)).slice(0, 20)
    ring2 = _table(_parquet(sims["both"], 2)).slice(20, 20)
    mixed = tmp_path / "mixed.parquet"
    with pq.ParquetWriter(mixed, ring1.schema) as writer:  # two row groups, one ring each
        writer.write_table(ring1)
        writer.write_table(ring2)
    message = r"mixed\.parquet: the file mixes the Ring 1 and Ring 2 MEs"
    with pytest.raises(DataError, match=message):
        read_dials_parquet(mixed)
    with pytest.raises(DataError, match=message):
        list(iter_dials_parquet(mixed, max_ls=10))
    with open_dials_parquet(mixed) as parquet_file, pytest.raises(DataError, match=message):
        list(iter_row_group(parquet_file, 1, mixed, max_ls=10))
    # both MEs among the first rows: parquet_geometry says so itself
    interleaved = tmp_path / "interleaved.parquet"
    pq.write_table(pa.concat_tables([ring2.slice(0, 2), ring1.slice(0, 2)]), interleaved)
    with pytest.raises(DataError, match=r"interleaved\.parquet: the file mixes"):
        parquet_geometry(interleaved)
    # the command line: one line, exit 2
    code = cli_main(["make-test-data", "--parquet", str(mixed), "--out", str(tmp_path / "t.pkl")])
    assert code == 2


def test_me_and_binning_must_agree(sims, tmp_path: Path) -> None:
    table = _table(_parquet(sims["2"], 2)).slice(0, 5)
    relabelled = table.set_column(
        table.schema.get_field_index("me"), "me", pa.array([RING1.me] * 5)
    )
    path = tmp_path / "ring1_me_ring2_bins.parquet"
    pq.write_table(relabelled, path)
    with pytest.raises(DataError, match=r"expected y_bin = 92 .*Ring 1 ME.*\[140\.0\]"):
        read_dials_parquet(path)
    other = table.set_column(
        table.schema.get_field_index("me"), "me", pa.array(["PixelPhase1/Tracks/ntracks"] * 5)
    )
    pq.write_table(other, tmp_path / "other.parquet")
    with pytest.raises(DataError, match=r"FPix ring MEs.*ntracks"):
        parquet_geometry(tmp_path / "other.parquet")


def test_ring_from_binning_without_me_and_written_by_write_dials_parquet(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    maps = np.zeros((4, 92, 56), dtype=np.int32)
    maps[:, RING1.model_rows_in_map[:, None], RING1.model_columns_in_map] = rng.integers(
        0, 50, size=(4, 88, 48)
    )
    path = write_dials_parquet(tmp_path / "r1.parquet", maps, 390001, np.arange(1, 5))
    assert parquet_geometry(path) is RING1  # from the shape of the maps
    path = write_dials_parquet(
        tmp_path / "r1g.parquet", maps, 390001, np.arange(1, 5), geometry=RING1
    )
    no_me = tmp_path / "no_me.parquet"
    pq.write_table(_table(path).drop_columns(["me"]), no_me)
    assert parquet_geometry(no_me) is RING1
    data = read_dials_parquet(no_me)
    assert data.geometry is RING1
    np.testing.assert_array_equal(data.maps, maps)
    with pytest.raises(ValueError, match=r"Ring 2 maps are \(N, 140, 56\), got \(4, 92, 56\)"):
        write_dials_parquet(tmp_path / "bad.parquet", maps, 1, np.arange(1, 5), geometry=RING2)
    empty = tmp_path / "empty.parquet"
    pq.write_table(_table(path).slice(0, 0), empty)
    assert parquet_geometry(empty) is RING2
    with pytest.raises(DataError, match=r"empty\.parquet: holds no lumisection"):
        parquet_geometry(empty, default=None)


# --------------------------------------------------------------------------- fetch-dials


@pytest.mark.skipif(
    find_spec("cmsdials") is None and not os.environ.get("CI"),
    reason='cmsdials not installed: pip install --no-deps "cmsdials>=2.4"',
)
def test_fetch_dials_ring1(sims, tmp_path: Path, monkeypatch) -> None:
    """DIALS holds both rings' MEs; --ring 1 downloads the Ring 1 ME only."""
    rows = [
        *_table(_parquet(sims["both"], 1)).slice(0, 30).to_pylist(),
        *_table(_parquet(sims["both"], 2)).slice(0, 30).to_pylist(),
    ]
    fake = FakeDials(h2d_rows=rows).start()
    try:
        for name in ("DIALS_CLIENT_ID", "DIALS_BASE_URL", "DIALS_KEYCLOAK_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("DIALS_CLIENT_SECRET", fake.secret)
        out = {}
        for ring in ("1", "2"):
            out[ring] = tmp_path / f"ring{ring}.parquet"
            args = ["fetch-dials", "--dataset", "ZeroBias", "--runs", str(rows[0]["run_number"])]
            args += ["--out", str(out[ring]), "--base-url", fake.url, "--page-size", "8"]
            assert cli_main([*args, "--no-progress", "--ring", ring]) == 0
    finally:
        fake.stop()
    fetched = read_dials_parquet(out["1"])
    assert fetched.geometry is RING1 and len(fetched) == 30
    expected = read_dials_parquet(_parquet(sims["both"], 1), runs=[rows[0]["run_number"]])
    np.testing.assert_array_equal(fetched.maps, expected.maps[:30])
    assert set(pq.read_table(out["1"], columns=["me"]).column(0).to_pylist()) == {RING1.me}
    assert read_dials_parquet(out["2"]).geometry is RING2


def test_make_test_data_of_a_ring1_file_sends_ring1(sims, tmp_path: Path) -> None:
    """The pickle's map key is the V2 input name of the file's ring."""
    import pickle

    out = tmp_path / "ring1.pkl"
    folder = sims["1"]
    args = ["make-test-data", "--parquet", str(_parquet(folder, 1)), "--out", str(out)]
    args += ["--oms", str(folder / "omsdata_Run2025Z-v1.json"), "--batch-size", "100"]
    assert cli_main(args) == 0
    with open(out, "rb") as handle:
        batch = pickle.load(handle)
    assert "Ring2" not in batch and batch["Ring1"].shape == (100, 92, 56)
    expected = read_dials_parquet(_parquet(folder, 1)).maps[:100]
    np.testing.assert_array_equal(batch["Ring1"], expected)
