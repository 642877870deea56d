"""The maps tensors' flat integer `data`, cut out of a V2 JSON request body, parsed by numpy.

Why: MLServer turns the whole body into Python objects in its event loop before any model code
runs, ~0.44 MB of memory per LS and ~2-3 s of a 5,000-LS body during which the server answers
nothing, health probes included (orjson holds the GIL; parsing in a thread does not help).
DIALS sends the maps as one flat list of integers, which `np.fromstring(..., sep=",")` parses
with the GIL released, into 8 bytes per value, without a Python object per value. So the
serving guard cuts that list out of the body, parses it here, and hands MLServer the rest of
the body with `"data": []` in its place; the handler takes the parsed array instead.

Only text that parses to exactly what the JSON says is taken: the list must be flat and hold
only digits, commas and whitespace (so no sign, no fraction, exponent, true, null or text: the
model refuses those, and MLServer's own path names them), and numpy must read exactly one value
per comma-separated item. numpy clamps what int64 cannot hold, so the extreme int64 values are
declined too. JSON forbids leading zeros ("05"), which numpy reads as 5: the one leniency. The
cut is verified by parsing the rest of the body with a marker in the list's place: exactly one
input tensor, of the expected name, must hold the marker. Anything else returns None and the
body goes to MLServer unchanged, which answers as it always does.

Every step runs in a worker thread (the guard's `asyncio.to_thread`); the byte scans hold the
GIL 20-70 ms each for a 180 MB body, the numpy parse (~1 s) releases it.
"""

from __future__ import annotations

import json
import secrets
import warnings
from collections.abc import Mapping

import numpy as np

_DATA_KEY = b'"data"'
_WHITESPACE = b" \t\r\n"
_ALLOWED = b"0123456789," + _WHITESPACE
# A JSON string no client can guess, put where the list was to check where the cut was made.
_MARKER = f"pixelring2nmf-cut-{secrets.token_hex(8)}"
_INT64 = np.iinfo(np.int64)


def cut_flat_integer_tensors(
    body: bytes, max_values: Mapping[str, int]
) -> tuple[bytes, dict[str, np.ndarray | None]] | None:
    """The maps tensors' flat integer data (Ring2 or Ring1; both for the joint model) cut out
    of `body`: (the rest, the values by tensor name), or None unless the len(max_values)
    largest flat lists are exactly those tensors' data (module docstring). A list of more than
    its `max_values` values (per the declared shape) is cut but not parsed (None in the
    values): the model refuses its size anyway, from the rest of the body alone. One check of
    the rest with a marker per list, so no list is ever parsed by json."""
    spans = _largest_flat_lists(body, len(max_values))
    if spans is None:
        return None
    markers = [f"{_MARKER}-{i}" for i in range(len(spans))]
    marked, rest, last = [], [], -1  # body[last] is the "]" of the list before
    for (start, end), marker in zip(spans, markers, strict=True):
        marked += [body[last + 1 : start], json.dumps(marker).encode()]
        rest.append(body[max(last, 0) : start + 1])
        last = end
    marked.append(body[last + 1 :])
    rest.append(body[last:])
    tensors = _tensors_holding_markers(b"".join(marked), markers)
    if tensors is None or sorted(str(t.get("name")) for t in tensors) != sorted(max_values):
        return None
    values: dict[str, np.ndarray | None] = {}
    for (start, end), tensor in zip(spans, tensors, strict=True):
        name = tensor["name"]
        if _declared_size(tensor.get("shape")) > max_values[name]:
            values[name] = None
            continue
        parsed = _parse_integers(body[start + 1 : end])
        if parsed is None:
            return None
        values[name] = parsed
    return b"".join(rest), values


def _largest_flat_lists(body: bytes, count: int) -> list[tuple[int, int]] | None:
    """(start, end) of the `count` longest non-empty lists that follow a "data" key, in body
    order, or None if there are fewer or one of them is nested."""
    spans = []
    at = body.find(_DATA_KEY)
    while at >= 0:
        i = _skip_whitespace(body, at + len(_DATA_KEY))
        if body[i : i + 1] == b":":
            i = _skip_whitespace(body, i + 1)
            if body[i : i + 1] == b"[":
                end = body.find(b"]", i)
                if end > i + 1:
                    spans.append((i, end))
        at = body.find(_DATA_KEY, at + len(_DATA_KEY))
    spans = sorted(sorted(spans, key=lambda span: span[0] - span[1])[:count])
    if len(spans) < count or any(body.find(b"[", a + 1, b) >= 0 for a, b in spans):
        return None
    return spans


def _tensors_holding_markers(text: bytes, markers: list[str]) -> list[dict] | None:
    """The input tensors whose `data` are the markers, in the markers' order, one each."""
    try:
        inputs = json.loads(text)["inputs"]
        hits = [[t for t in inputs if isinstance(t, dict) and t.get("data") == m] for m in markers]
    except (ValueError, TypeError, KeyError):
        return None
    return [h[0] for h in hits] if all(len(h) == 1 for h in hits) else None


def _skip_whitespace(body: bytes, i: int) -> int:
    while body[i : i + 1] and body[i] in _WHITESPACE:
        i += 1
    return i


def _declared_size(shape: object) -> int:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return 0  # the handler refuses the shape itself
    return int(np.prod(shape, dtype=np.float64))  # float: a product beyond int64 is "too many"


def _parse_integers(text: bytes) -> np.ndarray | None:
    """The comma-separated non-negative integers of `text` as int64, or None (no guessing)."""
    if text.translate(None, _ALLOWED):
        return None  # a sign, fraction, exponent, true, null or text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy 1.26 only warns about unparsed text
        try:
            values = np.fromstring(text, dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning):
            return None
    if values.size != text.count(b",") + 1 or (values.size and values.max() == _INT64.max):
        return None  # an empty item or trailing comma; or a value numpy clamped
    return values
