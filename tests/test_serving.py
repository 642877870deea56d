"""A real MLServer answering real requests: bad inputs, concurrency, tritonclient, the image.

All tests share the session's server (`served_model`, started by `pixelring2nmf serve`). Bad
inputs and the tritonclient use a few LS; only the concurrency and image tests send the 750-LS
demo request (~30 MB), whose single-client answer `demo_answer` is the reference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import (
    BUILD_KEY,
    IMAGE_PYTHON,
    MODEL_NAME,
    REPO,
    RunningServer,
    free_port,
    mlserver_env,
    outputs_by_name,
    start_server,
    stop_server,
)

from mlserver_model.dftools import DCS_FLAGS
from pixelring2nmf.serving.mlserver import serve_command

N_SMALL = 6  # LS in a small request, around the demo's flagged LS
NOT_A_COUNT = "is outside the range of occupancy counts [0, 4294967295]"
# (case, id, how the 400 shows it): each gave a 500 or a dropped connection after inference
BAD_IDS = [
    ("Latin-1", "run-\u00e9", "got 'run-\\xe9'"),
    ("beyond Latin-1", "run-\u20ac-\u65e5\u672c", "got 'run-\\u20ac-\\u65e5\\u672c'"),
    ("CR LF", "a\r\nb", "got 'a\\r\\nb'"),
    ("LF", "a\nb", "got 'a\\nb'"),
    ("NUL", "a\x00b", "got 'a\\x00b'"),
    ("of 10 kB", "x" * 10_000, f"got '{'x' * 64}'... (10000 characters)"),
]


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


@pytest.fixture(scope="module")
def image_server(build_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The build folder alone, served by the image's MLServer 1.5.0 (numpy 1.26, pydantic 1).

    dismcli mounts the build at /mnt/<Name>; nothing of the repository is visible there.
    """
    if not IMAGE_PYTHON.exists() and not os.environ.get("CI"):
        pytest.skip(f"no image-emulation venv at {IMAGE_PYTHON} (CI always has one)")
    tmp = tmp_path_factory.mktemp("image")
    folder = tmp / "mnt" / MODEL_NAME
    shutil.copytree(build_folder, folder, ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    server = start_server(
        serve_command(folder, IMAGE_PYTHON),
        port,
        tmp / "image.log",
        cwd=tmp / "mnt",
        env=mlserver_env(port),
    )
    yield server
    stop_server(server)


def _with(tensor: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**tensor, **changes}


def _bad_cases(small: dict[str, Any]) -> list[tuple[str, dict[str, Any] | bytes, int, str]]:
    """(case, body, status, text the error must contain) for every malformed request we know.

    400 is ours: the request is valid Open Inference Protocol JSON but wrong for this model, and
    the message names the input and the position. 422 is MLServer's own: the body is not JSON
    or does not follow the protocol's schema (no NaN in JSON, unknown datatype names, and on
    MLServer 1.5 a null `data`); the model never sees those.
    """
    ring2, dcs = small["inputs"][0], small["inputs"][1:]
    data = ring2["data"]

    def at(position: int, value: Any) -> list:
        return [*data[:position], value, *data[position + 1 :]]

    def ring2_only(**changes: Any) -> dict[str, Any]:
        return {"inputs": [_with(ring2, **changes), *dcs]}

    def oms(name: str, **changes: Any) -> dict[str, Any]:
        return {
            "inputs": [
                ring2,
                *[_with(t, **changes) if t["name"].endswith(name) else t for t in dcs],
            ]
        }

    transposed = np.asarray(data).reshape(N_SMALL, 140, 56).transpose(0, 2, 1).tolist()
    return [
        ("missing Ring2", {"inputs": dcs}, 400, "Missing input tensor 'Ring2'"),
        ("shape", ring2_only(shape=[N_SMALL, 56, 140]), 400, "[N, 140, 56]"),
        ("length", ring2_only(data=data[:-7]), 400, "product of the shape"),
        ("text in Ring2", ring2_only(data=at(3, "x")), 400, "'x' at flat position 3"),
        ("negative", ring2_only(data=at(10, -1)), 400, f"-1 at flat position 10 {NOT_A_COUNT}"),
        ("null in FP32", ring2_only(datatype="FP32", data=at(10, None)), 400, "null at flat"),
        ("Ring2 data is 5", ring2_only(data=5), 400, "data must be a list of values, got int"),
        ("Ring2 data is true", ring2_only(data=True), 400, "data must be a list of values"),
        ("OMS data is 5", oms("fpix_ready", data=5), 400, "fpix_ready': data must be a list"),
        ("transposed nesting", ring2_only(data=transposed), 400, "nested data has shape"),
        ("INT32 2^31", ring2_only(data=at(7, 2**31)), 400, "2147483648 at flat position 7"),
        ("INT32 2^40", ring2_only(data=at(7, 2**40)), 400, "outside the INT32 range"),
        ("INT8 1000", ring2_only(datatype="INT8", data=at(7, 1000)), 400, "outside the INT8"),
        ("FP16 70000", ring2_only(datatype="FP16", data=at(7, 70000.0)), 400, "outside the FP16"),
        ("2^64-1", ring2_only(data=at(7, 2**64 - 1)), 400, "18446744073709551615"),
        # values the datatype allows but float32 inference cannot hold, booleans as counts
        (
            "UINT64 2^63",
            ring2_only(datatype="UINT64", data=at(7, 2**63)),
            400,
            f"value 9223372036854775808 at flat position 7 {NOT_A_COUNT}",
        ),
        (
            "INT64 2^63-1",
            ring2_only(datatype="INT64", data=at(7, 2**63 - 1)),
            400,
            f"value 9223372036854775807 at flat position 7 {NOT_A_COUNT}",
        ),
        (
            "INT64 2^32",
            ring2_only(datatype="INT64", data=at(7, 2**32)),
            400,
            f"value 4294967296 at flat position 7 {NOT_A_COUNT}",
        ),
        (
            "FP32 3e38",
            ring2_only(datatype="FP32", data=at(7, 3e38)),
            400,
            f"value 3e+38 at flat position 7 {NOT_A_COUNT}",
        ),
        ("true as a count", ring2_only(data=at(3, True)), 400, "found True at flat position 3"),
        # ids the Ce-Id response header cannot carry: refused before the model runs
        *[
            (f"id {label}", {**small, "id": request_id}, 400, shown)
            for label, request_id, shown in BAD_IDS
        ],
        (
            "text in a numeric OMS tensor",
            {
                "inputs": [
                    ring2,
                    *dcs,
                    {
                        "name": "oms__pileup",
                        "shape": [N_SMALL],
                        "datatype": "FP32",
                        "data": ["1", *[50.0] * 5],
                    },
                ]
            },
            400,
            "found '1' at position 0",
        ),
        (
            "text with spaces",
            {
                "inputs": [
                    ring2,
                    *dcs,
                    {
                        "name": "oms__pileup",
                        "shape": [N_SMALL],
                        "datatype": "FP32",
                        "data": [" 1e0 ", *[50.0] * 5],
                    },
                ]
            },
            400,
            "found ' 1e0 '",
        ),
        (
            "OMS length",
            oms("tecm_ready", shape=[2], data=[True, True]),
            400,
            "oms_lumisection_info__tecm_ready",
        ),
        ("some DCS", {"inputs": [ring2, *dcs[:6]]}, 400, "missing ['tecp_ready', 'tecm_ready']"),
        ("limit", ring2_only(shape=[5_001, 140, 56]), 400, "5001 lumisections"),
        ("unknown output", {**small, "outputs": [{"name": "Score"}]}, 400, "'Score'"),
        (
            "output twice",
            {**small, "outputs": [{"name": "Flag"}, {"name": "Flag"}]},
            400,
            "['Flag'] requested more than once",
        ),
        ("not JSON", b'{"inputs": [', 422, ""),
        (
            "NaN token",
            json.dumps(ring2_only(datatype="FP32", data=at(10, float("nan")))).encode(),
            422,
            "",
        ),
        ("unknown datatype", ring2_only(datatype="FP128"), 422, ""),
    ]


_ZEROS_REQUEST = {
    "inputs": [{"name": "Ring2", "data": [0] * (N_SMALL * 140 * 56)}]
    + [{"name": f"oms_lumisection_info__{flag}"} for flag in DCS_FLAGS]
}
BAD_CASES = [case for case, *_ in _bad_cases(_ZEROS_REQUEST)]


@pytest.mark.parametrize("server_kind", ["main", "image"])
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_gets_its_status_and_message_then_a_correct_answer(
    case: str,
    server_kind: str,
    request: pytest.FixtureRequest,
    small_request: dict[str, Any],
    demo_answer: dict[str, Any],
    small_rows: slice,
) -> None:
    server = request.getfixturevalue("served_model" if server_kind == "main" else "image_server")
    ((_, body, status, message),) = [c for c in _bad_cases(small_request) if c[0] == case]
    response = server.infer(body)
    assert response.status_code == status, (response.status_code, response.text[:500])
    if status == 400:
        error = response.json()["error"]
        assert message in error, error
        assert "Traceback" not in error
    assert_answer(server.infer(small_request), expected_small(demo_answer, small_rows))


def test_null_data_is_ours_on_17_and_mlservers_on_15(
    served_model: RunningServer, image_server: RunningServer, small_request: dict[str, Any]
) -> None:
    ring2 = small_request["inputs"][0]
    body = {"inputs": [_with(ring2, data=None), *small_request["inputs"][1:]]}
    answer = served_model.infer(body)
    assert answer.status_code == 400 and "got null" in answer.json()["error"]
    assert image_server.infer(body).status_code == 422  # pydantic 1 refuses null itself


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
    # 10,000 of them once wrote a 110 kB line per request: ten names, then how many more
    many = [{**junk, "name": f"junk{i:05d}"} for i in range(10_000)]
    body = {"inputs": [*small_request["inputs"], *many]}
    assert_answer(served_model.infer(body), expected_small(demo_answer, small_rows))
    (line,) = [x for x in served_model.log().splitlines() if "'junk00000'" in x]
    assert "'junk00009'] and 9990 more" in line and len(line) < 500


def test_each_answer_and_each_400_is_one_log_line(
    served_model: RunningServer, small_request: dict[str, Any]
) -> None:
    assert served_model.infer({**small_request, "id": "ops-200"}).status_code == 200
    bad = {**small_request, "id": "ops-400", "inputs": small_request["inputs"][1:]}
    assert served_model.infer(bad).status_code == 400
    log = served_model.log().splitlines()
    (answered,) = [line for line in log if "id='ops-200'" in line]
    assert re.fullmatch(
        rf"\[INFO\]: Request id='ops-200': {N_SMALL} LS, flagged 1 before and 1 after the DCS "
        r"filter; \d+ ms \(\d+ ms in the model\)",
        answered,
    ), answered
    (refused,) = [line for line in log if "id='ops-400'" in line]
    assert refused.startswith("[WARNING]: Refused request id='ops-400' (400): Missing input")


def test_metadata_lists_the_tensors_of_the_template(served_model: RunningServer) -> None:
    """What a client discovers at GET /v2/models/<name> (and tritonclient's
    get_model_metadata) is what template.yaml declares to DIALS."""
    import tritonclient.http as httpclient
    import yaml

    properties = yaml.safe_load((REPO / "template.yaml").read_text())["Resources"][BUILD_KEY][
        "Properties"
    ]
    inputs = [(s["Name"], s["DataType"], s["Dims"]) for s in properties["InputSignature"]]
    for metadata in properties["InputMetadata"]:
        inputs += [
            (f"{metadata['Name']}__{a['Name']}", a["DataType"], a["Dims"])
            for a in metadata["Attributes"]
        ]
    outputs = [(s["Name"], s["DataType"], s["Dims"]) for s in properties["OutputSignature"]]

    def listed(tensors: list[dict]) -> list[tuple]:
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in tensors]

    answer = requests.get(f"{served_model.base_url}/v2/models/{MODEL_NAME}", timeout=10).json()
    assert (listed(answer["inputs"]), listed(answer["outputs"])) == (inputs, outputs)
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{served_model.port}")
    try:
        metadata = client.get_model_metadata(MODEL_NAME)
    finally:
        client.close()
    assert (listed(metadata["inputs"]), listed(metadata["outputs"])) == (inputs, outputs)


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


def test_image_environment_serves_a_copy_of_the_build_alone(
    image_server: RunningServer, demo_body: bytes, demo_answer: dict[str, Any]
) -> None:
    version = requests.get(f"{image_server.base_url}/v2", timeout=10).json()["version"]
    response = image_server.infer(demo_body)
    assert version == "1.5.0"
    assert response.status_code == 200, response.text[:2000]
    answer = response.json()
    assert outputs_by_name(answer) == outputs_by_name(demo_answer)
    assert (answer["model_name"], answer["model_version"]) == (MODEL_NAME, "0.1.0")
    assert "flagged 1 out of 750 lumisections" in image_server.log()


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
    env = mlserver_env(port, MLSERVER_DEBUG="true")
    command = serve_command(folder, python) if python else serve_command(folder)
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
