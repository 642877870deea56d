"""The MLServer handler called in-process: decoding, validation, encoding, settings.

The handler is built from a real ModelSettings and the shipped model, as MLServer would, and
its answers are compared with the pipeline called directly on the same maps: the handler must
add nothing but decoding and encoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserver.errors import InferenceError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest

from mlserver_model import datatype
from mlserver_model.app import COUNTS, DEFAULT_MAX_LUMISECTIONS, Handler
from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import MODEL_NAME, PixelRing2NMF

N_WINDOW = 6  # LS per small request: enough to hold the demo's Multi-Disk LS and healthy ones


def make_handler(model_uri: str | Path, extra: dict | None = None) -> Handler:
    settings = ModelSettings(
        name=MODEL_NAME,
        implementation=Handler,
        parameters=ModelParameters(uri=str(model_uri), version="0.1.0", extra=extra or {}),
    )
    handler = Handler(settings)
    assert asyncio.run(handler.load()) is True
    return handler


def predict(handler: Handler, request: dict[str, Any]):
    return asyncio.run(handler.predict(InferenceRequest(**request)))


def outputs(response) -> dict[str, Any]:
    return {o.name: o for o in response.outputs}


@pytest.fixture(scope="module")
def handler(model_path: Path) -> Handler:
    return make_handler(model_path)


@pytest.fixture(scope="module")
def window(demo_data: dict[str, Any], model: PixelRing2NMF) -> dict[str, np.ndarray]:
    """N_WINDOW LS of the demo run around its flagged (Multi-Disk) LS, with DCS flags."""
    flagged = np.flatnonzero(model.predict(demo_data["Ring2"]).flag)
    assert flagged.size >= 1, "the demo run must contain a flagged LS"
    start = max(0, int(flagged[0]) - N_WINDOW // 2)
    rows = slice(start, start + N_WINDOW)
    window = {"Ring2": np.asarray(demo_data["Ring2"][rows])}
    for flag in DCS_FLAGS:
        window[flag] = np.asarray(demo_data[flag][rows], dtype=bool)
    return window


def ring2_tensor(maps: np.ndarray, datatype_name: str = "INT32", nested: bool = False) -> dict:
    data = maps.tolist() if nested else maps.ravel().tolist()
    return {"name": "Ring2", "shape": list(maps.shape), "datatype": datatype_name, "data": data}


def oms_tensor(attribute: str, values: list, datatype_name: str = "BOOL", prefix: str = "oms"):
    return {
        "name": f"{prefix}__{attribute}",
        "shape": [len(values)],
        "datatype": datatype_name,
        "data": values,
    }


def dcs_tensors(window: dict[str, np.ndarray], prefix: str = "oms_lumisection_info") -> list:
    return [oms_tensor(f, window[f].tolist(), prefix=prefix) for f in DCS_FLAGS]


def test_load_resolves_uri_relative_to_model_settings(tmp_path: Path, model_path: Path) -> None:
    folder = tmp_path / "pixel-ring2-nmf"
    folder.mkdir()
    shutil.copy2(model_path, folder / "model.joblib")
    settings_path = folder / "model-settings.json"
    settings_path.write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "implementation": "mlserver_model.app.Handler",
                "parameters": {"uri": "model.joblib", "version": "0.1.0"},
            }
        )
    )
    handler = Handler(ModelSettings.parse_file(str(settings_path)))
    assert asyncio.run(handler.load()) is True
    assert handler.version == "0.1.0"


def test_load_refuses_a_bad_max_lumisections(model_path: Path) -> None:
    with pytest.raises(ValueError, match="max_lumisections"):
        make_handler(model_path, extra={"max_lumisections": "many"})


def test_answer_matches_the_pipeline_in_request_order(
    handler: Handler, model: PixelRing2NMF, window: dict[str, np.ndarray]
) -> None:
    maps = window["Ring2"][::-1].copy()  # reversed: the order must follow the request
    oms = {f: window[f][::-1] for f in DCS_FLAGS}
    response = predict(
        handler,
        {
            "id": "req-42",
            "inputs": [
                ring2_tensor(maps),
                *dcs_tensors({f: oms[f] for f in DCS_FLAGS}),
            ],
        },
    )
    expected = model.predict(maps, oms)
    got = outputs(response)
    assert (response.id, response.model_name, response.model_version) == (
        "req-42",
        MODEL_NAME,
        "0.1.0",
    )
    assert list(got) == ["Flag", "Metric"]
    assert got["Flag"].datatype == "BOOL" and got["Flag"].shape == [N_WINDOW]
    assert got["Metric"].datatype == "FP32" and got["Metric"].shape == [N_WINDOW]
    assert list(got["Flag"].data) == expected.flag.tolist()
    assert list(got["Metric"].data) == expected.metric.astype(np.float32).tolist()
    assert any(got["Flag"].data), "the window holds the demo's flagged LS"


@pytest.mark.parametrize(
    ("datatype_name", "nested"),
    [("INT32", True), ("FP32", False), ("FP64", True), ("INT64", False), ("UINT16", False)],
)
def test_any_numeric_datatype_flat_or_nested_gives_the_same_answer(
    handler: Handler, window: dict[str, np.ndarray], datatype_name: str, nested: bool
) -> None:
    reference = outputs(predict(handler, {"inputs": [ring2_tensor(window["Ring2"])]}))
    maps = window["Ring2"].astype(datatype.to_numpy_dtype(datatype_name))
    got = outputs(predict(handler, {"inputs": [ring2_tensor(maps, datatype_name, nested)]}))
    assert list(got["Flag"].data) == list(reference["Flag"].data)
    assert list(got["Metric"].data) == list(reference["Metric"].data)


def test_extra_outputs_on_request(handler: Handler, window: dict[str, np.ndarray]) -> None:
    wanted = [{"name": "Groups"}, {"name": "Flag"}, {"name": "AnomalyType"}]
    response = predict(handler, {"inputs": [ring2_tensor(window["Ring2"])], "outputs": wanted})
    assert [o.name for o in response.outputs] == ["Groups", "Flag", "AnomalyType"]
    got = outputs(response)
    assert got["Groups"].datatype == "BYTES" and got["Groups"].shape == [N_WINDOW]
    flagged = [i for i, f in enumerate(got["Flag"].data) if f]
    assert flagged
    for i in flagged:
        assert got["AnomalyType"].data[i] in ("Multi-Disk", "Quarter")
        assert len(got["Groups"].data[i].split(";")) >= 2  # a Multi-Disk hit spans disks


def test_zero_lumisections_give_empty_outputs(handler: Handler) -> None:
    empty = np.zeros((0, 140, 56), dtype=np.int32)
    response = predict(handler, {"inputs": [ring2_tensor(empty)]})
    got = outputs(response)
    assert got["Flag"].shape == [0] and list(got["Flag"].data) == []
    assert got["Metric"].shape == [0] and list(got["Metric"].data) == []


def test_oms_nulls_fail_the_dcs_filter_and_prefixes_are_free(
    handler: Handler, window: dict[str, np.ndarray]
) -> None:
    # every LS DCS-good, except the flagged one whose fpix_ready is null
    base = outputs(predict(handler, {"inputs": [ring2_tensor(window["Ring2"])]}))
    flagged = [i for i, f in enumerate(base["Flag"].data) if f]
    values = {f: [True] * N_WINDOW for f in DCS_FLAGS}
    values["fpix_ready"][flagged[0]] = None
    tensors = [oms_tensor(f, values[f], prefix="dcs_bits") for f in DCS_FLAGS]
    tensors.append(oms_tensor("pileup", [60.5, None, *[55.0] * (N_WINDOW - 2)], "FP32"))
    tensors.append(oms_tensor("run_number", [390000] * N_WINDOW, "INT32", prefix="general"))
    got = outputs(predict(handler, {"inputs": [ring2_tensor(window["Ring2"]), *tensors]}))
    assert got["Flag"].data[flagged[0]] is False
    assert sum(got["Flag"].data) == len(flagged) - 1


def test_unknown_inputs_are_ignored_with_a_log_line(
    handler: Handler, window: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    junk = {"name": "Ring1", "shape": [1], "datatype": "INT32", "data": [1]}
    with caplog.at_level(logging.INFO):
        got = outputs(predict(handler, {"inputs": [ring2_tensor(window["Ring2"]), junk]}))
    assert len(got["Flag"].data) == N_WINDOW
    assert "Ring1" in caplog.text and "Ignoring" in caplog.text
    assert "[INFO]: Flagging results (after filtering)" in caplog.text


def test_lumisection_limit_is_configurable(window: dict[str, np.ndarray], model_path: Path) -> None:
    small = make_handler(model_path, extra={"max_lumisections": N_WINDOW - 1})
    with pytest.raises(InferenceError, match=rf"{N_WINDOW} lumisections.*\({N_WINDOW - 1}"):
        predict(small, {"inputs": [ring2_tensor(window["Ring2"])]})
    assert DEFAULT_MAX_LUMISECTIONS == 5_000


def _bad_requests(maps: np.ndarray) -> list[tuple[str, dict, str]]:
    """(case, request, regex the 400 message must match); maps are (2, 140, 56)."""
    n = len(maps)
    flat = maps.ravel().tolist()
    good = ring2_tensor(maps)
    negative = list(flat)
    negative[100] = -3
    nan = [float(v) for v in flat]
    nan[100] = None  # JSON null in an FP32 tensor
    real_nan = [float(v) for v in flat]
    real_nan[100] = float("nan")  # only in-process: JSON has no NaN (MLServer answers 422)
    text = list(flat)
    text[5] = "many"
    dcs_partial = [oms_tensor(f, [True] * n) for f in DCS_FLAGS[:5]]
    return [
        (
            "missing Ring2",
            {"inputs": [oms_tensor("fpix_ready", [True] * n)]},
            "Ring2.*[Mm]issing|[Mm]issing.*Ring2",
        ),
        ("wrong shape", {"inputs": [{**good, "shape": [n, 56, 140]}]}, r"shape \[N, 140, 56\]"),
        ("2-D shape", {"inputs": [{**good, "shape": [n, 7840]}]}, r"shape \[N, 140, 56\]"),
        ("short data", {"inputs": [{**good, "data": flat[:-1]}]}, "product of the shape"),
        ("long data", {"inputs": [{**good, "data": [*flat, 0]}]}, "product of the shape"),
        ("text", {"inputs": [{**good, "data": text}]}, "many"),
        ("null in INT32", {"inputs": [{**good, "data": nan}]}, "Ring2.*(None|null)"),
        ("null in FP32", {"inputs": [{**good, "datatype": "FP32", "data": nan}]}, "null at"),
        ("NaN in FP32", {"inputs": [{**good, "datatype": "FP32", "data": real_nan}]}, "NaN"),
        (
            "negative",
            {"inputs": [{**good, "data": negative}]},
            r"value -3 at flat position 100 is outside the range of occupancy counts",
        ),
        ("BYTES maps", {"inputs": [{**good, "datatype": "BYTES"}]}, "numeric"),
        (
            "OMS length",
            {"inputs": [good, oms_tensor("pileup", [50.0] * (n + 1), "FP32")]},
            rf"oms__pileup.*{n + 1} values.*{n} lumisections",
        ),
        ("some DCS flags", {"inputs": [good, *dcs_partial]}, "tob_ready.*tecp_ready.*tecm_ready"),
        (
            "too many LS",
            {"inputs": [{**good, "shape": [DEFAULT_MAX_LUMISECTIONS + 1, 140, 56]}]},
            "5001 lumisections",
        ),
        ("unknown output", {"inputs": [good], "outputs": [{"name": "Score"}]}, "Score"),
    ]


BAD_CASES = [case for case, _, _ in _bad_requests(np.zeros((2, 140, 56), dtype=np.int32))]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_an_inference_error_naming_the_problem(
    handler: Handler, window: dict[str, np.ndarray], case: str
) -> None:
    ((_, request, pattern),) = [c for c in _bad_requests(window["Ring2"][:2]) if c[0] == case]
    with pytest.raises(InferenceError, match=pattern):
        predict(handler, request)


# --------------------------------------------------------------------------- datatype.py


def test_datatype_round_trip() -> None:
    for name, dtype in datatype.V2_TO_NUMPY.items():
        assert datatype.to_numpy_dtype(name) == dtype
        assert datatype.to_v2_datatype(dtype) == name
    assert datatype.to_v2_datatype(np.array(["a"]).dtype) == "BYTES"
    with pytest.raises(ValueError, match="FP128"):
        datatype.to_numpy_dtype("FP128")


def test_decode_nullable_keeps_nulls_apart_from_false() -> None:
    flags = datatype.decode_nullable([True, None, False], "BOOL", [3])
    assert flags.tolist() == [True, None, False]
    numbers = datatype.decode_nullable([[1], [None], [3]], "INT32", [3, 1])
    assert numbers.shape == (3,) and np.isnan(numbers[1]) and numbers[2] == 3
    with pytest.raises(ValueError, match=r"shape must be \[N\] or \[N, 1\]"):
        datatype.decode_nullable([1, 2, 3, 4], "INT32", [2, 2])


def test_tensor_values_reads_the_list_without_copying() -> None:
    request = InferenceRequest(inputs=[ring2_tensor(np.zeros((1, 140, 56), dtype=np.int32))])
    values = datatype.tensor_values(request.inputs[0].data)
    assert isinstance(values, list) and len(values) == 140 * 56
    assert values is datatype.tensor_values(request.inputs[0].data)


@pytest.mark.parametrize(
    ("values", "fast"),
    [
        ([0, 5, 2**31 - 1, 0, 1, 84, 70, 105], True),  # 84, 70, 105: the bytes T, F, i
        ([1, True], False),  # a bool is an int to numpy, but not a count
        ([0, False, 2], False),
        ([True] * 5 + [2**40], False),  # lengths that add up as n ints would
        ([1, -1], False),  # not a count: the general path names it
        ([1, 2**31], False),  # a count, but not an int32: the general path takes it
        ([1, 2**32], False),
        ([1, 2.0], False),
        ([1, None], False),
        ([1, "3"], False),
        ([1, [2]], False),
        ([], False),
    ],
)
def test_fast_path_takes_only_lists_of_counts(values, fast) -> None:
    decoded = datatype.flat_counts(values)
    assert (decoded is not None) == fast
    if fast:
        assert decoded.dtype == np.uint32 and decoded.flags.c_contiguous
        assert decoded.tolist() == [int(v) for v in values]


def test_decoding_is_the_same_where_the_fast_path_is_off(monkeypatch) -> None:
    values = [7, 0, 2**31 - 1, 3]
    fast = datatype.decode_numeric(values, "INT32", [2, 2])
    monkeypatch.setattr(datatype, "flat_counts", lambda values: None)
    general = datatype.decode_numeric(values, "INT32", [2, 2])
    assert general.tolist() == fast.tolist() == [[7, 0], [2**31 - 1, 3]]
    assert datatype.decode_numeric([1, 2**31], "UINT32", [2]).tolist() == [1, 2**31]


def test_negative_values_take_the_general_path_with_their_sign() -> None:
    decoded = datatype.decode_numeric([3, -2], "INT32", [2])
    assert decoded.tolist() == [3, -2]  # without limits: the datatype allows them


@pytest.mark.parametrize(
    ("values", "v2_type", "message"),
    [
        # each a value the datatype allows that counts cannot be: the exact value and place
        ([0, 2**63], "UINT64", "value 9223372036854775808 at flat position 1"),
        ([0, 2**64 - 1], "UINT64", "value 18446744073709551615 at flat position 1"),
        ([0, 2**63 - 1], "INT64", "value 9223372036854775807 at flat position 1"),
        ([0, 2**32], "INT64", "value 4294967296 at flat position 1"),
        ([0, 3e38], "FP32", r"value 3e\+38 at flat position 1"),
        ([0, -1], "INT32", "value -1 at flat position 1"),
        ([[0, 1], [2**40, 3]], "INT64", r"value 1099511627776 at index \[1, 0\]"),
    ],
)
def test_counts_outside_what_float32_inference_can_hold_are_refused(
    values, v2_type, message
) -> None:
    shape = [2, 2] if isinstance(values[0], list) else [2]
    with pytest.raises(ValueError, match=f"{message} is outside the range of occupancy counts"):
        datatype.decode_numeric(values, v2_type, shape, limits=COUNTS)
    assert datatype.decode_numeric([0, 2**32 - 1], "UINT64", [2], limits=COUNTS).max() == 2**32 - 1


@pytest.mark.parametrize(
    "values", [[1, True], [True, 1], [False, 0.5], [[1, 2], [3, False]], [True, False]]
)
def test_booleans_are_not_counts(values) -> None:
    shape = [2, 2] if isinstance(values[0], list) else [2]
    with pytest.raises(ValueError, match=r"found (True|False) at flat position"):
        datatype.decode_numeric(values, "INT32", shape, limits=COUNTS)


def test_parsed_integers_get_the_checks_and_messages_of_a_list() -> None:
    """The guard's numpy-parsed maps meet the same checks as MLServer's lists (same words)."""
    for values, v2_type, shape in [
        ([0, 1, 2], "INT32", [2]),
        ([0, 2**31], "INT32", [2]),
        ([0, 2**33], "INT64", [2]),
        ([0, 1000], "INT8", [2]),
        ([1, 2], "BYTES", [2]),
    ]:
        as_list = as_array = None
        try:
            datatype.decode_numeric(values, v2_type, shape, limits=COUNTS)
        except ValueError as error:
            as_list = str(error)
        try:
            parsed = np.asarray(values, dtype=np.int64)
            datatype.decode_parsed_integers(parsed, v2_type, shape, limits=COUNTS)
        except ValueError as error:
            as_array = str(error)
        assert as_list is not None and as_list == as_array


@pytest.mark.parametrize(
    ("values", "v2_type", "message"),
    [
        ([1, 2.5], "INT32", "a fraction at flat position 1"),
        ([1, "3"], "INT32", "'3' at flat position 1"),
        ([1, None], "FP32", "null"),
    ],
)
def test_general_decoding_never_truncates_or_parses_text(values, v2_type, message) -> None:
    with pytest.raises(ValueError, match=message):
        datatype.decode_numeric(values, v2_type, [2])


def test_integral_floats_decode_for_an_integer_tensor() -> None:
    assert datatype.decode_numeric([1.0, 2.0], "INT32", [2]).tolist() == [1, 2]


# --------------------------------------------------------------- Ring 1 and the joint model


@pytest.fixture(scope="module")
def ring_handlers(ring1_model_path: Path, fpix_model_path: Path) -> dict[str, Handler]:
    """The handler on the session's Ring 1 model and on its joint model."""
    return {"ring1": make_handler(ring1_model_path), "fpix": make_handler(fpix_model_path)}


@pytest.fixture(scope="module")
def fpix_window(
    fpix_demo_maps: dict[int, np.ndarray], window: dict[str, np.ndarray], model: PixelRing2NMF
) -> dict[str, np.ndarray]:
    """The Ring 2 window's LS in both rings (`fpix_demo_maps`), with their DCS flags."""
    flagged = np.flatnonzero(model.predict(fpix_demo_maps[2]).flag)
    start = max(0, int(flagged[0]) - N_WINDOW // 2)  # as `window`
    assert np.array_equal(fpix_demo_maps[2][start], window["Ring2"][0])
    return {"Ring1": fpix_demo_maps[1][start : start + N_WINDOW], **window}


def maps_tensor(name: str, maps: np.ndarray, **changes: Any) -> dict:
    return {
        "name": name,
        "shape": list(maps.shape),
        "datatype": "INT32",
        "data": maps.ravel().tolist(),
        **changes,
    }


def ring_inputs(kind: str, window: dict[str, np.ndarray], rows: Any = slice(None)) -> list:
    names = ["Ring1"] if kind == "ring1" else ["Ring1", "Ring2"]
    return [maps_tensor(n, np.ascontiguousarray(window[n][rows])) for n in names]


@pytest.mark.parametrize("kind", ["ring1", "fpix"])
def test_ring1_and_joint_answers_match_their_pipeline_in_request_order(
    kind: str,
    ring_handlers: dict[str, Handler],
    fpix_window: dict[str, np.ndarray],
    ring1_model_path: Path,
    fpix_model_path: Path,
) -> None:
    from mlserver_model.joint import load_model

    handler = ring_handlers[kind]
    order = np.arange(N_WINDOW)[::-1]
    oms = {f: fpix_window[f][order] for f in DCS_FLAGS}
    request = {
        "id": f"{kind}-1",
        "inputs": [
            *ring_inputs(kind, fpix_window, order),
            *[oms_tensor(f, oms[f].tolist(), prefix="oms_lumisection_info") for f in DCS_FLAGS],
        ],
        "outputs": [{"name": n} for n in ("Flag", "Metric", "AnomalyType", "Groups")],
    }
    got = outputs(predict(handler, request))
    model = load_model(ring1_model_path if kind == "ring1" else fpix_model_path)
    if kind == "ring1":
        expected = model.predict(fpix_window["Ring1"][order], oms)
    else:
        maps = {1: fpix_window["Ring1"][order], 2: fpix_window["Ring2"][order]}
        expected = model.predict(maps, oms)
    assert list(got["Flag"].data) == expected.flag.tolist()
    np.testing.assert_allclose(list(got["Metric"].data), expected.metric, rtol=1e-6)
    assert list(got["AnomalyType"].data) == [str(t) for t in expected.anomaly_type]
    assert list(got["Groups"].data) == expected.groups()
    if kind == "fpix":  # the demo's Multi-Disk LS, silent in both rings, is flagged
        assert expected.flag.any()


def test_the_declared_inputs_follow_the_models_rings(
    ring_handlers: dict[str, Handler], handler: Handler
) -> None:
    def maps_inputs(h: Handler) -> list:
        return [(t.name, t.shape) for t in h.inputs if not t.name.startswith("oms")]

    assert maps_inputs(handler) == [("Ring2", [-1, 140, 56])]
    assert maps_inputs(ring_handlers["ring1"]) == [("Ring1", [-1, 92, 56])]
    assert maps_inputs(ring_handlers["fpix"]) == [("Ring1", [-1, 92, 56]), ("Ring2", [-1, 140, 56])]
    oms = [t.name for t in handler.inputs if t.name.startswith("oms")]
    for other in ring_handlers.values():
        assert [t.name for t in other.inputs if t.name.startswith("oms")] == oms


def _ring_bad_requests(kind: str, window: dict[str, np.ndarray]) -> list[tuple[str, dict, str]]:
    """(case, request, regex of the 400) for a maps tensor of the Ring 1 or joint model: the
    bad one is Ring1 ('ring1', 'fpix') or Ring2 ('fpix-ring2'), the others are good."""
    name = "Ring2" if kind == "fpix-ring2" else "Ring1"
    rows, cols = window[name].shape[1:]
    maps = np.ascontiguousarray(window[name][:2])
    others = (
        []
        if kind == "ring1"
        else [maps_tensor(n, window[n][:2]) for n in ("Ring1", "Ring2") if n != name]
    )
    good = maps_tensor(name, maps)
    flat = good["data"]
    negative, text, null = list(flat), list(flat), [float(v) for v in flat]
    negative[100], text[5], null[100] = -3, "many", None

    def bad(**changes: Any) -> dict:
        return {"inputs": [*others, {**good, **changes}]}

    return [
        ("missing", {"inputs": others}, rf"Missing input tensor '{name}'.*\[N, {rows}, {cols}\]"),
        (
            "Ring 2 shape",
            bad(shape=[2, 140 if rows != 140 else 92, 56]),
            rf"'{name}' must have shape \[N, {rows}, {cols}\]",
        ),
        ("short data", bad(data=flat[:-1]), "product of the shape"),
        ("text", bad(data=text), f"{name}.*many"),
        ("null in FP32", bad(datatype="FP32", data=null), "null at"),
        ("negative", bad(data=negative), "value -3 at flat position 100 is outside the range"),
        ("BYTES maps", bad(datatype="BYTES"), "numeric"),
        (
            "too many LS",
            bad(shape=[DEFAULT_MAX_LUMISECTIONS + 1, rows, cols]),
            f"'{name}' has 5001 lumisections",
        ),
        *(
            []
            if kind == "ring1"
            else [
                (
                    "other LS count",
                    bad(shape=[1, rows, cols], data=flat[: rows * cols]),
                    "both rings must hold the same lumisections",
                )
            ]
        ),
    ]


RING_BAD_CASES = [
    (kind, case)
    for kind in ("ring1", "fpix", "fpix-ring2")
    for case, _, _ in _ring_bad_requests(
        kind,
        {"Ring1": np.zeros((2, 92, 56), np.int32), "Ring2": np.zeros((2, 140, 56), np.int32)},
    )
]


@pytest.mark.parametrize("kind, case", RING_BAD_CASES)
def test_bad_ring1_or_joint_input_is_an_inference_error_naming_it(
    ring_handlers: dict[str, Handler], fpix_window: dict[str, np.ndarray], kind: str, case: str
) -> None:
    handler = ring_handlers[kind.split("-")[0]]
    ((_, request, pattern),) = [c for c in _ring_bad_requests(kind, fpix_window) if c[0] == case]
    with pytest.raises(InferenceError, match=pattern):
        predict(handler, request)
