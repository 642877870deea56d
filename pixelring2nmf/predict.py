"""`pixelring2nmf predict`: flag the LS of a DIALS parquet file, the way DIALS would."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import (
    DEFAULT_MODEL_PATH,
    PixelRing2NMF,
    PredictionResult,
    show_logs,
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
    from .oms import align_oms, read_oms_json
    from .parquet import read_dials_parquet

    show_logs(sys.stdout)  # the three [INFO] lines go to stdout, as the original printed them
    model = PixelRing2NMF.load(args.model or DEFAULT_MODEL_PATH)
    data = read_dials_parquet(args.parquet)
    oms = align_oms(read_oms_json(args.oms), data.run, data.ls) if args.oms else None
    result = model.predict(data.maps, oms, rule=args.rule)
    table = results_table(data.run, data.ls, result)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"Per-LS results written to {args.out}")
    flagged = table[table.flag]
    if len(flagged):
        print(flagged[["run", "ls", "metric", "type", "groups"]].to_string(index=False))
    return 0
