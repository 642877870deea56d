"""Training: good LS from DIALS parquet files -> a PixelRing2NMF model file.

Good LS = those passing the DCS filter (when OMS data are given) and outside the excluded
(run, LS) ranges: the model must learn only healthy maps, or it learns to expect outages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .bad_ROC import Thresholds
from .nmf2d import fit_components
from .pixelring2nmf import PixelRing2NMF

_MAD_TO_SIGMA = 1.4826


def estimate_model_error(model: PixelRing2NMF, x: np.ndarray, floor: float) -> np.ndarray:
    """Per-ROC relative model error eps (6528,), from the residuals of the training LS.

    With Poisson counts and a relative model error eps, the standardised residual
    r = (x - mu) / sqrt(mu) has variance 1 + eps^2 mu. The variance is taken robustly (MAD) so
    that an outage that slipped into the training data does not inflate it.
    """
    expected = model.reconstruct(x).astype(np.float64)
    residual = (x - expected) / np.sqrt(expected + 1.0)
    centre = np.median(residual, axis=0)
    spread = _MAD_TO_SIGMA * np.median(np.abs(residual - centre), axis=0)
    mean_expected = expected.mean(axis=0)
    excess = np.divide(
        spread**2 + centre**2 - 1.0,
        mean_expected,
        out=np.zeros_like(mean_expected),
        where=mean_expected > 1.0,
    )
    return np.sqrt(np.clip(excess, floor**2, 0.25))


def read_exclusions(path: Path) -> np.ndarray:
    """(k, 3) int array of (run, first LS, last LS) from a CSV with those three columns."""
    import pandas as pd

    table = pd.read_csv(path)
    needed = ["run", "ls_first", "ls_last"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: exclusion CSV needs columns {needed}, missing {missing} "
            f"(found {list(table.columns)})"
        )
    return table[needed].to_numpy(dtype=np.int64)


def excluded_mask(run: np.ndarray, ls: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(N,) bool: LS inside any excluded (run, first, last) range."""
    if len(ranges) == 0:
        return np.zeros(len(run), dtype=bool)
    inside = (
        (run[:, None] == ranges[None, :, 0])
        & (ls[:, None] >= ranges[None, :, 1])
        & (ls[:, None] <= ranges[None, :, 2])
    )
    return inside.any(axis=1)


def train_model(
    maps_nyx: np.ndarray,
    *,
    n_components: int = 5,
    alpha_H: float = 0.1,
    passes: int = 300,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    provenance: dict | None = None,
    on_pass: Callable[[int], None] | None = None,
) -> PixelRing2NMF:
    """Fit a model on good (N, 140, 56) maps (already filtered)."""
    from .pixelring2nmf import to_model_space

    thresholds = thresholds or Thresholds()
    x = to_model_space(maps_nyx)
    components = fit_components(x, n_components, alpha_H, passes, seed, on_pass)
    model = PixelRing2NMF(components, np.zeros(x.shape[1]), thresholds)
    model_error = estimate_model_error(model, x, thresholds.model_error_floor)
    return PixelRing2NMF(
        components,
        model_error,
        thresholds,
        metadata={
            "version": __version__,
            "training": {
                "n_components": len(components),
                "alpha_H": alpha_H,
                "passes": passes,
                "seed": seed,
                "n_ls_used": len(x),
                **(provenance or {}),
                "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "libraries": _library_versions(),
            },
        },
    )


def _library_versions() -> dict[str, str]:
    import joblib
    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "joblib": joblib.__version__,
    }


def load_good_maps(
    parquet_files: Sequence[Path],
    oms_file: Path | None = None,
    exclude_file: Path | None = None,
    max_ls: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Good maps of the given files and the provenance that describes how they were chosen."""
    from .dftools import read_dials_parquet
    from .omstools import dcs_filter_for, read_oms_json

    oms = read_oms_json(oms_file) if oms_file is not None else None
    ranges = read_exclusions(exclude_file) if exclude_file is not None else np.zeros((0, 3))
    chunks, runs, n_total = [], set(), 0
    for path in parquet_files:
        data = read_dials_parquet(path)
        n_total += len(data)
        good = dcs_filter_for(oms, data.run, data.ls).good & ~excluded_mask(
            data.run, data.ls, ranges
        )
        chunks.append(data.maps[good])
        runs.update(int(r) for r in np.unique(data.run[good]))
    maps = np.concatenate(chunks) if chunks else np.zeros((0, 140, 56), np.int32)
    n_good = len(maps)
    if max_ls is not None and n_good > max_ls:
        pick = np.sort(np.random.default_rng(seed).choice(n_good, max_ls, replace=False))
        maps = maps[pick]
    if len(maps) == 0:
        raise ValueError("No good LS left to train on (check the DCS flags and exclusions)")
    provenance = {
        "data_files": [Path(p).name for p in parquet_files],
        "oms_file": Path(oms_file).name if oms_file else None,
        "exclusions": ranges.astype(int).tolist(),
        "runs": sorted(runs),
        "n_ls_read": n_total,
        "n_ls_good": n_good,
    }
    return maps, provenance


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    maps, provenance = load_good_maps(args.parquet, args.oms, args.exclude, args.max_ls, args.seed)
    print(
        f"Training on {len(maps)} good LS ({provenance['n_ls_good']} good of "
        f"{provenance['n_ls_read']} read, {len(provenance['runs'])} runs)"
    )
    with tqdm(total=args.passes, desc="NMF passes", unit="pass") as bar:
        model = train_model(
            maps,
            n_components=args.components,
            alpha_H=args.alpha_h,
            passes=args.passes,
            seed=args.seed,
            provenance=provenance,
            on_pass=lambda _: bar.update(1),
        )
    path = model.save(args.out)
    print(f"Model written to {path}")
    return 0
