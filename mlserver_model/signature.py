"""The tensors the model takes and gives, as template.yaml declares them to DISM and DIALS.

MLServer shows what a model declares at `GET /v2/models/<name>` (tritonclient's
`get_model_metadata`), so a client can discover the tensors there. `dismcli build` writes
model-settings.json itself, without them, so the handler declares them when it loads; a test
checks them against template.yaml's InputSignature, InputMetadata and OutputSignature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .dftools import DCS_FLAGS
from .geometry import MAP_SHAPE, RingGeometry
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


def maps_input(geometry: RingGeometry) -> TensorSpec:
    """The maps tensor of one ring: `Ring1` [-1, 92, 56], `Ring2` [-1, 140, 56]."""
    return TensorSpec(geometry.input_name, "INT32", (-1, *geometry.map_shape))


def inputs(geometries: Iterable[RingGeometry]) -> tuple[TensorSpec, ...]:
    """A model's inputs: the maps of its ring(s) (as its template's InputSignature orders
    them), then the OMS tensors. For Ring 2 alone, exactly INPUTS."""
    return (*(maps_input(g) for g in geometries), *INPUTS[1:])


# What DIALS reads (FlaggingKey, MetricKey); AnomalyType and Groups come only when asked for.
OUTPUTS = (TensorSpec("Flag", "BOOL", (-1,)), TensorSpec("Metric", "FP32", (-1,)))
