"""OMS attributes of a request: which tensors carry them and the columns they give.

DIALS sends one tensor per OMS `lumisections` attribute, shape [N], named
`<prefix>__<attribute>` (prefix `oms_lumisection_info`; older scripts used `dcs_bits`, `general`
or `oms`). Only the attribute, the text after the last `__`, carries meaning here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .dftools import DCS_FLAGS
from .errors import InputError

# The OMS lumisection attributes as the OMS JSON files of an era hold them, in their order.
OMS_COLUMNS = (
    "delivered_lumi_per_lumisection",
    "recorded_lumi_per_lumisection",
    "pileup",
    "physics_flag",
    "prescale_index",
    "prescale_name",
    *DCS_FLAGS,  # beams_stable, cms_active, and the six detector-ready flags, in this order
    "fill_number",
    "run_number",
    "lumisection_number",
)
OMS_SEPARATOR = "__"  # OMS tensors are named <prefix>__<attribute>

LOGGER = logging.getLogger("mlserver_model.omstools")
SHOWN_IGNORED = 10  # names of ignored tensors in the log line (10,000 once made it 110 kB)


def oms_attribute(tensor_name: str) -> str | None:
    """The OMS attribute a tensor name carries ('oms__pileup' -> 'pileup'), else None."""
    prefix, separator, attribute = tensor_name.rpartition(OMS_SEPARATOR)
    return attribute if separator and prefix and attribute else None


def oms_columns(
    tensors: Mapping[str, Any], n_ls: int, decode: Callable[[Any], np.ndarray]
) -> dict[str, np.ndarray]:
    """OMS columns {attribute: (n_ls,)} of the request's OMS tensors; others are logged.

    `decode(tensor)` turns one tensor into a 1-D column (nulls kept) or raises ValueError,
    which is reported with the tensor's name.
    """
    columns: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    ignored = []
    for name, tensor in tensors.items():
        attribute = oms_attribute(name)
        if attribute is None:
            ignored.append(name)
            continue
        if attribute in columns:
            raise InputError(
                f"OMS attribute {attribute!r} is given twice ({source[attribute]!r} and {name!r})"
            )
        try:
            column = decode(tensor)
        except ValueError as error:
            raise InputError(f"OMS input {name!r}: {error}") from error
        if len(column) != n_ls:
            raise InputError(
                f"OMS input {name!r} has {len(column)} values but the maps have {n_ls} "
                "lumisections (one value per lumisection expected)"
            )
        columns[attribute] = column
        source[attribute] = name
    if ignored:
        shown = f"{ignored[:SHOWN_IGNORED]}" + (
            f" and {len(ignored) - SHOWN_IGNORED} more" if len(ignored) > SHOWN_IGNORED else ""
        )
        LOGGER.warning(
            "Ignoring input(s) %s: neither the maps nor an OMS tensor named <prefix>__<attribute>",
            shown,
        )
    return columns
