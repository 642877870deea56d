"""Open Inference Protocol (KServe V2) datatypes <-> numpy dtypes, and fast tensor decoding.

A 750-LS request carries ~5.9 million numbers in one JSON list, which MLServer has already
parsed into Python ints (unless the serving guard parsed the text itself). Converting them is
the one cost no handler that uses the data can avoid, so it is done once, in C: counts (ints in
[0, 2^31)) through `marshal`, anything else through one `np.asarray`; a loop over elements in
Python would cost seconds. Sizes are
checked against the declared shape first. Nothing here knows about Ring 2: the handler owns
the meaning of each tensor.
"""

from __future__ import annotations

import itertools
import marshal
from dataclasses import dataclass
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
        if hasattr(data, attribute):
            return getattr(data, attribute)  # whatever it is: the decoders check it is a list
    return data


def expected_size(shape: Any) -> int:
    """Number of elements of a declared V2 shape; ValueError if it is not a list of ints >= 0."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"shape must be a list of non-negative integers, got {shape!r}")
    return int(np.prod(shape, dtype=np.int64))


# marshal writes a list as "[", its length (4 bytes), then each item; version 2 writes every
# int of 32 bits as the code "i" and the int32 in little-endian (later versions may write a
# back-reference to an equal earlier object instead), True and False as one byte "T" or "F".
_MARSHAL_VERSION = 2
_LIST_HEADER_BYTES = 5
_INT_ITEM_BYTES = 5
_INT_CODE = ord("i")


def flat_counts(values: Any) -> np.ndarray | None:
    """A flat list of Python ints in [0, 2^31) as a uint32 array, else None.

    For the 5.9 M ints of a 750-LS request, one `marshal.dumps` (a C pass, ~70 ms) and two
    strided numpy views of its bytes are the fastest conversion we measured that also tells
    ints from booleans: JSON's true/false decode to bool, which array.array("I") and numpy take
    for 1 and 0 (a check of the items' types on top cost ~150 ms), np.asarray needs two passes.
    Every item is an int of 32 bits exactly when the bytes have the length of n such items and
    each item's first byte is "i": the first item that is anything else would sit at its own
    place with another code. Anything else (a bool, float, null, text, nesting, a negative int or
    one of 2^31 and more) returns None and the caller takes the general path, which names it.
    """
    if type(values) is not list or not values:
        return None
    n = len(values)
    try:
        packed = marshal.dumps(values, _MARSHAL_VERSION)
    except ValueError:  # an object marshal cannot write: not a JSON value
        return None
    if len(packed) != _LIST_HEADER_BYTES + _INT_ITEM_BYTES * n:
        return None
    items = {"shape": (n,), "buffer": packed, "strides": (_INT_ITEM_BYTES,)}
    codes = np.ndarray(dtype=np.uint8, offset=_LIST_HEADER_BYTES, **items)
    if not np.all(codes == _INT_CODE):
        return None
    ints = np.ndarray(dtype="<i4", offset=_LIST_HEADER_BYTES + 1, **items)
    if ints.min() < 0:
        return None
    return ints.astype(np.uint32)


def _holds_bool(values: list, depth: int = 1) -> bool:
    """Whether a (nested, `depth` levels of lists) list holds a bool among its values.

    JSON's true/false decode to bool, which Python and numpy both take for the ints 1 and 0; one
    C pass over the items' types finds them (~0.1 s for 5.9 M values).
    """
    items = values
    for _ in range(depth - 1):
        items = itertools.chain.from_iterable(items)
    return bool in set(map(type, items))


@dataclass(frozen=True)
class Limits:
    """Values a tensor may hold beyond its datatype's range, and what they are (for messages)."""

    low: float
    high: float
    what: str


def _value_range(datatype: str) -> tuple[float, float]:
    """The values a tensor of this datatype may hold (what the client declared it sends)."""
    dtype = V2_TO_NUMPY[datatype]
    info = np.iinfo(dtype) if datatype in INTEGER_DATATYPES else np.finfo(dtype)
    return info.min, info.max


def decode_numeric(
    values: Any,
    datatype: str,
    shape: list[int],
    dtype: Any = None,
    *,
    limits: Limits | None = None,
) -> np.ndarray:
    """Flat or nested JSON numbers -> array of the declared shape (one numpy conversion).

    Flat lists of counts come back as uint32 (see `flat_counts`) unless `dtype` asks for
    another dtype; consumers that read them in chunks (the pipeline) save a whole-array pass.

    Raises ValueError naming the problem and where: data that is not a list, a non-numeric
    datatype, values that are not numbers (null, text, a boolean), nesting that does not follow
    the declared shape at every level, a value outside the datatype's range (INT32 2^31, INT8
    1000, FP16 70000) or outside `limits`, a fraction in an integer tensor, or a size that is
    not the shape's.
    """
    _check_numeric_datatype(datatype)
    size = expected_size(shape)
    _check_is_list(values)
    if values and not isinstance(values[0], list):
        _check_length(len(values), size, shape)  # flat data: fail before converting
        fast = flat_counts(values)
        if fast is not None:
            _check_range(fast, values, datatype, shape, flat=True, limits=limits)
            return (fast if dtype is None else fast.astype(dtype)).reshape(shape)
    try:
        # No dtype: numpy infers ints, floats, or reveals text and nulls, which a cast to a
        # numeric dtype would parse ("3") or truncate (2.5) silently.
        decoded = np.asarray(values)
    except (ValueError, OverflowError) as error:  # ragged nesting
        raise ValueError(f"data must be {datatype} numbers of shape {shape}: {error}") from None
    flat = decoded.ndim == 1
    if decoded.dtype.kind not in "iuf" or _holds_bool(values, decoded.ndim):
        raise ValueError(f"data must be {datatype} numbers; found {_first_non_number(values)}")
    if not flat and list(decoded.shape) != list(shape):
        raise ValueError(
            f"nested data has shape {list(decoded.shape)} but the tensor declares {shape} "
            "(nesting must follow the shape at every level, or the data be flat)"
        )
    _check_length(decoded.size, size, shape)
    if datatype in INTEGER_DATATYPES and decoded.dtype.kind == "f":
        fractional = decoded != np.round(decoded)
        if np.any(fractional):
            where = _position(int(np.argmax(fractional.ravel())), shape, flat)
            raise ValueError(f"data must be {datatype} numbers; found a fraction at {where}")
    _check_range(decoded, values, datatype, shape, flat, limits=limits)
    return decoded.reshape(shape).astype(dtype or decode_dtype(datatype), copy=False)


def decode_parsed_integers(
    decoded: np.ndarray, datatype: str, shape: list[int], *, limits: Limits | None = None
) -> np.ndarray:
    """A flat int64 array parsed from the JSON text of a tensor's `data` -> the declared shape.

    For data that never became Python objects (the serving guard parses a flat list of
    integers with numpy): the same checks, and the same messages, as `decode_numeric` on the
    list itself, for the datatype, the length, and the datatype's range and `limits`.
    """
    _check_numeric_datatype(datatype)
    _check_length(decoded.size, expected_size(shape), shape)
    _check_range(decoded, None, datatype, shape, flat=True, limits=limits)
    return decoded.reshape(shape)


def _check_numeric_datatype(datatype: str) -> None:
    if datatype not in NUMERIC_DATATYPES:
        raise ValueError(
            f"datatype must be numeric ({', '.join(sorted(NUMERIC_DATATYPES))}), got {datatype!r}"
        )


def _check_is_list(values: Any) -> None:
    if not isinstance(values, list):
        shown = "null" if values is None else f"{type(values).__name__} {values!r:.40}"
        raise ValueError(f"data must be a list of values, got {shown}")


def _check_range(
    decoded: np.ndarray,
    values: list | None,
    datatype: str,
    shape: list[int],
    flat: bool,
    limits: Limits | None = None,
) -> None:
    """Refuse values the declared datatype cannot hold (the client's data are not what it
    says), then values outside `limits` (what the tensor means allows).

    `values` is the client's list, to quote a value exactly as sent (numpy may have rounded
    it); None when `decoded` holds the exact values itself.
    """
    if not decoded.size:
        return
    low, high = _value_range(datatype)
    bounds = [(low, high, f"the {datatype} range")]
    if limits is not None:
        bounds.append((limits.low, limits.high, f"the range of {limits.what}"))
    lowest, highest = decoded.min(), decoded.max()
    for low, high, what in bounds:
        outside = None
        if highest > high:
            outside = int(np.argmax(decoded.ravel() > high))
        elif lowest < low:
            outside = int(np.argmax(decoded.ravel() < low))
        if outside is None:
            continue
        value = _as_sent(decoded, values, outside)
        raise ValueError(
            f"value {value} at {_position(outside, shape, flat)} is outside {what} "
            f"[{_number(low)}, {_number(high)}]"
        )


def _as_sent(decoded: np.ndarray, values: list | None, flat_index: int) -> Any:
    """The value at `flat_index` as the client sent it (from the list when there is one)."""
    if values is None:
        return decoded.ravel()[flat_index]
    value = values
    for i in np.unravel_index(flat_index, decoded.shape):
        value = value[int(i)]
    return value


def _number(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


def _position(flat_index: int, shape: list[int], flat: bool) -> str:
    if flat or len(shape) < 2:
        return f"flat position {flat_index}"
    return f"index {list(map(int, np.unravel_index(flat_index, shape)))}"


def _first_non_number(values: Any) -> str:
    """Describe the first value that is not a number (error path only: a Python loop is fine)."""
    try:
        flat = np.asarray(values, dtype=object).ravel()
    except ValueError:  # ragged nesting of objects
        return "values that are not numbers, or ragged nesting"
    for index, value in enumerate(flat):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            shown = "null" if value is None else repr(value)
            return f"{shown} at flat position {index}"
    return "values that are not numbers (e.g. an integer beyond 64 bits)"


def decode_nullable(values: Any, datatype: str, shape: list[int]) -> np.ndarray:
    """A short metadata tensor (one value per LS, nulls allowed) -> 1-D column.

    Nulls must stay distinguishable from False/0 (a null DCS flag fails the DCS filter), so
    BOOL tensors become boolean masked arrays (the mask marks the nulls), BYTES tensors object
    arrays holding None, and numeric tensors with nulls float64 with NaN. Shapes [N] and
    [N, 1] both give (N,). Each value must be of the
    declared kind: text is never parsed as a number ("1" in a numeric tensor is refused), and
    numbers must fit the datatype.
    """
    to_numpy_dtype(datatype)  # rejects unknown datatypes with a clear message
    size = expected_size(shape)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ValueError(f"shape must be [N] or [N, 1], got {shape}")
    _check_is_list(values)
    if len(shape) == 2 and values and isinstance(values[0], list):
        if not all(isinstance(v, list) and len(v) == 1 for v in values):
            raise ValueError(f"nested data must be {shape[0]} lists of one value each")
        values = [v[0] for v in values]
    _check_length(len(values), size, shape)
    column = np.empty(len(values), dtype=object)
    column[:] = values  # one object per value, whatever it is (no numpy guessing)
    kinds = _ALLOWED_KINDS.get(datatype, _NUMBER_KINDS)
    bad = [i for i, value in enumerate(values) if type(value) not in kinds]
    if bad:
        shown = "a list" if isinstance(values[bad[0]], list) else repr(values[bad[0]])
        raise ValueError(
            f"data must be {datatype} values or null; found {shown} at position {bad[0]}"
        )
    if datatype == "BOOL":  # checked above: only True, False and None; nulls are the mask
        is_null = np.fromiter((value is None for value in values), bool, count=len(values))
        is_true = np.fromiter((value is True for value in values), bool, count=len(values))
        return np.ma.MaskedArray(is_true, mask=is_null)
    if datatype not in NUMERIC_DATATYPES:
        return column
    is_null = np.array([value is None for value in values], dtype=bool)
    numbers = np.where(is_null, np.nan, column).astype(np.float64)
    low, high = _value_range(datatype)
    outside = np.flatnonzero(~is_null & ((numbers < low) | (numbers > high)))
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"value {values[i]!r} at position {i} is outside the {datatype} range")
    if datatype in INTEGER_DATATYPES:
        if np.any(numbers[~is_null] != np.round(numbers[~is_null])):
            raise ValueError(f"data must be {datatype} values or null; found a fraction")
        if not is_null.any():
            return numbers.astype(np.int64)
    return numbers


_NONE = type(None)
_NUMBER_KINDS = frozenset({int, float, _NONE})
_ALLOWED_KINDS = {"BOOL": frozenset({bool, _NONE}), "BYTES": frozenset({str, bytes, _NONE})}


def _check_length(n_values: int, size: int, shape: list[int]) -> None:
    if n_values != size:
        raise ValueError(
            f"data has {n_values} values but shape {shape} needs {size} (the product of the shape)"
        )
