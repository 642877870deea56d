"""PixelRing2NMF toolkit: what experts run offline around the served model.

The served model is the folder `mlserver_model/` (what DISM deploys to DIALS); this package
holds everything else, in layers that import downwards only:

    cli/         the `pixelring2nmf` command line (nothing imports it)
    validation/  the original pipeline, mismatch studies, truth checks (bench/ and tests/)
    plots/       figures
    era/         the era engine: plan -> judge -> merge on executors; tables; its folder
    model/ sim/ remote/ serving/   training, the simulator, CERN services, DISM and MLServer
    io/          parquet, OMS JSON, per-LS results, output paths, atomic writes
    errors.py    the user-error family

Every layer may use the runtime; the runtime never imports the toolkit. From a notebook::

    from pixelring2nmf.io.parquet import read_dials_parquet
    from pixelring2nmf.io.oms import read_oms_json, align_oms
    from mlserver_model.pixelring2nmf import PixelRing2NMF
"""

from mlserver_model import __version__

__all__ = ["__version__"]
