"""The model file `pixelring2nmf.joblib`: plain values and numpy arrays, loaded safely.

The original deployment pickled its own classes, so the file only loaded with the exact module
layout and library versions it was written with, and loading it could run any code inside it.
Ours is a standard pickle (protocol 4, which `joblib.load` also reads) of a dict holding only
numpy arrays and plain Python values. `load_artifact` unpickles it with an allowlist: the three
numpy names that rebuild an ndarray, under both their numpy 1 and numpy 2 module paths, and
nothing else. A file that asks for any other global (the way a pickle runs code) is refused.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
GEOMETRY_VERSION = "ring2-140x56-cross-removed-136x48-v1"

# Local numpy callables that rebuild an array; taken from numpy itself so the allowlist does not
# depend on where this numpy version keeps them (numpy.core in 1.x, numpy._core in 2.x).
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_PLAIN_TYPES = (str, int, float, bool, type(None), bytes)


class ArtifactError(ValueError):
    """The model file is missing, unreadable, unsafe, or of an unknown format."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ArtifactError(
                f"Refusing to load {module}.{name} from the model file: a PixelRing2NMF model "
                "holds only numpy arrays and plain values, so this file is not one (or was "
                "tampered with)"
            ) from None


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything but dicts/lists/tuples of plain values and numeric/string arrays."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArtifactError(f"Model file: key {key!r} in {where} is not a string")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ArtifactError(f"Model file: array {where} holds Python objects")
    elif not isinstance(value, _PLAIN_TYPES):
        raise ArtifactError(f"Model file: {where} is a {type(value).__name__}, not a plain value")


def _to_plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, tuples -> lists: what we write must read anywhere."""
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_artifact(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write `payload` (plain values and arrays) as a version-proof model file."""
    plain = _to_plain({"format_version": FORMAT_VERSION, **payload})
    _check_plain(plain, "model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pickle.dumps(plain, protocol=4))
    tmp.replace(path)  # never leave a half-written model where a server could load it
    return path


def load_artifact(path: str | Path) -> dict[str, Any]:
    """Read a model file safely: no code from the file runs, whatever it contains."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"Model file not found: {path}") from None
    except OSError as error:
        raise ArtifactError(f"Cannot read model file {path}: {error}") from None
    try:
        payload = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except ArtifactError as error:
        raise ArtifactError(f"{path}: {error}") from None
    except Exception as error:  # a truncated or foreign file: say so, do not crash
        raise ArtifactError(
            f"{path} is not a readable PixelRing2NMF model file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(payload, dict):
        raise ArtifactError(
            f"{path}: expected a dict of model fields, got {type(payload).__name__}"
        )
    _check_plain(payload, "model")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: model format version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    if payload.get("geometry_version") != GEOMETRY_VERSION:
        raise ArtifactError(
            f"{path}: geometry {payload.get('geometry_version')!r} does not match this code's "
            f"{GEOMETRY_VERSION!r}"
        )
    return payload
