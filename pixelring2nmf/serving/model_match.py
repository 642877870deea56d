"""The template's Name and InputSignature checked against the model file they deploy.

DIALS sends a registered model one tensor per InputSignature entry, the histogram of its
MonitoringElement, named as the entry (DOMAIN.md 11). A Ring 2 template pointed at a Ring 1
model file (or the joint template at a one-ring file) would build and start, then refuse every
request DIALS sends, or never get the maps it needs. So `build` (and `serve`, which builds)
refuses a template whose maps inputs are not exactly the model's rings: names, Dims and MEs
(`Ring1` [-1, 92, 56] with the Ring 1 ME, `Ring2` [-1, 140, 56] with the Ring 2 ME). The Name
may be any DIALS name, except the name of another kind of this project's models
(pixel-ring1-nmf, pixel-ring2-nmf, pixel-fpix-nmf and their suffixed variants): a Ring 1 model
registered as pixel-ring2-nmf would be read as the Ring 2 one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlserver_model.artifact import ArtifactError
from mlserver_model.geometry import RINGS, RingGeometry
from mlserver_model.joint import JOINT_MODEL_NAME, load_model
from mlserver_model.pixelring2nmf import model_name

from ..errors import DataError

# The names of this project's model kinds
KNOWN_NAMES = (*(model_name(g) for g in RINGS.values()), JOINT_MODEL_NAME)


def model_rings(model_uri: str | Path) -> tuple[str, tuple[RingGeometry, ...]]:
    """(the model's name, its rings) from the model file; a bad file is a DataError."""
    try:
        model = load_model(model_uri)
    except ArtifactError as error:
        raise DataError(str(error)) from None
    return model.name, model.geometries


def check_model_match(key: str, properties: Any, template_path: str | Path) -> None:
    """Refuse a template whose Name or maps inputs do not fit its model file (module
    docstring)."""
    name, rings = model_rings(properties.ModelUri)
    where = f"{template_path}: {key}"
    wanted = [(g.input_name, [-1, *g.map_shape], g.me) for g in rings]
    given = [(s.Name, list(s.Dims), s.MonitoringElement) for s in properties.InputSignature]
    if given != wanted:
        raise DataError(
            f"{where}: the InputSignature {_inputs_text(given)} does not fit its model "
            f"{properties.ModelUri}, a {name} model of {_rings_text(rings)}, which takes "
            f"{_inputs_text(wanted)}"
        )
    kind = _kind(str(properties.Name))
    if kind is not None and kind != name:
        raise DataError(
            f"{where}: Name {properties.Name!r} is that of a {kind} model, but its model "
            f"{properties.ModelUri} is a {name} model ({_rings_text(rings)})"
        )


def _kind(name: str) -> str | None:
    """The project model kind a DIALS name claims (pixel-ring2-nmf or pixel-ring2-nmf-2024)."""
    for known in KNOWN_NAMES:
        if name == known or name.startswith(f"{known}-") or name.startswith(f"{known}."):
            return known
    return None


def _rings_text(rings: tuple[RingGeometry, ...]) -> str:
    return " and ".join(g.name for g in rings)


def _inputs_text(inputs: list[tuple[str, list[int], str]]) -> str:
    shown = [f"{name} {dims} of {me}" for name, dims, me in inputs]
    return f"[{', '.join(shown)}]"
