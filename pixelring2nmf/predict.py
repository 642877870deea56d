"""`pixelring2nmf predict`: flag the LS of a DIALS parquet file, the way DIALS would."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import (
    DEFAULT_MODEL_PATH,
    PixelRing2NMF,
    PredictionResult,
)


def results_table(run: np.ndarray, ls: np.ndarray, result: PredictionResult) -> pd.DataFrame:
    """One row per LS: run, ls, flag, metric, type, groups (plus why DCS failed, if it did)."""
    failed = result.dcs.failed
    return pd.DataFrame(
        {
            "run": run,
            "ls": ls,
            "flag": result.flag,
            "metric": np.round(result.metric.astype(np.float64), 4),
            "type": result.anomaly_type,
            "groups": result.groups(),
            "dcs_good": result.dcs.good,
            "dcs_failed": [";".join(np.asarray(DCS_FLAGS)[row]) for row in failed],
        }
    )


def run_predict(args: argparse.Namespace) -> int:
    from .oms import checked_oms_columns, read_oms_json
    from .outputs import output_file
    from .parquet import read_dials_parquet

    out = output_file(args.out, what="--out") if args.out else None  # before the work
    model = PixelRing2NMF.load(args.model or DEFAULT_MODEL_PATH)
    oms_table = read_oms_json(args.oms) if args.oms else None  # a bad file fails before the maps
    data = read_dials_parquet(args.parquet)
    oms = checked_oms_columns(oms_table, data.run, data.ls, str(args.oms))
    result = model.predict(data.maps, oms, rule=args.rule)
    table = results_table(data.run, data.ls, result)
    if out:
        table.to_csv(out, index=False)
        print(f"Per-LS results written to {out}")
    flagged = table[table.flag]
    if len(flagged):
        print(flagged[["run", "ls", "metric", "type", "groups"]].to_string(index=False))
    return 0
