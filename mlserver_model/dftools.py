"""The DCS filter: an LS may be flagged only when the detector was fully on.

DIALS sends the OMS per-LS flags with every request; an LS recorded with any of the eight DCS
flags false or null can never be flagged, as in the original deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, checked_integer

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

DCS_FLAGS = (
    "beams_stable",
    "cms_active",
    "bpix_ready",
    "fpix_ready",
    "tibtid_ready",
    "tob_ready",
    "tecp_ready",
    "tecm_ready",
)
# object columns of only these kinds need no value check (a null is never true)
_BOOLEAN_KINDS = frozenset({bool, np.bool_, type(None)})


@dataclass(frozen=True)
class DcsResult:
    """Which LS were recorded with the detector fully on, and which flags failed otherwise."""

    good: np.ndarray  # bool (N,)
    failed: np.ndarray  # bool (N, 8), columns in DCS_FLAGS order

    @property
    def n_good(self) -> int:
        return int(np.count_nonzero(self.good))

    def failed_flags(self, i: int) -> list[str]:
        """Names of the DCS flags that were false or null for LS number `i` (0-based)."""
        return [DCS_FLAGS[j] for j in np.flatnonzero(self.failed[i])]


def dcs_filter(oms_columns: Mapping[str, ArrayLike] | None, n_ls: int) -> DcsResult:
    """An LS may be flagged only if all 8 DCS flags are true; null (None/NaN) counts as false.

    Without any DCS flag (no OMS data at all) every LS passes, as in the original deployment:
    the model must still work when DIALS sends no OMS inputs. Some but not all flags means the
    request or file was cut short, which is an error rather than a silent pass. Keys other than
    the 8 flags (pileup, run_number, ...) are ignored.
    """
    n_ls = checked_integer(n_ls, "n_ls")
    present = [] if oms_columns is None else [f for f in DCS_FLAGS if f in oms_columns]
    failed = np.zeros((n_ls, len(DCS_FLAGS)), dtype=bool)
    if not present:
        return DcsResult(good=np.ones(n_ls, dtype=bool), failed=failed)
    if len(present) < len(DCS_FLAGS):
        missing = [f for f in DCS_FLAGS if f not in oms_columns]
        raise InputError(
            f"OMS data has only some of the {len(DCS_FLAGS)} DCS flags: missing {missing} "
            f"(present: {present})"
        )
    for j, flag in enumerate(DCS_FLAGS):
        failed[:, j] = ~_flag_is_true(oms_columns[flag], flag, n_ls)
    return DcsResult(good=~failed.any(axis=1), failed=failed)


def _flag_is_true(values: Any, flag: str, n_ls: int) -> np.ndarray:
    """One DCS flag column -> bool (n_ls,) that is True only for a definite true/1."""
    if isinstance(values, np.ma.MaskedArray) and values.dtype == bool and values.ndim == 1:
        _check_length(values.shape[0], flag, n_ls)
        return values.filled(False)  # a decoded BOOL tensor: validated, nulls masked
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # MLServer's NumpyCodec turns 1-D tensors into (N, 1)
    if array.ndim != 1:
        raise InputError(
            f"DCS flag {flag!r} must be a 1-D sequence of length {n_ls}, got shape {array.shape}"
        )
    _check_length(array.shape[0], flag, n_ls)
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iuf":
        numbers = array.astype(np.float64)
    elif array.dtype.kind == "O":
        numbers = _object_flag_numbers(array.tolist(), flag)
        if numbers is None:  # the usual case: only booleans and nulls, no 0/1 to check
            return np.fromiter(map(bool, array.tolist()), bool, count=n_ls)
    else:
        raise InputError(
            f"DCS flag {flag!r} must hold bool/0/1/null values, got dtype {array.dtype} "
            f"(e.g. {array[:1].tolist()})"
        )
    not_binary = ~np.isnan(numbers) & (numbers != 0) & (numbers != 1)
    if np.any(not_binary):
        raise InputError(
            f"DCS flag {flag!r} must hold bool/0/1/null values, got {numbers[not_binary][0]!r}"
        )
    return numbers == 1


def _check_length(length: int, flag: str, n_ls: int) -> None:
    if length != n_ls:
        raise InputError(f"DCS flag {flag!r} has {length} values but there are {n_ls} lumisections")


def _is_null(value: Any) -> bool:
    """JSON and V2 nulls: None, NaN, and pandas' NA when a caller's column held it."""
    if value is None or type(value).__name__ == "NAType":  # NA's own `!=` is NA, not a bool
        return True
    return isinstance(value, float | np.floating) and value != value


def _object_flag_numbers(items: list, flag: str) -> np.ndarray | None:
    """The values of an object column as float64 (NaN for null), each checked to be a boolean
    or a number (never text: "1" is not 1); None when they are only booleans and None, which
    need no check (a null is never true)."""
    kinds = set(map(type, items))  # one pass in C
    if kinds <= _BOOLEAN_KINDS:
        return None
    numbers = np.empty(len(items), dtype=np.float64)
    for i, value in enumerate(items):
        if _is_null(value):
            numbers[i] = np.nan
        elif isinstance(value, bool | int | float | np.bool_ | np.number):
            numbers[i] = float(value)
        else:
            raise InputError(f"DCS flag {flag!r} must hold bool/0/1/null values, got {value!r}")
    return numbers
