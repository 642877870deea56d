"""A real MLServer answering real requests: bad inputs, concurrency, tritonclient, the image.

All tests share the session's server (`served_model`, started by `pixelring2nmf serve`). Bad
inputs and the tritonclient use a few LS; only the concurrency and image tests send the 750-LS
demo request (~30 MB), whose single-client answer `demo_answer` is the reference.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import (
    IMAGE_PYTHON,
    MODEL_NAME,
    RunningServer,
    free_port,
    needs_image_venv,
    outputs_by_name,
    start_server,
    stop_server,
)

from mlserver_model.dftools import DCS_FLAGS
from pixelring2nmf.dism import mlserver_command

N_SMALL = 6  # LS in a small request, around the demo's flagged LS


@pytest.fixture(scope="module")
def flagged_index(demo_answer: dict[str, Any]) -> int:
    flags = outputs_by_name(demo_answer)["Flag"]["data"]
    assert sum(flags) == 1, "the demo run has exactly one flagged LS"
    return flags.index(True)


@pytest.fixture(scope="module")
def small_rows(flagged_index: int) -> slice:
    start = max(0, flagged_index - N_SMALL // 2)
    return slice(start, start + N_SMALL)


@pytest.fixture(scope="module")
def small_request(demo_data: dict[str, Any], small_rows: slice) -> dict[str, Any]:
    """N_SMALL LS of the demo run (incl. the flagged one), with DCS flags, as JSON."""
    maps = np.asarray(demo_data["Ring2"][small_rows], dtype=np.int32)
    inputs = [
        {
            "name": "Ring2",
            "shape": list(maps.shape),
            "datatype": "INT32",
            "data": maps.ravel().tolist(),
        }
    ]
    for flag in DCS_FLAGS:
        inputs.append(
            {
                "name": f"oms_lumisection_info__{flag}",
                "shape": [N_SMALL],
                "datatype": "BOOL",
                "data": np.asarray(demo_data[flag][small_rows], dtype=bool).tolist(),
            }
        )
    return {"inputs": inputs}


def expected_small(demo_answer: dict[str, Any], rows: slice) -> dict[str, list]:
    """The small request's answer is the demo answer's slice: every LS is judged on its own."""
    got = outputs_by_name(demo_answer)
    return {name: got[name]["data"][rows] for name in ("Flag", "Metric")}


def assert_answer(response: requests.Response, expected: dict[str, list]) -> None:
    assert response.status_code == 200, response.text[:1000]
    got = outputs_by_name(response.json())
    assert got["Flag"]["data"] == expected["Flag"]
    assert got["Metric"]["data"] == pytest.approx(expected["Metric"], rel=1e-6, abs=1e-6)


def test_demo_answer_shape_and_metadata(demo_answer: dict[str, Any]) -> None:
    assert demo_answer["model_name"] == MODEL_NAME
    assert demo_answer["model_version"] == "0.1.0"
    got = outputs_by_name(demo_answer)
    assert list(got) == ["Flag", "Metric"]
    assert (got["Flag"]["datatype"], got["Flag"]["shape"]) == ("BOOL", [750])
    assert (got["Metric"]["datatype"], got["Metric"]["shape"]) == ("FP32", [750])
    metric = np.asarray(got["Metric"]["data"])
    flag = np.asarray(got["Flag"]["data"])
    assert np.all(metric[flag] > 0)


def _bad_cases(small: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    ring2 = small["inputs"][0]
    dcs = small["inputs"][1:]
    data = ring2["data"]
    negative = [*data[:10], -1, *data[11:]]
    with_null = [*data[:10], None, *data[11:]]
    return [
        ("missing Ring2", {"inputs": dcs}, "Missing input tensor 'Ring2'"),
        ("shape", {"inputs": [{**ring2, "shape": [N_SMALL, 56, 140]}]}, "[N, 140, 56]"),
        ("length", {"inputs": [{**ring2, "data": data[:-7]}]}, "product of the shape"),
        ("text", {"inputs": [{**ring2, "data": ["x", *data[1:]]}]}, "'x'"),
        ("negative", {"inputs": [{**ring2, "data": negative}]}, "negative"),
        ("null", {"inputs": [{**ring2, "datatype": "FP32", "data": with_null}]}, "null at"),
        (
            "OMS length",
            {"inputs": [ring2, *dcs[:-1], {**dcs[-1], "shape": [2], "data": [True, True]}]},
            "oms_lumisection_info__tecm_ready",
        ),
        ("some DCS", {"inputs": [ring2, *dcs[:6]]}, "missing ['tecp_ready', 'tecm_ready']"),
        ("limit", {"inputs": [{**ring2, "shape": [10_001, 140, 56]}]}, "10001 lumisections"),
    ]


def test_bad_inputs_get_400_and_the_server_keeps_answering(
    served_model: RunningServer,
    small_request: dict[str, Any],
    demo_answer: dict[str, Any],
    small_rows: slice,
) -> None:
    expected = expected_small(demo_answer, small_rows)
    assert_answer(served_model.infer(small_request), expected)
    data = small_request["inputs"][0]["data"]
    with_nan = [*data[:10], float("nan"), *data[11:]]  # requests sends the JSON token NaN
    for case, body, message in _bad_cases(small_request):
        response = served_model.infer(body)
        assert response.status_code == 400, (case, response.status_code, response.text[:500])
        error = response.json()["error"]
        assert message in error, (case, error)
        assert "Traceback" not in error
    # JSON has no NaN: MLServer refuses the bare token as malformed JSON (422) before the model
    # sees it; a NaN that reaches the model in-process is refused by the pipeline (test_app).
    nan_body = {"inputs": [{**small_request["inputs"][0], "datatype": "FP32", "data": with_nan}]}
    assert served_model.infer(nan_body).status_code == 422
    assert_answer(served_model.infer(small_request), expected)


def test_unknown_inputs_are_ignored_and_logged(
    served_model: RunningServer,
    small_request: dict[str, Any],
    demo_answer: dict[str, Any],
    small_rows: slice,
) -> None:
    junk = {"name": "Ring1", "shape": [1], "datatype": "FP32", "data": [0.5]}
    body = {"inputs": [*small_request["inputs"], junk]}
    assert_answer(served_model.infer(body), expected_small(demo_answer, small_rows))
    assert "Ignoring input(s) ['Ring1']" in served_model.log()


def test_zero_lumisections_answer_200_with_empty_outputs(served_model: RunningServer) -> None:
    body = {"inputs": [{"name": "Ring2", "shape": [0, 140, 56], "datatype": "INT32", "data": []}]}
    response = served_model.infer(body)
    assert response.status_code == 200, response.text
    got = outputs_by_name(response.json())
    assert got["Flag"]["shape"] == [0] and got["Flag"]["data"] == []
    assert got["Metric"]["shape"] == [0] and got["Metric"]["data"] == []


def test_requested_outputs_and_id_are_honoured(
    served_model: RunningServer, small_request: dict[str, Any], flagged_index: int, small_rows
) -> None:
    body = {
        **small_request,
        "id": "dials-7",
        "outputs": [{"name": "AnomalyType"}, {"name": "Groups"}, {"name": "Flag"}],
    }
    response = served_model.infer(body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "dials-7"
    got = outputs_by_name(answer)
    assert [o["name"] for o in answer["outputs"]] == ["AnomalyType", "Groups", "Flag"]
    i = flagged_index - small_rows.start
    assert got["AnomalyType"]["datatype"] == "BYTES" and got["AnomalyType"]["shape"] == [N_SMALL]
    assert got["AnomalyType"]["data"][i] == "Multi-Disk"
    groups = got["Groups"]["data"][i].split(";")
    assert len(groups) >= 2 and all(g.startswith("FPix_B") for g in groups)


def test_tritonclient_reads_flag_and_metric(
    served_model: RunningServer,
    demo_data: dict[str, Any],
    demo_answer: dict[str, Any],
    small_rows: slice,
) -> None:
    import tritonclient.http as httpclient

    maps = np.asarray(demo_data["Ring2"][small_rows], dtype=np.int32)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{served_model.port}")
    try:
        assert client.is_model_ready(MODEL_NAME)
        ring2 = httpclient.InferInput("Ring2", list(maps.shape), "INT32")
        ring2.set_data_from_numpy(maps, binary_data=False)  # MLServer: JSON only
        wanted = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("Flag", "Metric")]
        result = client.infer(MODEL_NAME, [ring2], outputs=wanted)
    finally:
        client.close()
    flag, metric = result.as_numpy("Flag"), result.as_numpy("Metric")
    assert flag.dtype == bool and flag.shape == (N_SMALL,)
    assert metric.shape == (N_SMALL,)
    # no DCS tensors sent: every LS passes the DCS filter, so the demo's flag shows
    expected = expected_small(demo_answer, small_rows)
    assert flag.tolist() == expected["Flag"]
    assert metric.tolist() == pytest.approx(expected["Metric"], rel=1e-6, abs=1e-6)


def test_concurrent_clients_get_the_single_client_answer(
    served_model: RunningServer, demo_body: bytes, demo_answer: dict[str, Any]
) -> None:
    def client(_: int) -> list[tuple[int, dict]]:
        with requests.Session() as session:
            answers = []
            for _ in range(5):
                response = session.post(
                    served_model.infer_url,
                    data=demo_body,
                    headers={"Content-Type": "application/json"},
                    timeout=600,
                )
                answers.append((response.status_code, response.json()))
            return answers

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [answer for answers in pool.map(client, range(8)) for answer in answers]
    assert len(results) == 40
    assert all(status == 200 for status, _ in results)
    reference = outputs_by_name(demo_answer)
    for _, answer in results:
        got = outputs_by_name(answer)
        assert got["Flag"]["data"] == reference["Flag"]["data"]
        assert got["Metric"]["data"] == reference["Metric"]["data"]


@needs_image_venv
def test_image_environment_serves_a_copy_of_the_build_alone(
    build_folder: Path,
    demo_body: bytes,
    demo_answer: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dismcli mounts the build at /mnt/<Name>; nothing of the repository is visible there
    folder = tmp_path / "mnt" / MODEL_NAME
    shutil.copytree(build_folder, folder)
    port = free_port()
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(json.dumps({**settings, "http_port": port}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    server = start_server(
        mlserver_command(folder, IMAGE_PYTHON),
        port,
        tmp_path / "image.log",
        cwd=tmp_path / "mnt",
        env=env,
    )
    try:
        version = requests.get(f"{server.base_url}/v2", timeout=10).json()["version"]
        response = server.infer(demo_body)
        log = server.log()
    finally:
        stop_server(server)
    assert version == "1.5.0"
    assert response.status_code == 200, response.text[:2000]
    answer = response.json()
    assert outputs_by_name(answer) == outputs_by_name(demo_answer)
    assert (answer["model_name"], answer["model_version"]) == (MODEL_NAME, "0.1.0")
    assert "flagged 1 out of 750 lumisections" in log


# A handler whose power-group search breaks the way a bug would: the fault is ours, not the
# client's, so the answer must be a 500 that says so without a traceback, even with MLServer's
# debug mode on (which would otherwise send the whole traceback to DIALS).
_FAULTY_HANDLER = """
import sys
from app import Handler


def _broken_search(*args, **kwargs):
    raise IndexError("index 48 is out of bounds for axis 1 with size 48")


class FaultyHandler(Handler):
    async def load(self):
        sys.modules["mlserver_model.pixelring2nmf"].search_significance = _broken_search
        return await super().load()
"""


@pytest.mark.parametrize(
    "python", [pytest.param(None, id="main"), pytest.param(IMAGE_PYTHON, id="image")]
)
def test_a_pipeline_fault_is_a_500_without_traceback_and_bad_input_still_400(
    python: Path | None,
    build_folder: Path,
    small_request: dict[str, Any],
    tmp_path: Path,
) -> None:
    if python is not None and not python.exists() and not os.environ.get("CI"):
        pytest.skip(f"no image-emulation venv at {python} (CI always has one)")
    folder = tmp_path / MODEL_NAME
    shutil.copytree(build_folder, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "faulty.py").write_text(_FAULTY_HANDLER)
    model_settings = json.loads((folder / "model-settings.json").read_text())
    model_settings["implementation"] = "faulty.FaultyHandler"
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    port = free_port()
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(
        json.dumps({**settings, "http_port": port, "debug": True})
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    command = mlserver_command(folder, python) if python else mlserver_command(folder)
    server = start_server(command, port, tmp_path / "faulty.log", cwd=tmp_path, env=env)
    try:
        fault = server.infer(small_request)
        bad_input = dict(small_request)
        bad_input["inputs"] = [{**small_request["inputs"][0], "shape": [N_SMALL, 139, 56]}]
        refused = server.infer(bad_input)
        log = server.log()
    finally:
        stop_server(server)
    assert fault.status_code == 500
    assert "Internal error of the PixelRing2NMF model" in fault.json()["error"]
    assert "Traceback" not in fault.text and "IndexError" not in fault.text
    assert "Traceback" in log and "IndexError: index 48 is out of bounds" in log
    assert refused.status_code == 400
    assert "[N, 140, 56]" in refused.json()["error"]
