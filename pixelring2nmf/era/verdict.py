"""The single step from maps of lumisections to the model's per-LS results.

OMS columns of those LS, the model's `predict`, the result table with the OMS pileup and
recorded luminosity: a task of an era (`judge.judge_row_groups`, a joint era's pairing in
joint.py), `dials-flags` and `plot` all go through `judge_lumisections`, wherever they run; with
models by period, `judge_by_period` gives each run to its own model. Both take one ring's maps,
or a joint model's {ring: maps} of the same LS.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlserver_model.joint import JointNMF
from mlserver_model.pixelring2nmf import PixelRing2NMF, PredictionResult

from ..io.oms import OmsLookup, pileup_values, recorded_lumi_values
from ..io.results import PILEUP_COLUMN, RECORDED_LUMI_COLUMN, empty_results, results_table
from ..model.periods import NOT_JUDGED, ModelSet

Maps = np.ndarray | dict[int, np.ndarray]  # one ring's maps, or each ring's of the same LS


def judge_lumisections(
    maps: Maps,
    run: np.ndarray,
    ls: np.ndarray,
    model: PixelRing2NMF | JointNMF,
    oms: OmsLookup | None,
    *,
    roc_maps: bool = False,
) -> tuple[pd.DataFrame, PredictionResult]:
    """The model's results for these LS: the era's columns (with pileup and recorded
    luminosity) and the full result. `maps`: one ring's (N, rows, 56) maps for a one-ring
    model, {ring: maps} of the same N LS for a joint one (whose plots draw each ring's
    `roc_maps` themselves)."""
    columns = oms.columns_for(run, ls) if oms is not None else None
    if roc_maps:
        result = model.predict(maps, columns, roc_maps=True)
    else:
        result = model.predict(maps, columns)
    table = results_table(run, ls, result)
    table[PILEUP_COLUMN] = pileup_values(columns, len(table))
    table[RECORDED_LUMI_COLUMN] = recorded_lumi_values(columns, len(table))
    return table, result


def judge_by_period(
    maps: Maps, run: np.ndarray, ls: np.ndarray, models: ModelSet, oms: OmsLookup | None
) -> pd.DataFrame:
    """The LS of each model's runs judged by that model alone (a chunk never mixes models in
    one `predict`), LS of runs no model judges (left out, or skipped) dropped; in the input
    order, the rows of one model together (the merge sorts by run and LS)."""
    index = models.index_of(run)
    kept = np.unique(index[index != NOT_JUDGED])
    if len(kept) == 1 and (index == kept[0]).all():  # the usual chunk: one model, no copy
        table, _ = judge_lumisections(maps, run, ls, models.models[kept[0]].model, oms)
        return table
    tables = []
    for i in kept:
        rows = np.flatnonzero(index == i)
        picked = {r: m[rows] for r, m in maps.items()} if isinstance(maps, dict) else maps[rows]
        table, _ = judge_lumisections(picked, run[rows], ls[rows], models.models[i].model, oms)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else empty_results()
