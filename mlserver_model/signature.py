"""The tensors the model takes and gives, as template.yaml declares them to DISM and DIALS.

MLServer shows what a model declares at `GET /v2/models/<name>` (tritonclient's
`get_model_metadata`), so a client can discover the tensors there. `dismcli build` writes
model-settings.json itself, without them, so the handler declares them when it loads; a test
checks them against template.yaml's InputSignature, InputMetadata and OutputSignature.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dftools import DCS_FLAGS
from .geometry import MAP_SHAPE
from .omstools import OMS_SEPARATOR


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any number of lumisections


RING2 = TensorSpec("Ring2", "INT32", (-1, *MAP_SHAPE))
# The OMS tensors DIALS sends: <prefix>__<attribute>, one value per LS (omstools.py).
OMS_PREFIX = "oms_lumisection_info"
OMS_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("run_number", "INT32"),
    ("lumisection_number", "INT32"),
    ("pileup", "FP32"),
    *((flag, "BOOL") for flag in DCS_FLAGS),
)
INPUTS = (
    RING2,
    *(
        TensorSpec(f"{OMS_PREFIX}{OMS_SEPARATOR}{name}", datatype, (-1,))
        for name, datatype in OMS_ATTRIBUTES
    ),
)
# What DIALS reads (FlaggingKey, MetricKey); AnomalyType and Groups come only when asked for.
OUTPUTS = (TensorSpec("Flag", "BOOL", (-1,)), TensorSpec("Metric", "FP32", (-1,)))
