"""PixelRing2NMF toolkit: what experts run offline around the served model.

The served model is the folder `mlserver_model/` (what DISM deploys to DIALS); this package
holds everything else: the `pixelring2nmf` command line, simulation, training, prediction on
parquet files, OMS and DIALS access, DISM build/serve, evaluation and plots. It imports the
runtime; the runtime never imports it.

From a notebook::

    from pixelring2nmf.parquet import read_dials_parquet
    from pixelring2nmf.oms import read_oms_json, align_oms
    from mlserver_model.pixelring2nmf import PixelRing2NMF
"""

from mlserver_model import __version__

__all__ = ["__version__"]
