#!/usr/bin/env python
"""Send test data to a running PixelRing2NMF server the way DIALS does, and summarise the answer.

    python test_predictions.py -n pixel-ring2-nmf -p 8080 [--host H] [--data test_data.pkl]
                               [--oms-json FILE | --oms-live] [--ring 1|2|both]

The request is a KServe V2 (Open Inference Protocol) JSON request: `Ring2` as flattened INT32
data of shape [N, 140, 56], plus one `oms_lumisection_info__<attribute>` tensor of shape [N] per
OMS attribute the template declares (InputMetadata) that is available: from the pickle (made by
`pixelring2nmf make-test-data --oms ...`), from an OMS JSON file, or fetched live from OMS.
`--ring 1` sends `Ring1` [N, 92, 56] instead (the pickle's `Ring1` array, for pixel-ring1-nmf),
`--ring both` sends both (for the joint model pixel-fpix-nmf; the same N LS in both).
Prints each output's name, shape and datatype, then `Number of LS: N` and
`Number of flagged LS: K`. Exit codes: 0 done, 1 server unreachable or refusing, 2 bad input.

Standalone on purpose (standard library, numpy, pandas, requests): it is what a user runs
against a server, so it does not import the model package (only `--oms-live` borrows its OMS
client, which needs CERN credentials).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

RING2_INPUT = "Ring2"
# The maps tensors of each ring (V2 input names, the pickle's keys) and the shape of one LS
MAP_SHAPES = {"Ring1": (92, 56), RING2_INPUT: (140, 56)}
RING_INPUTS = {"1": ("Ring1",), "2": (RING2_INPUT,), "both": ("Ring1", RING2_INPUT)}
OMS_PREFIX = "oms_lumisection_info"  # InputMetadata Name in template.yaml
# template.yaml InputMetadata attributes -> V2 datatype, in the template's order
OMS_ATTRIBUTES = {
    "run_number": "INT32",
    "lumisection_number": "INT32",
    "pileup": "FP32",
    "beams_stable": "BOOL",
    "cms_active": "BOOL",
    "bpix_ready": "BOOL",
    "fpix_ready": "BOOL",
    "tibtid_ready": "BOOL",
    "tob_ready": "BOOL",
    "tecp_ready": "BOOL",
    "tecm_ready": "BOOL",
}
TIMEOUT_S = (5.0, 300.0)  # (connect, read): a 750-LS request takes a few seconds


class UsageError(Exception):
    """Bad or missing input data (exit code 2)."""


class ServerError(Exception):
    """The server cannot be reached or refused the request (exit code 1)."""


# --------------------------------------------------------------------------- test data


def load_test_data(path: Path, inputs: tuple[str, ...] = (RING2_INPUT,)) -> dict[str, Any]:
    """The pickle of `pixelring2nmf make-test-data`: Ring2 (or the `inputs` maps: Ring1, or
    both), run_number, ls_number, OMS columns."""
    return check_test_data(read_pickle(path), path, inputs)


def read_pickle(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(
            f"Test data file {path} not found. Make it with `pixelring2nmf make-test-data "
            f"--parquet FILE [--oms OMS.json] --out {path}`."
        )
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise UsageError(f"{path} is not a readable test-data pickle: {error}") from None


def check_test_data(data: Any, where: Path | str, inputs: tuple[str, ...]) -> dict[str, Any]:
    """The test data if they hold the `inputs` maps of the same N LS and their keys."""
    for name in inputs:
        if not isinstance(data, dict) or name not in data:
            raise UsageError(f"{where} must hold a dict with a {name!r} array")
        maps = np.asarray(data[name])
        rows, columns = MAP_SHAPES[name]
        if maps.ndim != 3 or maps.shape[1:] != (rows, columns):
            raise UsageError(
                f"{where}: {name} must have shape (N, {rows}, {columns}), got {maps.shape}"
            )
        if len(maps) != len(data[inputs[0]]):
            raise UsageError(f"{where}: {inputs[0]} and {name} must hold the same LS")
    for key in ("run_number", "ls_number"):
        if key not in data or len(data[key]) != len(maps):
            raise UsageError(f"{where}: {key!r} must hold one value per LS ({len(maps)})")
    return data


def load_ring_test_data(paths: list[Path], inputs: tuple[str, ...]) -> dict[str, Any]:
    """The test data of one pickle, or for both rings of one pickle per ring (`make-test-data`
    on each ring's parquet, in any order: the same LS in the same order)."""
    if len(paths) == 1:
        return load_test_data(paths[0], inputs)
    if len(paths) != len(inputs):
        raise UsageError(f"--data: give one pickle, or one per ring sent ({len(inputs)})")
    pickles = [read_pickle(path) for path in paths]
    if not all(isinstance(p, dict) and "run_number" in p and "ls_number" in p for p in pickles):
        raise UsageError(f"{' and '.join(map(str, paths))} must be make-test-data pickles")
    data = dict(pickles[0])
    for path, other in zip(paths[1:], pickles[1:], strict=True):
        for key in ("run_number", "ls_number"):
            if not np.array_equal(np.asarray(other[key]), np.asarray(data[key])):
                raise UsageError(f"{paths[0]} and {path} must hold the same LS in the same order")
        data.update({name: other[name] for name in inputs if name in other})
    return check_test_data(data, " and ".join(map(str, paths)), inputs)


def read_oms_columns(path: Path) -> dict[str, list]:
    """An OMS JSON file in the column-dict layout {attribute: [value per LS]}."""
    if not path.is_file():
        raise UsageError(f"OMS JSON file {path} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            columns = json.load(handle)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(columns, dict):
        raise UsageError(f"{path} must hold a dict of column lists")
    return columns


def fetch_oms_columns(runs: list[int]) -> dict[str, list]:
    """OMS lumisections of the runs, live (needs OMS credentials in the environment)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import omsid  # beside this script: OMS credentials from the environment

    try:
        credentials = omsid.credentials()
    except omsid.MissingCredentialsError as error:
        raise UsageError(str(error)) from None
    from pixelring2nmf.remote.oms_api import fetch_lumisections

    try:
        return fetch_lumisections(runs, credentials=credentials)
    except (ValueError, RuntimeError, OSError) as error:
        raise ServerError(f"Could not fetch OMS data for runs {runs}: {error}") from None


def align_oms_columns(
    columns: dict[str, list], run: np.ndarray, ls: np.ndarray
) -> dict[str, np.ndarray]:
    """OMS columns reordered to the (run, LS) of the test data; an LS absent from OMS is null."""
    missing = [k for k in ("run_number", "lumisection_number") if k not in columns]
    if missing:
        raise UsageError(f"OMS data lack the key column(s) {missing} needed to match LS")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise UsageError("OMS data columns have unequal lengths")
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    frame.index = pd.MultiIndex.from_arrays(
        [frame["run_number"].astype(np.int64), frame["lumisection_number"].astype(np.int64)]
    )
    if frame.index.has_duplicates:
        raise UsageError("OMS data have duplicated (run_number, lumisection_number) pairs")
    rows = frame.index.get_indexer(
        pd.MultiIndex.from_arrays([np.asarray(run, np.int64), np.asarray(ls, np.int64)])
    )
    aligned = {}
    for name in OMS_ATTRIBUTES:
        if name in frame:
            values = frame[name].to_numpy(dtype=object)
            column = np.full(len(rows), None, dtype=object)
            column[rows >= 0] = values[rows[rows >= 0]]
            aligned[name] = column
    return aligned


# --------------------------------------------------------------------------- request


def oms_values(data: dict[str, Any], oms: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """Per-LS values of every template OMS attribute available, by attribute name.

    run_number and lumisection_number are those of the maps (DIALS matches OMS to them);
    the other attributes come from the OMS data given, else from the pickle.
    """
    values: dict[str, Any] = {
        "run_number": data["run_number"],
        "lumisection_number": data["ls_number"],
    }
    source = oms if oms is not None else data
    for name in OMS_ATTRIBUTES:
        if name not in values and name in source:
            values[name] = source[name]
    return values


def _json_value(value: Any, datatype: str) -> Any:
    """One OMS value as JSON: null stays null (None, NaN, pd.NA), the rest gets the datatype."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if datatype == "BOOL":
        return bool(value)
    if datatype.startswith("INT"):
        return int(value)
    return float(value)


def build_request(
    data: dict[str, Any],
    oms: dict[str, np.ndarray] | None,
    maps_inputs: tuple[str, ...] = (RING2_INPUT,),
) -> dict[str, Any]:
    """The V2 request body DIALS sends for these LS (flattened row-major INT32 maps)."""
    n_ls = len(data[maps_inputs[0]])
    inputs = [
        {
            "name": name,
            "shape": [n_ls, *MAP_SHAPES[name]],
            "datatype": "INT32",
            "data": np.rint(np.asarray(data[name])).astype(np.int32).ravel().tolist(),
        }
        for name in maps_inputs
    ]
    for name, values in oms_values(data, oms).items():
        datatype = OMS_ATTRIBUTES[name]
        inputs.append(
            {
                "name": f"{OMS_PREFIX}__{name}",
                "shape": [n_ls],
                "datatype": datatype,
                "data": [_json_value(v, datatype) for v in np.asarray(values, dtype=object)],
            }
        )
    return {"inputs": inputs}


def infer(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the request; ServerError with the server's own message on any failure."""
    try:
        response = requests.post(
            url,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=TIMEOUT_S,
        )
    except requests.ConnectionError as error:
        raise ServerError(
            f"Cannot reach MLServer at {url}: is it running? (start it with "
            f"`pixelring2nmf serve --port PORT`) [{type(error).__name__}]"
        ) from None
    except requests.Timeout:
        raise ServerError(f"MLServer at {url} did not answer within {TIMEOUT_S[1]:.0f} s") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("error") or response.text
        except ValueError:
            detail = response.text
        hint = " (wrong model name? see -n)" if response.status_code == 404 else ""
        raise ServerError(f"MLServer answered HTTP {response.status_code}{hint}: {detail[:1000]}")
    return response.json()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "-n",
        "--name",
        required=True,
        help="model name (pixel-ring2-nmf; pixel-ring1-nmf, pixel-fpix-nmf)",
    )
    parser.add_argument("-p", "--port", type=int, required=True, help="MLServer HTTP port")
    parser.add_argument("--host", default="127.0.0.1", help="MLServer host (default 127.0.0.1)")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[Path("test_data.pkl")],
        help="test data pickle (with --ring both: one holding both rings, or one per ring)",
    )
    oms = parser.add_mutually_exclusive_group()
    oms.add_argument("--oms-json", type=Path, default=None, help="OMS JSON file of the runs")
    oms.add_argument(
        "--oms-live", action="store_true", help="fetch OMS data live (needs credentials)"
    )
    parser.add_argument(
        "--ring",
        choices=sorted(RING_INPUTS),
        default="2",
        help="maps to send: 2 (Ring2, default), 1 (Ring1: pixel-ring1-nmf) or both "
        "(pixel-fpix-nmf)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        maps_inputs = RING_INPUTS[args.ring]
        data = load_ring_test_data(args.data, maps_inputs)
        oms = None
        if args.oms_json is not None:
            oms = align_oms_columns(
                read_oms_columns(args.oms_json), data["run_number"], data["ls_number"]
            )
        elif args.oms_live:
            runs = sorted({int(r) for r in np.asarray(data["run_number"])})
            oms = align_oms_columns(fetch_oms_columns(runs), data["run_number"], data["ls_number"])
        body = build_request(data, oms, maps_inputs)
        url = f"http://{args.host}:{args.port}/v2/models/{args.name}/infer"
        answer = infer(url, body)
    except UsageError as error:
        print(f"test_predictions.py: error: {error}", file=sys.stderr)
        return 2
    except ServerError as error:
        print(f"test_predictions.py: error: {error}", file=sys.stderr)
        return 1
    n_flagged = None
    for output in answer.get("outputs", []):
        print(f"Output: {output['name']}, shape: {output['shape']}, datatype: {output['datatype']}")
        if output["name"] == "Flag":
            n_flagged = int(np.count_nonzero(np.asarray(output["data"], dtype=bool)))
    print(f"Number of LS: {len(data[maps_inputs[0]])}")
    print(f"Number of flagged LS: {n_flagged if n_flagged is not None else 'no Flag output'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
