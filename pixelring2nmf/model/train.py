"""Training: good LS from DIALS parquet files -> a PixelRing2NMF model file.

Good LS = those passing the DCS filter (when OMS data are given) and outside the excluded
(run, LS) ranges: the model must learn only healthy maps, or it learns to expect outages.

The NMF learns K components H (K, 6528). Each training map is first divided by its own mean
occupancy, so that a fill's high-pileup LS do not outweigh its low-pileup ones and the
components describe the *shape* of a healthy map; each component is then scaled to mean 1,
the invariant the served model checks when it loads a file.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mlserver_model.artifact import VALID_RUNS_KEY
from mlserver_model.bad_ROC import Thresholds
from mlserver_model.geometry import GEOMETRY_BY_MAP_SHAPE, RING2, RingGeometry
from mlserver_model.joint import JointNMF
from mlserver_model.nmf2d import MAX_EXACT_COMPONENTS
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space

from .. import __version__
from ..errors import DataError, OptionError

logger = logging.getLogger(__name__)

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
        raise OptionError(f"--components must be 1..{MAX_EXACT_COMPONENTS}, got {n_components}")
    if passes < 1:
        raise OptionError(f"--passes must be >= 1, got {passes}")
    x = np.asarray(maps_model, dtype=np.float64).reshape(len(maps_model), -1)
    if len(x) < n_components:
        raise DataError(f"Need at least {n_components} good LS to train, got {len(x)}")
    mean_per_ls = x.mean(axis=1, keepdims=True)
    if np.any(mean_per_ls <= 0):
        raise DataError("Training maps include an empty LS (all counts zero)")
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
    """(k, 3) int array of (run, first LS, last LS) from a CSV of ranges or of single LS.

    Ranges: columns `run, ls_first, ls_last`. Single LS: columns `run, ls`, as in the
    simulator's `truth.csv` or a `predict` output filtered to the LS to leave out.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, nrows=None)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{path}: not a readable exclusion CSV ({_short(error)})") from None
    if {"run", "ls_first", "ls_last"} <= set(table.columns):
        ranges = table[["run", "ls_first", "ls_last"]]
    elif {"run", "ls"} <= set(table.columns):
        ranges = table[["run", "ls", "ls"]]
    else:
        shown = [_short(column, 30) for column in table.columns[:6]]
        raise DataError(
            f"{path}: an exclusion CSV needs columns run, ls_first, ls_last (ranges) or run, ls "
            f"(single LS, e.g. truth.csv); its first line holds {len(table.columns)} column(s), "
            f"starting {shown}"
        )
    try:
        return ranges.to_numpy(dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: run and LS numbers must be integers") from None


def _short(value: object, limit: int = 200) -> str:
    """A value as text, cut: a wrong file's content must not become a megabyte of error."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    valid_runs: tuple[int, int | None] | None = None,
) -> PixelRing2NMF:
    """Fit a model on good (N, 140, 56) Ring 2 or (N, 92, 56) Ring 1 maps (already filtered;
    the ring is the maps'); `valid_runs` (first, last or None) is the period it is for
    (model/periods.py), stored in the file; None: every run."""
    thresholds = thresholds or Thresholds()
    geometry = maps_geometry(maps_nyx)
    x = to_model_space(maps_nyx, geometry)
    components = fit_components(x, n_components, alpha_H, passes, seed, on_pass)
    model = PixelRing2NMF(components, np.zeros(x.shape[1]), thresholds, geometry=geometry)
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
            **period_metadata(valid_runs),
        },
        geometry=geometry,
    )


def period_metadata(valid_runs: tuple[int, int | None] | None) -> dict:
    """The model file's `valid_runs` entry for (first, last or None); none for every run."""
    if valid_runs is None:
        return {}
    return {VALID_RUNS_KEY: {"first": valid_runs[0], "last": valid_runs[1]}}


def maps_geometry(maps_nyx: np.ndarray) -> RingGeometry:
    """The ring whose map shape the maps have (Ring 2's for anything else: it then refuses them
    with its own message, as before Ring 1 existed)."""
    return GEOMETRY_BY_MAP_SHAPE.get(tuple(np.shape(maps_nyx)[1:]), RING2)


def joint_model(
    models: dict[int, PixelRing2NMF], valid_runs: tuple[int, int | None] | None = None
) -> JointNMF:
    """One model file of both rings from one model per ring (each trained on its own ring's
    files): the rings keep their components and model errors, and share the thresholds of the
    first (train uses the defaults for both). Each ring's provenance is kept under its input
    name ('Ring1', 'Ring2'), so the file says which data each ring learned from."""
    first = models[min(models)]
    return JointNMF(
        models,
        first.thresholds,
        metadata={
            "version": __version__,
            "training": {
                model.geometry.input_name: model.metadata.get("training", {})
                for _, model in sorted(models.items())
            },
            **period_metadata(valid_runs),
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
    from mlserver_model.dftools import dcs_filter

    from ..io.oms import check_oms_frame, checked_oms_columns, read_oms_json
    from ..io.parquet import read_dials_parquet

    oms = read_oms_json(oms_file) if oms_file is not None else None
    for warning in check_oms_frame(oms, str(oms_file)) if oms is not None else ():
        logger.warning(warning)
    ranges = read_exclusions(exclude_file) if exclude_file is not None else np.zeros((0, 3))
    chunks, run_of_map, n_total = [], [], 0
    geometry = None
    for path in parquet_files:
        data = read_dials_parquet(path)
        if geometry is not None and data.geometry is not geometry:
            raise DataError(
                f"{path} holds {data.geometry.name} maps, {parquet_files[0]} {geometry.name} "
                "maps: train one ring at a time, or both rings' files with --joint"
            )
        geometry = data.geometry
        if data.n_repeated:
            logger.warning(data.repeated_message(path))
        n_total += len(data)
        columns = checked_oms_columns(oms, data.run, data.ls, str(oms_file))
        good = dcs_filter(columns, len(data)).good & ~excluded_mask(data.run, data.ls, ranges)
        chunks.append(data.maps[good])
        run_of_map.append(data.run[good])
    maps = (
        np.concatenate(chunks)
        if chunks
        else np.zeros((0, *(geometry or RING2).map_shape), np.int32)
    )
    runs = np.concatenate(run_of_map) if run_of_map else np.zeros(0, np.int64)
    n_good = len(maps)
    if max_ls is not None and n_good > max_ls:
        pick = np.sort(np.random.default_rng(seed).choice(n_good, max_ls, replace=False))
        maps, runs = maps[pick], runs[pick]
    if len(maps) == 0:
        raise DataError("No good LS left to train on (check the DCS flags and exclusions)")
    used_runs, used_per_run = np.unique(runs, return_counts=True)
    provenance = {
        "data_files": [Path(p).name for p in parquet_files],
        "oms_file": Path(oms_file).name if oms_file else None,
        "exclusions": ranges.astype(int).tolist(),
        "runs": used_runs.tolist(),
        "ls_used_per_run": {str(r): int(n) for r, n in zip(used_runs, used_per_run, strict=True)},
        "n_ls_read": n_total,
        "n_ls_good": n_good,
    }
    return maps, provenance


def fit_report(model: PixelRing2NMF, maps_nyx: np.ndarray) -> list[str]:
    """What a user checks before deploying a model: how well it fits its own training data.

    A relative residual of a few percent is the Poisson noise of real occupancies; much more,
    or a model error far above its floor on many ROCs, says the training data were not
    homogeneous (an outage or a detector change inside them).
    """
    x = to_model_space(maps_nyx, model.geometry)
    expected = model.reconstruct(x)
    residual = np.linalg.norm(x - expected, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-9)
    eps = model.model_error
    floor = model.thresholds.model_error_floor
    at_floor = float(np.mean(eps <= floor * 1.0001))
    per_run = model.metadata.get("training", {}).get("ls_used_per_run", {})
    return [
        "Fit report:",
        f"  reconstruction error |x - WH| / |x| per LS: median {np.median(residual):.2%}, "
        f"95th percentile {np.percentile(residual, 95):.2%}, max {residual.max():.2%}",
        f"  per-ROC model error eps: median {np.median(eps):.1%}, 95th percentile "
        f"{np.percentile(eps, 95):.1%}, max {eps.max():.1%}; {at_floor:.0%} of ROCs at the "
        f"{floor:.0%} floor",
        "  LS used per run: "
        + (", ".join(f"{run}: {n}" for run, n in per_run.items()) or "not recorded"),
    ]
