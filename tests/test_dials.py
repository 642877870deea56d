"""fetch-dials, fetch-oms --via dials and dials-flags against a loopback fake DIALS.

The fake (tests/fake_dials.py) speaks DIALS's JSON: cursor pages, 503 on chosen pages, 401
without credentials. The commands run through the real `cmsdials` client; only the server is
fake. The data it serves are real parquet rows of a simulated run with a Multi-Disk dropout.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, cli_command
from fake_dials import FakeDials

from mlserver_model.geometry import GROUP_ID_MAP, MULTIDISK_CANDIDATES
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.io.parquet import read_dials_parquet
from pixelring2nmf.sim import simulate as simulator

# cmsdials is added to the dev environment without its urllib3 pin (.ci/run, pyproject.toml);
# locally these tests skip without it, in CI (CI=true) they must run, so a missing install fails.
pytestmark = pytest.mark.skipif(
    find_spec("cmsdials") is None and not os.environ.get("CI"),
    reason='cmsdials not installed: pip install --no-deps "cmsdials>=2.4"',
)

RUNS = (392001, 392002, 392003)
N_LS = 45
DEAD_LS = {392001: 20, 392002: 31}  # a full ROG dead on 3 disks: every sane model flags it


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """Three short runs as DIALS holds them, and their OMS lumisections."""
    out = tmp_path_factory.mktemp("dials_source")
    detector = simulator.default_detector()
    maps, run, ls, oms = [], [], [], []
    rng = np.random.default_rng(5)
    for i, number in enumerate(RUNS):
        sim = simulator.simulate_run(number, N_LS, detector, rng, anomalies="none")
        m = sim.maps.copy()
        if number in DEAD_LS:
            groups = MULTIDISK_CANDIDATES[4 + i]  # live on all 3 disks
            rows = np.flatnonzero(sim.ls == DEAD_LS[number])
            m[np.ix_(rows, *np.nonzero(np.isin(GROUP_ID_MAP, groups)))] = 0
        maps.append(m)
        run.append(np.full(len(sim.ls), number))
        ls.append(sim.ls)
        keys = list(sim.oms)
        oms += [
            dict(zip(keys, values, strict=True)) for values in zip(*sim.oms.values(), strict=True)
        ]
    parquet = simulator.write_dials_parquet(
        out / "source.parquet", np.concatenate(maps), np.concatenate(run), np.concatenate(ls)
    )
    return {"parquet": parquet, "rows": pq.read_table(parquet).to_pylist(), "oms": oms}


@pytest.fixture()
def fake(source) -> FakeDials:
    server = FakeDials(h2d_rows=source["rows"], oms_rows=source["oms"]).start()
    yield server
    server.stop()


@pytest.fixture()
def secret_env(monkeypatch, fake: FakeDials) -> None:
    for name in ("DIALS_CLIENT_ID", "DIALS_BASE_URL", "DIALS_KEYCLOAK_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIALS_CLIENT_SECRET", fake.secret)


def _fetch(fake: FakeDials, out: Path, *extra: str) -> int:
    args = ["fetch-dials", "--dataset", "ZeroBias", "--out", str(out), "--base-url", fake.url]
    args += ["--page-size", "10", "--retry-wait", "0", "--no-progress", *extra]
    return cli_main(args)


def _maps_of(path: Path, runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = read_dials_parquet(path, runs=runs)
    return data.maps, data.run, data.ls


def test_fetch_dials_writes_the_layout_users_have(fake, secret_env, source, tmp_path) -> None:
    out = tmp_path / "ring2.parquet"
    assert _fetch(fake, out, "--runs", str(RUNS[0]), str(RUNS[2])) == 0
    assert pq.read_schema(out).field("data").type == pa.list_(pa.list_(pa.float64()))
    got = _maps_of(out, None)
    expected = _maps_of(source["parquet"], [RUNS[0], RUNS[2]])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # one query per run, each page once: 45 LS in pages of 10 = 5 pages per run
    assert fake.served("th2") == [0, 1, 2, 3, 4] * 2
    assert set(fake.workspaces) == {"tracker"}
    assert not out.with_name(out.name + ".partial").exists()


def test_run_range_and_a_page_that_fails_once(fake, secret_env, source, tmp_path) -> None:
    fake.fail[("th2", 6)] = 1
    out = tmp_path / "range.parquet"
    assert _fetch(fake, out, "--run-range", str(RUNS[0]), str(RUNS[2])) == 0
    assert [p for _, p, status in fake.log if status == 503] == [6]
    assert fake.served("th2") == list(range(14))  # 135 LS: 14 pages, none twice
    np.testing.assert_array_equal(_maps_of(out, None)[0], _maps_of(source["parquet"], None)[0])


def test_resume_after_a_failed_page_fetches_no_page_twice(fake, secret_env, source, tmp_path):
    fake.fail[("th2", 8)] = 3  # more than --attempts 2
    out = tmp_path / "resumed.parquet"
    command = cli_command(
        "fetch-dials",
        "--dataset",
        "ZeroBias",
        "--run-range",
        str(RUNS[0]),
        str(RUNS[2]),
        "--out",
        str(out),
        "--base-url",
        fake.url,
        "--page-size",
        "10",
        "--retry-wait",
        "0",
        "--attempts",
        "2",
        "--no-progress",
    )
    env = {**_environ(), "DIALS_CLIENT_SECRET": fake.secret}
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert first.returncode == 2, first.stderr
    assert "rerun the same command" in first.stderr and "Traceback" not in first.stderr
    assert not out.exists() and out.with_name(out.name + ".partial").is_dir()
    assert fake.served("th2") == list(range(8))

    second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert second.returncode == 0, second.stderr
    assert fake.served("th2") == list(range(14))  # pages 0-7 not asked for again
    np.testing.assert_array_equal(_maps_of(out, None)[0], _maps_of(source["parquet"], None)[0])
    assert not out.with_name(out.name + ".partial").exists()


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DIALS_")}


def test_without_credentials_a_clear_error(fake, tmp_path) -> None:
    import requests

    assert requests.get(f"{fake.url}/api/v1/th2/", timeout=10).status_code == 401
    env = {**_environ(), "DIALS_CREDS_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        cli_command(
            "fetch-dials",
            "--dataset",
            "x",
            "--runs",
            "1",
            "--out",
            str(tmp_path / "x.parquet"),
            "--base-url",
            fake.url,
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "No DIALS credentials" in done.stderr and "DIALS_CLIENT_SECRET" in done.stderr
    assert "Traceback" not in done.stderr
    assert fake.log == [("th2", -1, 401)]  # only our own probe reached it


def test_refused_credentials_answer_401_with_advice(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIALS_CLIENT_SECRET", "wrong")
    assert _fetch(fake, tmp_path / "x.parquet", "--runs", str(RUNS[0])) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "DIALS_CLIENT_ID" in err
    assert ("th2", -1, 401) in fake.log


def test_client_credentials_through_the_sso(fake, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DIALS_CLIENT_ID", fake.client_id)
    monkeypatch.setenv("DIALS_CLIENT_SECRET", fake.secret)
    monkeypatch.setenv("DIALS_KEYCLOAK_URL", f"{fake.url}/auth/")
    assert _fetch(fake, tmp_path / "sso.parquet", "--runs", str(RUNS[1])) == 0
    assert len(fake.tokens) == 1 and fake.served("th2") == [0, 1, 2, 3, 4]


def test_plain_http_to_a_remote_dials_is_refused(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("DIALS_CLIENT_SECRET", "x")
    args = ["fetch-dials", "--dataset", "x", "--runs", "1", "--out", str(tmp_path / "x.parquet")]
    assert cli_main([*args, "--base-url", "http://dials.example.org/"]) == 2
    assert "Refusing plain http for the DIALS URL" in capsys.readouterr().err


def test_fetch_oms_via_dials_writes_what_fetch_oms_writes(fake, secret_env, source, tmp_path):
    out = tmp_path / "oms.json"
    args = ["fetch-oms", "--via", "dials", "--runs", str(RUNS[1]), str(RUNS[0])]
    assert cli_main([*args, "--out", str(out), "--base-url", fake.url]) == 0
    columns = json.loads(out.read_text())
    rows = sorted(
        (r for r in source["oms"] if r["run_number"] in RUNS[:2]),
        key=lambda r: (r["run_number"], r["lumisection_number"]),
    )
    from mlserver_model.omstools import OMS_COLUMNS

    assert list(columns) == list(OMS_COLUMNS)
    assert columns == {name: [r[name] for r in rows] for name in OMS_COLUMNS}
    # and the era reads it like any OMS file
    from pixelring2nmf.io.oms import read_oms_json

    assert len(read_oms_json(out)) == 2 * N_LS


def test_an_oms_proxy_repeating_its_first_page_is_an_error(fake, secret_env) -> None:
    """Full pages that never advance would otherwise be fetched forever."""
    from pixelring2nmf.remote.dials import DialsAccessError, connect, oms_lumisections

    fake.oms_ignores_offset = True
    with pytest.raises(DialsAccessError, match="twice while paging"):
        oms_lumisections(connect(fake.url), [RUNS[0]], page_limit=10)
    assert fake.served("oms-proxy") == [0, 0]  # the repeat is caught on the second page


def test_dials_flags_compares_ls_by_ls(
    fake, secret_env, source, model_path, tmp_path, capsys
) -> None:
    """DIALS flagged run 1's dead LS and one more; run 2's dead LS only the local model has."""
    (dataset_id,) = {r["dataset_id"] for r in source["rows"]}
    fake.bad_lumis = [
        {
            "model_id": 7,
            "dataset_id": dataset_id,
            "run_number": RUNS[0],
            "ls_number": ls,
            "metric_value": 5.0,
        }
        for ls in (DEAD_LS[RUNS[0]], 3)
    ] + [
        {
            "model_id": 8,
            "dataset_id": dataset_id,
            "run_number": RUNS[1],
            "ls_number": 9,
            "metric_value": 1.0,
        }  # another model: must not count
    ]
    out = tmp_path / "flags.csv"
    args = ["dials-flags", "--model-id", "7", "--runs", str(RUNS[0]), str(RUNS[1])]
    args += ["--parquet", str(source["parquet"]), "--out", str(out), "--base-url", fake.url]
    args += ["--model", str(model_path)]  # knows the simulated detector, whatever is shipped
    assert cli_main(args) == 0
    table = pd.read_csv(out)
    got = dict(zip(zip(table.run, table.ls, strict=True), table.status, strict=True))
    assert got == {
        (RUNS[0], 3): "only DIALS",
        (RUNS[0], DEAD_LS[RUNS[0]]): "agree",
        (RUNS[1], DEAD_LS[RUNS[1]]): "only local",
    }
    assert "agree 1, only DIALS 1, only local 1" in capsys.readouterr().out


def test_dials_flags_judges_the_requested_runs_as_era_does(
    fake, secret_env, source, model_path, tmp_path, capsys
):
    """Reading only the requested runs gives the rows the whole-era analysis gave for them
    (the same engine); an LS in two files is judged from its first copy, said, and the command
    ends with exit code 2 (the toolkit's one duplicate policy); an absent run is an error."""
    from mlserver_model.pixelring2nmf import PixelRing2NMF
    from pixelring2nmf.era.engine import analyse_era
    from pixelring2nmf.era.executors import InProcessExecutor

    model = PixelRing2NMF.load(model_path)
    runs = [RUNS[2], RUNS[0]]
    executor = InProcessExecutor(model, None)
    era = analyse_era([source["parquet"]], executor, progress=False).results
    expected = era[era.run.isin(runs)].reset_index(drop=True)
    some = analyse_era([source["parquet"]], executor, progress=False, runs=runs).results
    pd.testing.assert_frame_equal(some[some.run.isin(runs)].reset_index(drop=True), expected)

    copy = tmp_path / "copy.parquet"
    copy.write_bytes(Path(source["parquet"]).read_bytes())
    args = ["dials-flags", "--model-id", "7", "--model", str(model_path), "--base-url", fake.url]
    code = cli_main([*args, "--runs", str(RUNS[0]), "--parquet", str(source["parquet"]), str(copy)])
    out, _ = capsys.readouterr()
    assert code == 2
    assert "repeated (run, ls) row(s)" in out and "judged from its first copy" in out
    code = cli_main([*args, "--runs", "1", "--parquet", str(source["parquet"])])
    assert code == 2 and "run(s) [1] are not in" in capsys.readouterr().err
