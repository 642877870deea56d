"""MLServer handler of PixelRing2NMF: request -> PixelRing2NMF pipeline -> response.

(The serving issue fills in decoding, validation and encoding; the import mechanism below is
the package's one and only way of working both as `mlserver_model` and as a bare folder.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# How this folder works both as the package `mlserver_model` and as a bare folder.
# Every module of the folder imports its siblings relatively (`from .geometry import ...`), so
# the folder is a normal package when imported as `mlserver_model` (tests, CLI). MLServer
# (and `dismcli start-api`) instead puts the folder itself on sys.path and imports `app` as a
# top-level module, where relative imports have no parent package. In that case only, app.py
# registers its own folder under the package name `mlserver_model` (whatever the folder is
# called on disk) and imports the pipeline from it. This is the only place that knows about it.
if __package__:
    _PACKAGE = sys.modules[__package__]
else:
    _folder = Path(__file__).resolve().parent
    _PACKAGE = sys.modules.get("mlserver_model")
    if _PACKAGE is None or Path(_PACKAGE.__file__).resolve().parent != _folder:
        _spec = importlib.util.spec_from_file_location(
            "mlserver_model", _folder / "__init__.py", submodule_search_locations=[str(_folder)]
        )
        _PACKAGE = importlib.util.module_from_spec(_spec)
        sys.modules["mlserver_model"] = _PACKAGE
        _spec.loader.exec_module(_PACKAGE)

PACKAGE_NAME = _PACKAGE.__name__
