"""PixelRing2NMF: the folder DISM deploys to DIALS, importable as the package `mlserver_model`.

Modules import each other relatively (`from .geometry import ...`). When MLServer loads the
folder alone, `app.py` registers it under this package name first (see the comment there).
"""

__version__ = "0.1.0"
