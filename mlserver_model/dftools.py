"""The DCS filter: an LS may be flagged only when the detector was fully on.

DIALS sends the OMS per-LS flags with every request; an LS recorded with any of the eight DCS
flags false or null can never be flagged, as in the original deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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
# pandas' inferred kinds of object columns that hold only numbers, bools and nulls
_NUMERIC_INFERRED = frozenset({"boolean", "integer", "floating", "mixed-integer-float", "empty"})


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
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # MLServer's NumpyCodec turns 1-D tensors into (N, 1)
    if array.ndim != 1:
        raise InputError(
            f"DCS flag {flag!r} must be a 1-D sequence of length {n_ls}, got shape {array.shape}"
        )
    if array.shape[0] != n_ls:
        raise InputError(
            f"DCS flag {flag!r} has {array.shape[0]} values but there are {n_ls} lumisections"
        )
    if array.dtype == bool:
        return array
    if array.dtype.kind in "iuf":
        numbers = array.astype(np.float64)
    elif array.dtype.kind == "O":
        # JSON/V2 nulls arrive as None (or NaN, pd.NA) inside an otherwise boolean column.
        is_null = np.asarray(pd.isna(array), dtype=bool)
        inferred = pd.api.types.infer_dtype(array, skipna=True)
        if inferred == "boolean":  # the usual case: only bools and nulls, no 0/1 to check
            is_true = np.zeros(n_ls, dtype=bool)
            is_true[~is_null] = array[~is_null].astype(bool)
            return is_true
        if inferred not in _NUMERIC_INFERRED:
            # rare mixed columns (e.g. True and 1): check the types, so "1" is never taken as 1
            bad = [
                v
                for v in array[~is_null]
                if not isinstance(v, (bool, int, float, np.bool_, np.number))
            ]
            if bad:
                raise InputError(
                    f"DCS flag {flag!r} must hold bool/0/1/null values, got {bad[0]!r}"
                )
        numbers = np.where(is_null, np.nan, array).astype(np.float64)
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
