"""Per-LS results: the one definition of their columns, and the table every command writes.

`predict` writes these columns as its CSV, `era` as `lumisections.*` (plus the OMS pileup and
recorded luminosity), and
every table of an era, `plot --era` and `dials-flags` read them back, so they are declared once
here: names, order and dtypes, also for an empty result (a run where nothing could be judged
still writes every table with its header).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import PredictionResult

# name -> dtype of an empty column (strings are Python objects, as pandas keeps them)
RESULT_COLUMNS: dict[str, str] = {
    "run": "int64",
    "ls": "int64",
    "flag": "bool",
    "metric": "float64",
    "type": "object",
    "groups": "object",
    "dcs_good": "bool",
    "dcs_failed": "object",
}
PILEUP_COLUMN = "pileup"  # era results add the OMS pileup of each LS (NaN without OMS)
# ... and the OMS recorded luminosity of each LS, /pb (NaN without OMS: never a silent zero)
RECORDED_LUMI_COLUMN = "recorded_lumi"
ERA_RESULT_COLUMNS: dict[str, str] = {
    **RESULT_COLUMNS,
    PILEUP_COLUMN: "float64",
    RECORDED_LUMI_COLUMN: "float64",
}
MODEL_COLUMN = "model"  # era results end with the model file that judged the LS's run
_DCS_FLAG_NAMES = np.asarray(DCS_FLAGS)


def results_table(run: np.ndarray, ls: np.ndarray, result: PredictionResult) -> pd.DataFrame:
    """One row per LS: run, ls, flag, metric, type, groups, and why DCS failed, if it did."""
    return pd.DataFrame(
        {
            "run": np.asarray(run, dtype=np.int64),
            "ls": np.asarray(ls, dtype=np.int64),
            "flag": result.flag,
            "metric": np.round(result.metric.astype(np.float64), 4),
            "type": result.anomaly_type.astype(object),
            "groups": result.groups(),
            "dcs_good": result.dcs.good,
            "dcs_failed": [";".join(_DCS_FLAG_NAMES[row]) for row in result.dcs.failed],
        },
        columns=list(RESULT_COLUMNS),
    )


def empty_results(columns: dict[str, str] = ERA_RESULT_COLUMNS) -> pd.DataFrame:
    """A result with no LS, every column of the right dtype (so the tables need no special case)."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
