"""test_predictions.py and `pixelring2nmf make-test-data`, end to end against the shared server.

The first test is the acceptance path: `pixelring2nmf serve` (the session server), then
`python test_predictions.py -n pixel-ring2-nmf -p PORT` on the default demo test data. The OMS
variants use a few LS only; `--oms-live` talks to a fake SSO + OMS on loopback.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from conftest import MODEL_NAME, REPO, RunningServer, cli_command, free_port

from mlserver_model.dftools import DCS_FLAGS
from pixelring2nmf.io.parquet import read_dials_parquet

SCRIPT = REPO / "test_predictions.py"
N_SMALL = 6
LINE = r"\[INFO\]: (Flagging results|Filtering: selected)"  # the original's three log lines


def run_script(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_serve_then_test_predictions_counts_the_flagged_ls(
    served_model: RunningServer, test_data_pkl: Path
) -> None:
    result = run_script(
        "-n", MODEL_NAME, "-p", str(served_model.port), "--data", str(test_data_pkl)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Output: Flag, shape: [750], datatype: BOOL" in lines
    assert "Output: Metric, shape: [750], datatype: FP32" in lines
    assert lines[-2:] == ["Number of LS: 750", "Number of flagged LS: 1"]
    log = served_model.log()
    assert re.search(
        r"\[INFO\]: Flagging results \(before filtering\): flagged \d+ out of 750 lumisections\.",
        log,
    )
    assert re.search(r"\[INFO\]: Filtering: selected \d+ out of 750 lumisections\.", log)
    assert "[INFO]: Flagging results (after filtering): flagged 1 out of 750 lumisections." in log
    # one prefix: the line as the original printed it, not wrapped in a second logger format
    pipeline_lines = [line for line in log.splitlines() if "Flagging results" in line]
    assert pipeline_lines and all(line.startswith("[INFO]: ") for line in pipeline_lines)
    assert "[INFO]: Loaded pixel-ring2-nmf" in log  # our other lines get the same prefix


def test_missing_data_file_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_script("-n", MODEL_NAME, "-p", "1", "--data", str(tmp_path / "none.pkl"))
    assert result.returncode == 2
    assert "none.pkl not found" in result.stderr and "make-test-data" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_down_exits_1_without_traceback(small_pkl: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_script("-n", MODEL_NAME, "-p", str(port), "--data", str(small_pkl))
    assert result.returncode == 1
    assert f"Cannot reach MLServer at http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_model_name_exits_1_with_the_server_message(
    served_model: RunningServer, small_pkl: Path
) -> None:
    result = run_script(
        "-n", "no-such-model", "-p", str(served_model.port), "--data", str(small_pkl)
    )
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr and "no-such-model" in result.stderr


# --------------------------------------------------------------------------- OMS sources


@pytest.fixture(scope="module")
def flagged_ls(demo_data: dict[str, Any], served_model: RunningServer, script_module) -> int:
    """Index of the demo's flagged LS (asked of the server with a request of maps only)."""
    response = served_model.infer(script_module.build_request(_maps_only(demo_data), None))
    flags = response.json()["outputs"][0]["data"]
    assert sum(flags) == 1
    return flags.index(True)


def _maps_only(data: dict[str, Any], rows: slice = slice(None)) -> dict[str, Any]:
    return {k: np.asarray(data[k])[rows] for k in ("Ring2", "run_number", "ls_number")}


@pytest.fixture(scope="module")
def small_pkl(demo_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pickle of the first N_SMALL LS without OMS columns."""
    path = tmp_path_factory.mktemp("small") / "small.pkl"
    path.write_bytes(pickle.dumps(_maps_only(demo_data, slice(0, N_SMALL))))
    return path


@pytest.fixture(scope="module")
def around_flagged_pkl(
    demo_data: dict[str, Any], flagged_ls: int, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """N_SMALL LS around the flagged one, maps only (OMS comes from elsewhere)."""
    start = max(0, flagged_ls - N_SMALL // 2)
    path = tmp_path_factory.mktemp("around") / "around.pkl"
    path.write_bytes(pickle.dumps(_maps_only(demo_data, slice(start, start + N_SMALL))))
    return path


@pytest.fixture(scope="module")
def oms_columns(demo_files: tuple[Path, Path]) -> dict[str, list]:
    return json.loads(demo_files[1].read_text())


def _with_fpix_off(columns: dict[str, list], run: int, ls: int) -> dict[str, list]:
    """The OMS columns with FPix not ready in one LS, rows shuffled (order must not matter)."""
    i = next(
        k
        for k, (r, s) in enumerate(
            zip(columns["run_number"], columns["lumisection_number"], strict=True)
        )
        if (r, s) == (run, ls)
    )
    changed = {name: list(values) for name, values in columns.items()}
    changed["fpix_ready"][i] = False
    order = np.random.default_rng(3).permutation(len(changed["run_number"]))
    return {name: [values[j] for j in order] for name, values in changed.items()}


def _flagged_run_ls(demo_data: dict[str, Any], flagged_ls: int) -> tuple[int, int]:
    return int(demo_data["run_number"][flagged_ls]), int(demo_data["ls_number"][flagged_ls])


def test_oms_json_dcs_flags_reach_the_model(
    served_model: RunningServer,
    around_flagged_pkl: Path,
    oms_columns: dict[str, list],
    demo_data: dict[str, Any],
    flagged_ls: int,
    tmp_path: Path,
) -> None:
    port = str(served_model.port)
    good = tmp_path / "oms_good.json"
    good.write_text(json.dumps(oms_columns))
    result = run_script(
        "-n", MODEL_NAME, "-p", port, "--data", str(around_flagged_pkl), "--oms-json", str(good)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Number of flagged LS: 1"
    fpix_off = tmp_path / "oms_fpix_off.json"
    fpix_off.write_text(
        json.dumps(_with_fpix_off(oms_columns, *_flagged_run_ls(demo_data, flagged_ls)))
    )
    result = run_script(
        "-n", MODEL_NAME, "-p", port, "--data", str(around_flagged_pkl), "--oms-json", str(fpix_off)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["Number of LS: 6", "Number of flagged LS: 0"]


class _FakeOms(BaseHTTPRequestHandler):
    """CERN SSO token endpoint + OMS lumisections endpoint, serving `columns`."""

    columns: ClassVar[dict[str, list]] = {}
    requests_seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests_seen.append("token")
        self._json({"access_token": "fake-token", "expires_in": 600})

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        run = int(query["filter[run_number][EQ]"][0])
        self.requests_seen.append(f"run {run}")
        names = list(self.columns)
        rows = [
            {"attributes": dict(zip(names, values, strict=True))}
            for values in zip(*self.columns.values(), strict=True)
            if values[names.index("run_number")] == run
        ]
        self._json(
            {"data": rows, "links": {"next": None}, "meta": {"totalResourceCount": len(rows)}}
        )


@pytest.fixture
def fake_oms(oms_columns: dict[str, list]) -> Iterator[tuple[str, type[_FakeOms]]]:
    handler = type("FakeOms", (_FakeOms,), {"columns": oms_columns, "requests_seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_oms_live_fetches_the_runs_and_applies_their_dcs_flags(
    served_model: RunningServer,
    around_flagged_pkl: Path,
    oms_columns: dict[str, list],
    demo_data: dict[str, Any],
    flagged_ls: int,
    fake_oms: tuple[str, type[_FakeOms]],
) -> None:
    url, handler = fake_oms
    handler.columns = _with_fpix_off(oms_columns, *_flagged_run_ls(demo_data, flagged_ls))
    env = {
        "PATH": "/usr/bin:/bin",
        "OMS_CLIENT_ID": "test-app",
        "OMS_CLIENT_SECRET": "not-a-secret",
        "OMS_API_URL": url,
        "OMS_TOKEN_URL": f"{url}/token",
    }
    result = run_script(
        "-n",
        MODEL_NAME,
        "-p",
        str(served_model.port),
        "--data",
        str(around_flagged_pkl),
        "--oms-live",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert handler.requests_seen == ["token", f"run {demo_data['run_number'][0]}"]
    assert result.stdout.splitlines()[-1] == "Number of flagged LS: 0"


# --------------------------------------------------------------------------- request layout


def test_request_is_built_as_dials_does(demo_data: dict[str, Any], script_module) -> None:
    rows = slice(0, 3)
    data = {k: np.asarray(v)[rows] for k, v in demo_data.items()}
    data["fpix_ready"] = np.array([True, None, False], dtype=object)
    body = script_module.build_request(data, None)
    ring2, *oms = body["inputs"]
    assert ring2 == {
        "name": "Ring2",
        "shape": [3, 140, 56],
        "datatype": "INT32",
        "data": np.asarray(data["Ring2"], dtype=np.int32).ravel().tolist(),
    }
    by_name = {t["name"]: t for t in oms}
    expected = ["run_number", "lumisection_number", "pileup", *DCS_FLAGS]
    assert list(by_name) == [f"oms_lumisection_info__{a}" for a in expected]
    assert by_name["oms_lumisection_info__fpix_ready"]["data"] == [True, None, False]
    assert by_name["oms_lumisection_info__lumisection_number"]["data"] == data["ls_number"].tolist()
    assert by_name["oms_lumisection_info__pileup"]["datatype"] == "FP32"
    assert all(t["shape"] == [3] for t in oms)
    json.dumps(body)  # plain JSON types only


def test_align_oms_columns_matches_run_and_ls(script_module) -> None:
    columns = {
        "run_number": [2, 1, 1],
        "lumisection_number": [1, 2, 1],
        "fpix_ready": [True, False, None],
    }
    aligned = script_module.align_oms_columns(
        columns, np.array([1, 1, 2, 3]), np.array([1, 2, 1, 1])
    )
    assert aligned["fpix_ready"].tolist() == [None, False, True, None]


# --------------------------------------------------------------------------- make-test-data


def test_make_test_data_writes_the_original_pickle_layout(
    test_data_pkl: Path, demo_files: tuple[Path, Path], oms_columns: dict[str, list]
) -> None:
    with open(test_data_pkl, "rb") as handle:
        data = pickle.load(handle)
    maps = read_dials_parquet(demo_files[0])
    assert data["Ring2"].shape == (750, 140, 56)
    np.testing.assert_array_equal(data["Ring2"], maps.maps)
    np.testing.assert_array_equal(data["run_number"], maps.run)
    np.testing.assert_array_equal(data["ls_number"], maps.ls)
    np.testing.assert_array_equal(data["lumisection_number"], maps.ls)
    assert set(DCS_FLAGS) | {"pileup"} <= set(data)
    by_key = dict(
        zip(
            zip(oms_columns["run_number"], oms_columns["lumisection_number"], strict=True),
            oms_columns["fpix_ready"],
            strict=True,
        )
    )
    assert data["fpix_ready"].tolist() == [
        by_key[(int(r), int(s))] for r, s in zip(maps.run, maps.ls, strict=True)
    ]


def test_make_test_data_batches_and_refuses_a_missing_batch(
    demo_files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "batch.pkl"
    args = [
        "make-test-data",
        "--parquet",
        str(demo_files[0]),
        "--batch-size",
        "300",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        cli_command(*args, "--batch-id", "2"), capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    with open(out, "rb") as handle:
        data = pickle.load(handle)
    assert sorted(data) == ["Ring2", "ls_number", "run_number"]  # no OMS given
    assert data["Ring2"].shape == (150, 140, 56)
    assert data["ls_number"][0] == read_dials_parquet(demo_files[0]).ls[600]
    refused = subprocess.run(
        cli_command(*args, "--batch-id", "3", "--force"), capture_output=True, text=True, cwd=REPO
    )
    assert refused.returncode == 2
    assert "--batch-id 3: no such batch" in refused.stderr and "Traceback" not in refused.stderr


def test_the_server_log_and_predict_print_the_same_three_lines(
    served_model: RunningServer, test_data_pkl: Path, demo_files, model_path: Path
) -> None:
    """The original's three [INFO] lines, word for word, wherever the model runs: the handler
    logs them, the `predict` command prints them, for the same LS and the same model."""
    result = run_script(
        "-n", MODEL_NAME, "-p", str(served_model.port), "--data", str(test_data_pkl)
    )
    assert result.returncode == 0, result.stderr
    served = [line for line in served_model.log().splitlines() if re.match(LINE, line)][-3:]
    parquet, oms = demo_files
    predicted = subprocess.run(
        cli_command(
            "predict", "--parquet", str(parquet), "--oms", str(oms), "--model", str(model_path)
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout.splitlines()[:3]
    assert served == predicted
    assert predicted[1] == "[INFO]: Filtering: selected 740 out of 750 lumisections."


# --------------------------------------------------------------------- Ring 1 and the joint model


@pytest.fixture(scope="module")
def fpix_pkl(
    fpix_demo_maps: dict[int, np.ndarray], demo_data: dict[str, Any], tmp_path_factory
) -> Path:
    """The demo's 750 LS in both rings, with their OMS columns, as a test-data pickle."""
    data = {key: value for key, value in demo_data.items() if key != "Ring2"}
    data.update(Ring1=fpix_demo_maps[1], Ring2=fpix_demo_maps[2])
    path = tmp_path_factory.mktemp("fpix_pkl") / "test_data.pkl"
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.mark.parametrize("ring", ["1", "both"])
def test_test_predictions_sends_ring1_or_both_rings_to_their_models(
    ring: str,
    request: pytest.FixtureRequest,
    fpix_pkl: Path,
    fpix_demo_maps: dict[int, np.ndarray],
    demo_data: dict[str, Any],
    ring1_model_path: Path,
    fpix_model_path: Path,
) -> None:
    from mlserver_model.joint import load_model

    server = request.getfixturevalue("served_ring1" if ring == "1" else "served_fpix")
    args = ["-n", server.model_name, "-p", str(server.port), "--data", str(fpix_pkl)]
    if ring == "both":  # one pickle per ring, as make-test-data writes them, in any order
        data = pickle.loads(fpix_pkl.read_bytes())
        for name, other in (("Ring1", "Ring2"), ("Ring2", "Ring1")):
            part = {key: value for key, value in data.items() if key != other}
            (fpix_pkl.parent / f"{name}.pkl").write_bytes(pickle.dumps(part))
        args[-1:] = [str(fpix_pkl.parent / "Ring2.pkl"), str(fpix_pkl.parent / "Ring1.pkl")]
    result = run_script(*args, "--ring", ring)
    assert result.returncode == 0, result.stderr
    dcs = {flag: np.asarray(demo_data[flag], dtype=bool) for flag in DCS_FLAGS}
    if ring == "1":
        expected = load_model(ring1_model_path).predict(fpix_demo_maps[1], dcs)
    else:
        expected = load_model(fpix_model_path).predict(fpix_demo_maps, dcs)
    lines = result.stdout.splitlines()
    assert "Output: Flag, shape: [750], datatype: BOOL" in lines
    assert lines[-2:] == ["Number of LS: 750", f"Number of flagged LS: {int(expected.flag.sum())}"]
    if ring == "both":  # the demo's Multi-Disk LS
        assert expected.flag.sum() >= 1
    # the Ring 2 default sends Ring2 alone: the joint model names what is missing
    if ring == "both":
        missing = run_script(*args[:-1])
        assert missing.returncode == 1
        assert "HTTP 400" in missing.stderr and "Missing input tensor 'Ring1'" in missing.stderr


def test_test_predictions_names_the_ring_missing_from_the_pickle(small_pkl: Path) -> None:
    result = run_script("-n", "pixel-ring1-nmf", "-p", "1", "--data", str(small_pkl), "--ring", "1")
    assert result.returncode == 2
    assert "must hold a dict with a 'Ring1' array" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_two_pickles_of_both_rings_must_hold_the_same_ls(script_module, tmp_path: Path) -> None:
    keys = {"run_number": np.array([1, 1]), "ls_number": np.array([5, 6])}
    one = {"Ring1": np.zeros((2, 92, 56), np.int32), **keys}
    two = {"Ring2": np.zeros((2, 140, 56), np.int32), **keys, "ls_number": np.array([6, 5])}
    paths = [tmp_path / "one.pkl", tmp_path / "two.pkl"]
    for path, data in zip(paths, (one, two), strict=True):
        path.write_bytes(pickle.dumps(data))
    with pytest.raises(script_module.UsageError, match="must hold the same LS in the same order"):
        script_module.load_ring_test_data(paths, ("Ring1", "Ring2"))
    two["ls_number"] = keys["ls_number"]
    paths[1].write_bytes(pickle.dumps(two))
    merged = script_module.load_ring_test_data(paths, ("Ring1", "Ring2"))
    assert (merged["Ring1"].shape, merged["Ring2"].shape) == ((2, 92, 56), (2, 140, 56))
