"""Ring 1 (pixel-ring1-nmf) and the joint model (pixel-fpix-nmf) served by a real MLServer.

Each model is served once per session (`served_ring1`, `served_fpix`: `pixelring2nmf serve -f
template_ring1.yaml` / `-f template_fpix.yaml` with the session's small models) from the same
runtime folder as Ring 2; tests/test_serving.py holds the Ring 2 server's. Checked here: the
answer is the pipeline's, the declared tensors are the template's, bad requests get a 400
naming the input and leave the server answering, and the serving guard refuses before reading
what it must. The LS are the demo run's in both rings (`simulate --ring both`, conftest.py).
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from conftest import (
    FPIX_BUILD_KEY,
    REPO,
    RING1_BUILD_KEY,
    RunningServer,
    outputs_by_name,
)

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.joint import load_model

N_LS = 60  # LS per request, around the demo's Multi-Disk LS
TEMPLATES = {
    "ring1": ("template_ring1.yaml", RING1_BUILD_KEY),
    "fpix": ("template_fpix.yaml", FPIX_BUILD_KEY),
}
MAPS_INPUTS = {"ring1": ("Ring1",), "fpix": ("Ring1", "Ring2")}


@pytest.fixture(scope="module")
def rows(fpix_demo_maps: dict[int, np.ndarray], model) -> slice:
    flagged = np.flatnonzero(model.predict(fpix_demo_maps[2]).flag)
    start = max(0, int(flagged[0]) - N_LS // 2)
    return slice(start, start + N_LS)


@pytest.fixture(scope="module")
def maps(fpix_demo_maps: dict[int, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {"Ring1": fpix_demo_maps[1][rows], "Ring2": fpix_demo_maps[2][rows]}


@pytest.fixture(scope="module")
def dcs(demo_data: dict[str, Any], rows: slice) -> dict[str, np.ndarray]:
    return {flag: np.asarray(demo_data[flag][rows], dtype=bool) for flag in DCS_FLAGS}


def maps_tensor(name: str, maps: np.ndarray, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(maps.shape),
        "datatype": "INT32",
        "data": np.asarray(maps, dtype=np.int32).ravel().tolist(),
        **changes,
    }


def dcs_tensors(dcs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"oms_lumisection_info__{flag}",
            "shape": [len(values)],
            "datatype": "BOOL",
            "data": values.tolist(),
        }
        for flag, values in dcs.items()
    ]


def request_of(kind: str, maps: dict[str, np.ndarray], dcs: dict[str, np.ndarray]) -> dict:
    return {
        "inputs": [
            *(maps_tensor(n, maps[n]) for n in MAPS_INPUTS[kind]),
            *dcs_tensors(dcs),
        ]
    }


@pytest.fixture(scope="module")
def servers(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The session's Ring 1 and joint servers, by kind (started on first use)."""
    return {
        "ring1": lambda: request.getfixturevalue("served_ring1"),
        "fpix": lambda: request.getfixturevalue("served_fpix"),
    }


@pytest.fixture(scope="module")
def expected(
    maps: dict[str, np.ndarray], dcs: dict[str, np.ndarray], ring1_model_path, fpix_model_path
) -> dict[str, Any]:
    """The pipeline's answer to the requests of both kinds."""
    ring1 = load_model(ring1_model_path).predict(maps["Ring1"], dcs)
    fpix = load_model(fpix_model_path).predict({1: maps["Ring1"], 2: maps["Ring2"]}, dcs)
    return {"ring1": ring1, "fpix": fpix}


def assert_pipeline_answer(response: requests.Response, expected) -> None:
    assert response.status_code == 200, response.text[:1000]
    got = outputs_by_name(response.json())
    assert got["Flag"]["data"] == expected.flag.tolist()
    np.testing.assert_allclose(got["Metric"]["data"], expected.metric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["ring1", "fpix"])
def test_the_answer_is_the_pipelines_in_request_order(
    kind: str, servers, maps, dcs, expected
) -> None:
    server: RunningServer = servers[kind]()
    response = server.infer({**request_of(kind, maps, dcs), "id": f"{kind}-order"})
    assert_pipeline_answer(response, expected[kind])
    answer = response.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        server.model_name,
        "0.1.0",
        f"{kind}-order",
    )
    assert [o["shape"] for o in answer["outputs"]] == [[N_LS], [N_LS]]
    if kind == "fpix":  # the demo's Multi-Disk LS, in both rings: one decision flags it
        assert sum(outputs_by_name(answer)["Flag"]["data"]) >= 1
    # the LS reversed: the answer follows
    reversed_maps = {name: m[::-1] for name, m in maps.items()}
    reversed_dcs = {flag: v[::-1] for flag, v in dcs.items()}
    got = outputs_by_name(server.infer(request_of(kind, reversed_maps, reversed_dcs)).json())
    assert got["Flag"]["data"] == expected[kind].flag[::-1].tolist()
    assert (
        f"Request id='{kind}-order': {N_LS} LS, flagged {int(expected[kind].flag.sum())}"
        in server.log()
    )


@pytest.mark.parametrize("kind", ["ring1", "fpix"])
def test_metadata_lists_the_tensors_of_the_template(kind: str, servers) -> None:
    server: RunningServer = servers[kind]()
    template, key = TEMPLATES[kind]
    properties = yaml.safe_load((REPO / template).read_text())["Resources"][key]["Properties"]
    assert properties["Name"] == server.model_name
    inputs = [(s["Name"], s["DataType"], s["Dims"]) for s in properties["InputSignature"]]
    for metadata in properties["InputMetadata"]:
        inputs += [
            (f"{metadata['Name']}__{a['Name']}", a["DataType"], a["Dims"])
            for a in metadata["Attributes"]
        ]
    outputs = [(s["Name"], s["DataType"], s["Dims"]) for s in properties["OutputSignature"]]
    answer = requests.get(f"{server.base_url}/v2/models/{server.model_name}", timeout=10).json()

    def listed(tensors: list[dict]) -> list[tuple]:
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in tensors]

    assert (listed(answer["inputs"]), listed(answer["outputs"])) == (inputs, outputs)


def _bad_cases(kind: str, maps, dcs) -> list[tuple[str, dict | bytes, int, str]]:
    """(case, body, status, text of the error) for the Ring 1 or joint server."""
    good = request_of(kind, maps, dcs)["inputs"]
    ring1 = good[0]
    others = good[1:]
    text = list(ring1["data"])
    text[3] = "x"
    cases = [
        ("missing Ring1", {"inputs": others}, 400, "Missing input tensor 'Ring1' (Ring 1 maps"),
        (
            "Ring 2 shape",
            {"inputs": [{**ring1, "shape": [N_LS, 140, 56]}, *others]},
            400,
            "Input 'Ring1' must have shape [N, 92, 56]",
        ),
        ("text", {"inputs": [{**ring1, "data": text}, *others]}, 400, "'x' at flat position 3"),
        (
            "limit",
            {"inputs": [{**ring1, "shape": [5_001, 92, 56]}, *others]},
            400,
            "'Ring1' has 5001 lumisections",
        ),
        ("not JSON", b'{"inputs": [', 422, ""),
    ]
    if kind == "fpix":
        ring2, oms = good[1], good[2:]
        short = maps["Ring1"][:-1]
        cases += [
            ("missing Ring2", {"inputs": [ring1, *oms]}, 400, "Missing input tensor 'Ring2'"),
            (
                "other LS count",
                {"inputs": [maps_tensor("Ring1", short), ring2, *oms]},
                400,
                f"same lumisections in the same order; got {N_LS - 1} in 'Ring1' and {N_LS}",
            ),
        ]
    return cases


BAD_CASES = [
    (kind, case)
    for kind in ("ring1", "fpix")
    for case, *_ in _bad_cases(
        kind,
        {"Ring1": np.zeros((N_LS, 92, 56), int), "Ring2": np.zeros((N_LS, 140, 56), int)},
        {f: np.ones(N_LS, bool) for f in DCS_FLAGS},
    )
]


@pytest.mark.parametrize("kind, case", BAD_CASES)
def test_a_bad_request_gets_its_status_and_message_then_a_correct_answer(
    kind: str, case: str, servers, maps, dcs, expected
) -> None:
    server: RunningServer = servers[kind]()
    ((_, body, status, message),) = [c for c in _bad_cases(kind, maps, dcs) if c[0] == case]
    response = server.infer(body)
    assert response.status_code == status, (response.status_code, response.text[:500])
    if status == 400:
        error = response.json()["error"]
        assert message in error, error
        assert "Traceback" not in error
    assert_pipeline_answer(server.infer(request_of(kind, maps, dcs)), expected[kind])


def test_nested_maps_in_one_ring_take_mlservers_path_and_give_the_same_answer(
    servers, maps, dcs, expected
) -> None:
    server: RunningServer = servers["fpix"]()
    body = request_of("fpix", maps, dcs)
    body["inputs"][0]["data"] = np.asarray(maps["Ring1"], dtype=np.int32).tolist()
    assert_pipeline_answer(server.infer(body), expected["fpix"])


@pytest.mark.parametrize("kind", ["ring1", "fpix"])
def test_the_guard_refuses_a_body_above_its_limit_before_reading_it(kind: str, servers) -> None:
    server: RunningServer = servers[kind]()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("POST", f"/v2/models/{server.model_name}/infer")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(400_000_000))  # never sent
        connection.endheaders()
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 413
    assert "split the request" in body["error"]
    assert requests.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
