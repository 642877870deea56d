"""Training: good LS from DIALS parquet files -> a PixelRing2NMF model file.

Good LS = those passing the DCS filter (when OMS data are given) and outside the excluded
(run, LS) ranges: the model must learn only healthy maps, or it learns to expect outages.

The NMF learns K components H (K, 6528). Each training map is first divided by its own mean
occupancy, so that a fill's high-pileup LS do not outweigh its low-pileup ones and the
components describe the *shape* of a healthy map; each component is then scaled to mean 1,
the invariant the served model checks when it loads a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mlserver_model.bad_ROC import Thresholds
from mlserver_model.nmf2d import MAX_EXACT_COMPONENTS
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space

from . import __version__

_MAD_TO_SIGMA = 1.4826
_PASSES_PER_BLOCK = 10


def fit_components(
    maps_model: np.ndarray,
    n_components: int = 5,
    alpha_H: float = 0.1,
    passes: int = 300,
    seed: int = 0,
    on_pass: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Learn (K, 136*48) components, each of mean 1, from good model-space maps (N, 136, 48).

    scikit-learn's `NMF` with the coordinate-descent solver, one pass = one sweep over all
    LS. The original used `MiniBatchNMF` for 30 passes; on maps that are exactly 5-component
    mixtures that leaves a 7 % relative misfit (NMF-cd: 1 % after 200 passes, 0.4 % after
    1000), and a misfit of that size shows up as clusters of falsely "low" ROCs. The solver
    is run in blocks of `_PASSES_PER_BLOCK`, each restarting from the previous (W, H), which is
    the same computation (coordinate descent keeps no other state) and lets `on_pass(i)` drive
    a progress bar.
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    if not 1 <= n_components <= MAX_EXACT_COMPONENTS:
        raise ValueError(f"n_components must be 1..{MAX_EXACT_COMPONENTS}, got {n_components}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    x = np.asarray(maps_model, dtype=np.float64).reshape(len(maps_model), -1)
    if len(x) < n_components:
        raise ValueError(f"Need at least {n_components} good LS to train, got {len(x)}")
    mean_per_ls = x.mean(axis=1, keepdims=True)
    if np.any(mean_per_ls <= 0):
        raise ValueError("Training maps include an empty LS (all counts zero)")
    shapes = x / mean_per_ls
    w = h = None
    done = 0
    while done < passes:
        block = min(_PASSES_PER_BLOCK, passes - done)
        nmf = NMF(
            n_components=n_components,
            solver="cd",
            beta_loss="frobenius",
            init="nndsvda" if w is None else "custom",
            alpha_H=alpha_H,
            alpha_W=0.0,
            max_iter=block,
            tol=0.0,
            random_state=seed,
        )
        with warnings.catch_warnings():  # max_iter reached is the point of a block
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            w = nmf.fit_transform(shapes, W=w, H=h)
        h = nmf.components_
        for i in range(done, done + block):
            if on_pass is not None:
                on_pass(i)
        done += block
    components = h.astype(np.float64)
    means = components.mean(axis=1, keepdims=True)
    keep = means[:, 0] > 0  # a component that died during training carries no information
    return components[keep] / means[keep]


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
    from .oms import dcs_filter_for, read_oms_json
    from .parquet import read_dials_parquet

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
