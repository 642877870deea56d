"""The model file `pixelring2nmf.joblib`: a small declared schema of plain values, loaded safely.

The original deployment pickled its own classes, so the file only loaded with the exact module
layout and library versions it was written with, and loading it could run any code inside it.
Ours is a standard pickle (protocol 4, which `joblib.load` also reads) of a dict that holds only
Python's plain types: no global at all is admitted when it is read back, so no numpy object
is rebuilt by the unpickler (numpy's own pickles let a file describe a dtype that makes numpy
read memory it does not own). Each array travels as `{"dtype", "shape", "data": bytes}`; its
dtype must be a plain number type and its shape the one the schema declares, checked against
the byte count before numpy sees the bytes.

The schema (format 2):

| key | value |
|---|---|
| format_version | 2 |
| name, version, geometry_version | text |
| components | array (K, rows, 48), K in 1..10, finite, >= 0, each component of mean 1 |
| model_error | array (rows, 48), finite, >= 0 |
| thresholds | {name: number}, checked against `bad_ROC.Thresholds` by the pipeline |
| training | provenance: nested dicts/lists of text, numbers, booleans, null |
| valid_runs | optional: {"first": run, "last": run or null (open)}; absent: every run |

`rows` is that of the ring the geometry version names: 136 for Ring 2, 88 for Ring 1.
A joint (whole-FPix) model has the geometry version JOINT_GEOMETRY_VERSION and holds both rings:
`components` and `model_error` are then {"Ring1": array, "Ring2": array}, each as above for its
ring; the thresholds are shared (one decision over both rings).

Anything else, a value of another type, or nesting deeper than MAX_DEPTH is refused with an
`ArtifactError` naming the key; the walk over values visits each object once, so shared
references cannot make it slow.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import GEOMETRY_BY_VERSION, RING1, RING2, RingGeometry

FORMAT_VERSION = 2
GEOMETRY_VERSION = RING2.version  # the Ring 2 model's, unchanged since format 2
JOINT_GEOMETRY_VERSION = f"fpix-joint-{RING1.version}+{RING2.version}"
JOINT_RINGS = (RING1, RING2)  # the rings of a joint file, in the order of its keys
MAX_COMPONENTS = 10
MAX_DEPTH = 32  # provenance is a few levels deep; anything deeper is not a model file
MAX_VALUES = 1_000_000  # plain values in the whole file (the arrays are one bytes value each)
MEAN_ONE_TOLERANCE = 1e-3  # inference assumes each component has mean 1 (training scales it)

_ARRAY_KEYS = ("dtype", "shape", "data")
_PLAIN_NUMBER_KINDS = "biuf"  # bool, signed, unsigned, float: nothing with fields or objects
_TEXT_KEYS = ("name", "version", "geometry_version")
_KNOWN_KEYS = ("format_version", *_TEXT_KEYS, "components", "model_error", "thresholds", "training")
VALID_RUNS_KEY = "valid_runs"  # optional: older files lack it, and are valid for every run
_OPTIONAL_KEYS = (VALID_RUNS_KEY,)
_LEAF_TYPES = (str, int, float, bool, type(None), bytes)


class ArtifactError(ValueError):
    """The model file is missing, unreadable, unsafe, or does not follow the schema."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise ArtifactError(
            f"refusing {module}.{name}: a PixelRing2NMF model file holds only plain values "
            "(dicts, lists, text, numbers, bytes), so this file is not one or was tampered with"
        )


# --------------------------------------------------------------------------- arrays


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A plain numeric array as the schema stores it."""
    array = np.ascontiguousarray(array)
    _check_plain_dtype(array.dtype, "array")
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def decode_array(value: Any, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Check an encoded array against the schema and only then build it (read-only copy-free)."""
    if not isinstance(value, dict) or sorted(value) != sorted(_ARRAY_KEYS):
        raise ArtifactError(f"{key!r} must be an encoded array {{dtype, shape, data}}")
    dtype_text, declared, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype_text, str) or not isinstance(data, bytes):
        raise ArtifactError(f"{key!r}: dtype must be text and data bytes")
    try:
        dtype = np.dtype(dtype_text)
    except TypeError:
        raise ArtifactError(f"{key!r}: unknown dtype {dtype_text!r}") from None
    _check_plain_dtype(dtype, key)
    if (
        not isinstance(declared, list)
        or len(declared) != len(shape)
        or not all(type(d) is int and d >= 0 for d in declared)
        or any(want is not None and d != want for d, want in zip(declared, shape, strict=True))
    ):
        wanted = ", ".join("K" if d is None else str(d) for d in shape)
        raise ArtifactError(f"{key!r}: shape must be ({wanted}), got {declared!r}")
    if math.prod(declared) * dtype.itemsize != len(data):
        raise ArtifactError(
            f"{key!r}: {len(data)} bytes do not hold shape {declared} of {dtype_text} "
            f"({math.prod(declared) * dtype.itemsize} bytes)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(declared)


def _check_plain_dtype(dtype: np.dtype, key: str) -> None:
    if dtype.kind not in _PLAIN_NUMBER_KINDS or dtype.fields or dtype.subdtype or dtype.hasobject:
        raise ArtifactError(f"{key!r}: dtype {dtype.str!r} is not a plain number type")


# --------------------------------------------------------------------------- plain values


def _check_plain_values(payload: dict[str, Any]) -> None:
    """Every value is a plain type, nesting is at most MAX_DEPTH, at most MAX_VALUES values.

    Iterative (no recursion limit to hit) and visiting each container once (a file that
    shares one list a thousand times over is not walked a thousand times).
    """
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(payload, "model", 0)]
    n_values = 0
    while stack:
        value, where, depth = stack.pop()
        n_values += 1
        if n_values > MAX_VALUES:
            raise ArtifactError(f"more than {MAX_VALUES} values: not a model file")
        if isinstance(value, _LEAF_TYPES):
            continue
        if not isinstance(value, dict | list | tuple):
            raise ArtifactError(f"{where} is a {type(value).__name__}, not a plain value")
        if depth >= MAX_DEPTH:
            raise ArtifactError(f"{where} is nested deeper than {MAX_DEPTH} levels")
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    raise ArtifactError(f"key {name!r} in {where} is not text")
                stack.append((item, f"{where}.{name}", depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _to_plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, tuples -> lists: what we write must read anywhere."""
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- the schema


def _check_schema(payload: Any) -> dict[str, Any]:
    """The payload's keys, types and arrays against the schema; arrays decoded."""
    if not isinstance(payload, dict):
        raise ArtifactError(f"expected a dict of model fields, got {type(payload).__name__}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"model format version {version!r} is not supported (expected {FORMAT_VERSION}); "
            "retrain the model with this version's `pixelring2nmf train`"
        )
    unknown = sorted(set(payload) - set(_KNOWN_KEYS) - set(_OPTIONAL_KEYS))
    missing = sorted(set(_KNOWN_KEYS) - set(payload))
    if unknown or missing:
        raise ArtifactError(f"unknown key(s) {unknown} / missing key(s) {missing}")
    _check_plain_values(payload)
    for key in _TEXT_KEYS:
        if not isinstance(payload[key], str):
            raise ArtifactError(f"{key!r} must be text, got {type(payload[key]).__name__}")
    rings = file_rings(payload["geometry_version"])
    for key in ("thresholds", "training"):
        if not isinstance(payload[key], dict):
            raise ArtifactError(f"{key!r} must be a dict, got {type(payload[key]).__name__}")
    if VALID_RUNS_KEY in payload:
        check_valid_runs(payload[VALID_RUNS_KEY])
    if len(rings) == 1:
        components, model_error = _decode_ring(payload, rings[0], "")
        return {**payload, "components": components, "model_error": model_error}
    decoded: dict[str, dict[str, np.ndarray]] = {"components": {}, "model_error": {}}
    for key in decoded:
        if not isinstance(payload[key], dict) or sorted(payload[key]) != sorted(
            g.input_name for g in rings
        ):
            raise ArtifactError(
                f"{key!r} of a joint model must be {{{', '.join(g.input_name for g in rings)}}}"
            )
    for geometry in rings:
        per_ring = {key: payload[key][geometry.input_name] for key in decoded}
        components, model_error = _decode_ring(per_ring, geometry, f"{geometry.input_name} ")
        decoded["components"][geometry.input_name] = components
        decoded["model_error"][geometry.input_name] = model_error
    return {**payload, **decoded}


def file_rings(geometry_version: str) -> tuple[RingGeometry, ...]:
    """The ring(s) a model file's geometry version names: one ring, or both for a joint file."""
    if geometry_version == JOINT_GEOMETRY_VERSION:
        return JOINT_RINGS
    if geometry_version in GEOMETRY_BY_VERSION:
        return (GEOMETRY_BY_VERSION[geometry_version],)
    known = [*GEOMETRY_BY_VERSION, JOINT_GEOMETRY_VERSION]
    raise ArtifactError(f"geometry {geometry_version!r} is none of this code's {known}")


def _decode_ring(
    payload: Mapping[str, Any], geometry: RingGeometry, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """One ring's components and model error, checked against that ring's model shape."""
    shape = geometry.model_shape
    components = decode_array(payload["components"], f"{what}components", (None, *shape))
    model_error = decode_array(payload["model_error"], f"{what}model_error", shape)
    _check_components(components)
    if not np.all(np.isfinite(model_error)) or model_error.min() < 0:
        raise ArtifactError(f"'{what}model_error' must be finite and >= 0")
    return components, model_error


def check_valid_runs(value: Any) -> tuple[int, int | None]:
    """The period a model is valid for, `{"first": run, "last": run or None}`, as (first, last).

    Only the toolkit acts on it (it chooses a model per run); the served model refuses nothing
    by it, since DIALS already sends only the runs the template's conditions select.
    """
    if not isinstance(value, dict) or sorted(value) != ["first", "last"]:
        raise ArtifactError(f"{VALID_RUNS_KEY!r} must be {{first, last}}, got {value!r}")
    first, last = value["first"], value["last"]
    if type(first) is not int or first < 1:
        raise ArtifactError(f"{VALID_RUNS_KEY!r}: first must be a run number >= 1, got {first!r}")
    if last is not None and (type(last) is not int or last < first):
        raise ArtifactError(
            f"{VALID_RUNS_KEY!r}: last must be null (an open period) or a run >= {first}, "
            f"got {last!r}"
        )
    return first, last


def _check_components(components: np.ndarray) -> None:
    """The invariants inference relies on: 1..10 finite, non-negative components of mean 1."""
    if not 1 <= len(components) <= MAX_COMPONENTS:
        raise ArtifactError(f"'components': 1..{MAX_COMPONENTS} components, got {len(components)}")
    if not np.all(np.isfinite(components)) or components.min() < 0:
        raise ArtifactError("'components' must be finite and >= 0")
    means = components.reshape(len(components), -1).mean(axis=1, dtype=np.float64)
    off = np.flatnonzero(np.abs(means - 1.0) > MEAN_ONE_TOLERANCE)
    if off.size:
        raise ArtifactError(
            f"'components': every component must have mean 1 (training scales them so), "
            f"component(s) {off.tolist()} have mean {np.round(means[off], 6).tolist()}"
        )


# --------------------------------------------------------------------------- files


def save_artifact(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write a model (arrays as numpy arrays) as a version-proof model file, atomically."""
    plain = _to_plain({k: v for k, v in payload.items() if k not in ("components", "model_error")})
    plain["format_version"] = FORMAT_VERSION
    for key in ("components", "model_error"):
        value = payload[key]
        plain[key] = (
            {ring: encode_array(np.asarray(array)) for ring, array in value.items()}
            if isinstance(value, Mapping)
            else encode_array(np.asarray(value))
        )
    _check_schema(plain)  # never write a file that would not load
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pickle.dumps(plain, protocol=4))
    tmp.replace(path)  # never leave a half-written model where a server could load it
    return path


def load_artifact(path: str | Path) -> dict[str, Any]:
    """Read a model file safely: no code from the file runs and numpy builds only checked arrays."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"Model file not found: {path}") from None
    except OSError as error:
        raise ArtifactError(f"Cannot read model file {path}: {error}") from None
    try:
        payload = _NoGlobalsUnpickler(io.BytesIO(raw)).load()
        return _check_schema(payload)
    except ArtifactError as error:
        raise ArtifactError(f"{path}: {error}") from None
    except Exception as error:  # a truncated or foreign file: say so, do not crash
        raise ArtifactError(
            f"{path} is not a readable PixelRing2NMF model file ({type(error).__name__}: {error})"
        ) from None
