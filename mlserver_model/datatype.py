"""Open Inference Protocol (KServe V2) datatypes <-> numpy dtypes, and fast tensor decoding.

A 750-LS request carries ~5.9 million numbers in one JSON list, which MLServer has already
parsed into Python ints. Converting them is the one cost no handler that uses the data can
avoid, so it is done once, in C: counts (ints in [0, 2^32)) through `array.array("I")`, anything
else through one `np.asarray`; a loop over elements in Python would cost seconds. Sizes are
checked against the declared shape first. Nothing here knows about Ring 2: the handler owns
the meaning of each tensor.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

# The dtype each V2 datatype stands for on the wire (what a response of that datatype holds).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
INTEGER_DATATYPES = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
NUMERIC_DATATYPES = INTEGER_DATATYPES | FLOAT_DATATYPES


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name (e.g. "INT32" -> int32)."""
    try:
        return V2_TO_NUMPY[str(datatype)]
    except KeyError:
        raise ValueError(
            f"Unknown V2 datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}"
        ) from None


def to_v2_datatype(dtype: Any) -> str:
    """The V2 datatype name of a numpy dtype; text and Python objects travel as BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in V2_TO_NUMPY.items():
        if candidate == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no V2 datatype")


def decode_dtype(datatype: str) -> np.dtype:
    """The dtype used to convert a JSON list of a numeric or BOOL datatype in one pass.

    Python ints convert faster to int64 than to narrower types, Python floats to float64; the
    width declared on the wire only limits what the client may send, so decoding wide costs
    nothing and never overflows a valid value.
    """
    if datatype in INTEGER_DATATYPES:
        return np.dtype(np.int64)
    if datatype in FLOAT_DATATYPES:
        return np.dtype(np.float64)
    return to_numpy_dtype(datatype)


def tensor_values(data: Any) -> Any:
    """The plain (possibly nested) list inside MLServer's `TensorData`, without copying it.

    MLServer 1.7 (pydantic 2) keeps it in `.root`, 1.5 (pydantic 1) in `.__root__`; both also
    implement iteration, the fallback for anything else. A copy (`data[:]`, `list(data)`) of a
    750-LS tensor costs ~0.1 s, which is why the attribute is read directly.
    """
    for attribute in ("root", "__root__"):
        values = getattr(data, attribute, None)
        if isinstance(values, list):
            return values
    return data if isinstance(data, list) else list(data)


def expected_size(shape: Any) -> int:
    """Number of elements of a declared V2 shape; ValueError if it is not a list of ints >= 0."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"shape must be a list of non-negative integers, got {shape!r}")
    return int(np.prod(shape, dtype=np.int64))


# "I" (C unsigned int) converts each item with PyLong_AsUnsignedLong; the signed codes go through
# PyArg_Parse, three times slower. It is 4 bytes wherever numpy and MLServer run; were it not,
# the fast path turns itself off rather than misread the buffer.
_COUNT_TYPECODE = "I"
_FAST_COUNTS = array.array(_COUNT_TYPECODE).itemsize == np.dtype(np.uint32).itemsize


def flat_counts(values: Any) -> np.ndarray | None:
    """A flat list of Python ints in [0, 2^32) as a uint32 array, else None.

    For the 5.9 M ints of a 750-LS request, array.array("I") is the fastest conversion we
    measured: one C pass that also checks each item (an int, not negative, not too big), where
    marshal needs a check of its type codes and np.asarray two passes (shape discovery, then
    conversion). The array shares array.array's buffer (contiguous, no copy). Anything else
    (float, null, text, nesting, a negative or huge int) returns None and the caller takes the
    general path, which names the problem; a bool is an int here, as in numpy (True -> 1).
    """
    if not _FAST_COUNTS or type(values) is not list or not values:
        return None
    try:
        packed = array.array(_COUNT_TYPECODE, values)
    except (TypeError, OverflowError):
        return None
    return np.frombuffer(packed, dtype=np.uint32)


def decode_numeric(values: Any, datatype: str, shape: list[int], dtype: Any = None) -> np.ndarray:
    """Flat or nested JSON numbers -> array of the declared shape (one numpy conversion).

    Flat lists of counts come back as uint32 (see `flat_counts`) unless `dtype` asks for
    another dtype; consumers that read them in chunks (the pipeline) save a whole-array pass.

    Raises ValueError naming the problem: a non-numeric datatype, values that are not numbers
    (null in an integer tensor, text, ragged nesting), or a size that is not the shape's product.
    """
    if datatype not in NUMERIC_DATATYPES:
        raise ValueError(
            f"datatype must be numeric ({', '.join(sorted(NUMERIC_DATATYPES))}), got {datatype!r}"
        )
    size = expected_size(shape)
    if isinstance(values, list) and values and not isinstance(values[0], list):
        _check_length(len(values), size, shape)  # flat data: fail before converting
        fast = flat_counts(values)
        if fast is not None:
            return (fast if dtype is None else fast.astype(dtype)).reshape(shape)
    try:
        # No dtype: numpy infers ints, floats, or reveals text and nulls, which a cast to a
        # numeric dtype would parse ("3") or truncate (2.5) silently.
        decoded = np.asarray(values)
    except ValueError as error:  # ragged nesting
        raise ValueError(f"data must be {datatype} numbers of shape {shape}: {error}") from None
    if decoded.dtype.kind not in "iuf":
        raise ValueError(f"data must be {datatype} numbers; found {_first_non_number(values)}")
    _check_length(decoded.size, size, shape)
    if datatype in INTEGER_DATATYPES and decoded.dtype.kind == "f":
        finite = decoded[np.isfinite(decoded)]
        if np.any(finite != np.round(finite)):
            raise ValueError(f"data must be {datatype} numbers; found non-integer values")
    return decoded.reshape(shape).astype(dtype or decode_dtype(datatype), copy=False)


def _first_non_number(values: Any) -> str:
    """Describe the first value that is not a number (error path only: a Python loop is fine)."""
    flat = np.asarray(values, dtype=object).ravel()
    for index, value in enumerate(flat):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            shown = "null" if value is None else repr(value)
            return f"{shown} at flat position {index}"
    return "values that are not numbers"


def decode_nullable(values: Any, datatype: str, shape: list[int]) -> np.ndarray:
    """A short metadata tensor (one value per LS, nulls allowed) -> 1-D column.

    Nulls must stay distinguishable from False/0 (a null DCS flag fails the DCS filter), so
    BOOL and BYTES tensors become object arrays holding None, and numeric tensors with nulls
    become float64 with NaN. Shapes [N] and [N, 1] both give (N,).
    """
    to_numpy_dtype(datatype)  # rejects unknown datatypes with a clear message
    size = expected_size(shape)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ValueError(f"shape must be [N] or [N, 1], got {shape}")
    try:
        if datatype in NUMERIC_DATATYPES:
            try:
                column = np.asarray(values, dtype=decode_dtype(datatype))
            except TypeError:  # null in an integer tensor: keep it as NaN
                column = np.asarray(values, dtype=np.float64)
        else:
            column = np.asarray(values, dtype=object)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"data must be {datatype} values or null: {error}") from None
    _check_length(column.size, size, shape)
    return column.reshape(-1)


def _check_length(n_values: int, size: int, shape: list[int]) -> None:
    if n_values != size:
        raise ValueError(
            f"data has {n_values} values but shape {shape} needs {size} (the product of the shape)"
        )
