"""The figures of `pixelring2nmf plot`: find their data, judge it the era's way, draw it.

Two kinds of figure:
- one LS as the model sees it (occupancy, reconstruction, deficit significance, bad ROCs and
  power groups), judged by the era engine's own step (`era.verdict.judge_lumisections`, the
  model's `predict` with the LS's OMS columns), with its DCS state;
- the per-LS results an `era` run wrote, one page per run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.joint import JointNMF
from mlserver_model.pixelring2nmf import PixelRing2NMF

from ..era.output import RESULTS_STEM, table_csv
from ..era.verdict import judge_lumisections
from ..errors import DataError
from ..io.oms import OmsLookup, pileup_values
from ..io.parquet import iter_dials_parquet
from .draw import era_run_figure, joint_lumisection_figure, lumisection_figure

logger = logging.getLogger(__name__)


def find_lumisection(paths: Sequence[str | Path], run: int, ls: int) -> np.ndarray:
    """The map of (run, LS) ((140, 56) or (92, 56): the files' ring), reading only row groups
    that may hold the run; the first copy when the LS is found more than once (the toolkit's
    duplicate policy)."""
    for path in paths:
        for chunk in iter_dials_parquet(path, runs=[run]):
            hit = np.flatnonzero(chunk.ls == ls)
            if hit.size:
                return chunk.maps[hit[0]]
    names = ", ".join(str(p) for p in paths)
    raise DataError(f"run {run}, LS {ls} is not in {names}")


@dataclass(frozen=True)
class DcsNote:
    """What the title says of the detector's state: the DCS flags of the LS, if OMS has it."""

    text: str
    known: bool  # False when no OMS data describe the LS


def dcs_note(oms: OmsLookup | None, run: int, ls: int, failed_flags: list[str]) -> DcsNote:
    """'DCS good', 'DCS bad: <flags>', or that OMS says nothing of this LS (not that the
    detector was off: an OMS file of other runs must not read as a detector that was off)."""
    if oms is None:
        return DcsNote("no OMS data", False)
    if oms.coverage(np.array([run]), np.array([ls])).n_covered == 0:
        return DcsNote("no OMS data for this LS", False)
    text = f"DCS bad: {', '.join(failed_flags)}" if failed_flags else "DCS good"
    pileup = pileup_values(oms.columns_for(np.array([run]), np.array([ls])), 1)[0]
    if not np.isnan(pileup):
        text += f"; pileup {float(pileup):.1f}"
    return DcsNote(text, True)


def lumisection_plot(
    sources: Sequence[str | Path],
    run: int,
    ls: int,
    model: PixelRing2NMF | JointNMF,
    oms: OmsLookup | None,
):
    """The figure of one LS, and the note on its DCS state (the sources hold the model's
    ring(s): the command checked them)."""
    if isinstance(model, JointNMF):
        return joint_lumisection_plot(sources, run, ls, model, oms)
    map_yx = find_lumisection(sources, run, ls)
    _, result = judge_lumisections(
        map_yx[None], np.array([run]), np.array([ls]), model, oms, roc_maps=True
    )
    note = dcs_note(oms, run, ls, result.dcs.failed_flags(0))
    figure = lumisection_figure(
        map_yx,
        {name: maps[0] for name, maps in result.roc_maps.items()},
        result.anomalous_groups[0],
        run=run,
        ls=ls,
        anomaly_type=str(result.anomaly_type[0]),
        metric=float(result.metric[0]),
        flag=bool(result.flag[0]),
        dcs_note=note.text,
        z_threshold=model.thresholds.z_threshold,
        geometry=model.geometry,
    )
    return figure, note


def joint_lumisection_plot(
    sources: Sequence[str | Path], run: int, ls: int, model: JointNMF, oms: OmsLookup | None
):
    """One LS of a joint model: both rings' maps of it (one may be missing: then it is judged,
    as in an era, on the other ring alone), the joint decision, each ring's bad ROCs."""
    from ..model.rings import sources_by_ring

    by_ring = sources_by_ring(sources)
    maps: dict[int, np.ndarray | None] = {}
    for ring in sorted(model.rings):
        try:
            maps[ring] = find_lumisection(by_ring.get(ring, []), run, ls)
        except DataError:
            maps[ring] = None
    present = {ring: m[None] for ring, m in maps.items() if m is not None}
    if not present:
        names = ", ".join(str(p) for p in sources)
        raise DataError(f"run {run}, LS {ls} is in no file of either ring: {names}")
    columns = oms.columns_for(np.array([run]), np.array([ls])) if oms is not None else None
    result = model.predict(present, columns)
    note = dcs_note(oms, run, ls, result.dcs.failed_flags(0))
    roc_maps = {
        ring: {name: array[0] for name, array in model.rings[ring].roc_maps(m).items()}
        for ring, m in present.items()
    }
    figure = joint_lumisection_figure(
        maps,
        roc_maps,
        result.anomalous_groups[0],
        geometries={ring: m.geometry for ring, m in model.rings.items()},
        run=run,
        ls=ls,
        anomaly_type=str(result.anomaly_type[0]),
        metric=float(result.metric[0]),
        flag=bool(result.flag[0]),
        dcs_note=note.text,
    )
    return figure, note


def era_results(era_dir: Path, runs: Sequence[int] | None) -> tuple[pd.DataFrame, list[int]]:
    """The per-LS results an `era` run wrote, and the runs to draw (all, or those asked for)."""
    path = Path(era_dir) / f"{RESULTS_STEM}.parquet"
    if not path.is_file():
        raise DataError(f"{path} not found: --era takes an output directory of `era`")
    results = pd.read_parquet(path)
    present = sorted(results.run.unique().tolist())
    runs = list(runs) if runs else present
    unknown = sorted(set(runs) - set(present))
    if unknown:
        raise DataError(f"run(s) {unknown} are not in {path}")
    return results, runs


def era_plot(era_dir: Path, results: pd.DataFrame, runs: Sequence[int]) -> list:
    """One figure per run of an era's results, persistent groups marked."""
    persistent_path = table_csv(Path(era_dir), "persistent")
    persistent = pd.read_csv(persistent_path) if persistent_path.is_file() else pd.DataFrame()
    figures = []
    for run in runs:
        groups = persistent[persistent.Run_Number == run].Powergroup if len(persistent) else []
        figures.append(era_run_figure(results, int(run), list(groups)))
    return figures
