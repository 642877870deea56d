"""Certification outputs of an era: golden.json, flagged.json and what luminosity they hold.

CMS certifies data with the "golden JSON" (docs: DOMAIN.md section 13): per run, the good LS as
inclusive, sorted ranges, `{"386661": [[1, 102], [104, 740]]}`, keys run numbers as strings.
DIALS, the Run Registry and every analysis read that format, so `era` writes two files in it:

- `golden.json`: the DCS-good LS the model did not flag;
- `flagged.json`: the LS the model flagged (always DCS-good: the filter runs before the Flag).

Together they are exactly the DCS-good LS that were judged (`lumisections.*`). An LS with no
data (never judged, or in a row group that could not be read) is in neither: certification
must not call good what nobody looked at. A run with no LS of a kind is left out of that file
(not given an empty list): in the format, a run that is absent has no such LS, and an empty list
would only invite tools to treat the run as listed.

Without OMS data the DCS filter passes every LS, so golden.json then lists every unflagged LS:
not certification-grade, and `certification_warnings` says so for era.json. Luminosity (the OMS
`recorded_lumi_per_lumisection`, pb^-1) is summed per range and per run by `era.tables`; without
it those columns are NaN (never a silent zero), and era.json says why.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..io.keys import consecutive_ranges

GOLDEN_NAME = "golden.json"
FLAGGED_NAME = "flagged.json"
CERTIFICATION_NAMES = (GOLDEN_NAME, FLAGGED_NAME)
OMS_RUN_REPORT = "https://cmsoms.cern.ch/cms/runs/report?cms_run={run}"

NO_OMS_GOLDEN_WARNING = (
    "golden.json was written without OMS data: every LS counted as DCS-good, so it lists "
    "every LS the model did not flag and is not certification-grade"
)
NO_DCS_GOLDEN_WARNING = (
    "golden.json was written without DCS flags in the OMS data: every LS counted as DCS-good, "
    "so it is not certification-grade"
)
NO_LUMI_WARNING = (
    "no recorded luminosity (OMS recorded_lumi_per_lumisection): the luminosity columns "
    "(lumisections.recorded_lumi, the tables' luminosity columns) are empty, not zero"
)


def ls_ranges(ls: np.ndarray) -> list[list[int]]:
    """Sorted LS numbers (unique) -> inclusive [first, last] ranges of consecutive LS."""
    return [[first, last] for first, last in consecutive_ranges(ls)]


def certification_json(results: pd.DataFrame, selected: np.ndarray) -> dict[str, list[list[int]]]:
    """The selected LS of per-LS results as {"run": [[first, last], ...]}, runs ascending."""
    chosen = results.loc[np.asarray(selected, dtype=bool), ["run", "ls"]]
    chosen = chosen.drop_duplicates().sort_values(["run", "ls"], kind="stable")
    return {
        str(run): ls_ranges(group.ls.to_numpy()) for run, group in chosen.groupby("run", sort=True)
    }


def golden_json(results: pd.DataFrame) -> dict[str, list[list[int]]]:
    """DCS-good LS the model did not flag."""
    return certification_json(results, results.dcs_good.to_numpy() & ~results.flag.to_numpy())


def flagged_json(results: pd.DataFrame) -> dict[str, list[list[int]]]:
    """LS the model flagged (DCS-good by construction)."""
    return certification_json(results, results.flag.to_numpy())


def certification_files(results: pd.DataFrame) -> dict[str, str]:
    """File name -> text of golden.json and flagged.json (one run per line, as CMS's files)."""
    return {
        GOLDEN_NAME: _dump(golden_json(results)),
        FLAGGED_NAME: _dump(flagged_json(results)),
    }


def _dump(ranges: dict[str, list[list[int]]]) -> str:
    if not ranges:
        return "{}\n"
    lines = [f"  {json.dumps(run)}: {json.dumps(spans)}" for run, spans in ranges.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def certification_warnings(oms_given: bool, has_dcs_flags: bool, has_recorded_lumi: bool):
    """(era.json `oms` entries, warnings): how far golden.json and the luminosity hold."""
    warnings = []
    if not oms_given:
        warnings.append(NO_OMS_GOLDEN_WARNING)
    elif not has_dcs_flags:
        warnings.append(NO_DCS_GOLDEN_WARNING)
    if not (oms_given and has_recorded_lumi):
        warnings.append(NO_LUMI_WARNING)
    why = "no --oms given" if not oms_given else "no recorded_lumi_per_lumisection column"
    entries = {
        "recorded_lumi": "read (pb^-1)" if oms_given and has_recorded_lumi else f"absent: {why}",
        "certification_grade": oms_given and has_dcs_flags,
    }
    return entries, warnings


def oms_run_link(run: int) -> str:
    """The OMS run report of `run`, the page experts open from a table row."""
    return OMS_RUN_REPORT.format(run=int(run))
