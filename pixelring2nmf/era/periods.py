"""What era.json and the log say of the models of an era (model/periods.py chooses them).

era.json gets `models` (each file: path, period, sha256 and the runs it judged), and, when
runs were left out, `exclude_runs` (the ranges asked for) with `excluded_runs` (the runs of the
input they held) and `skipped_runs` (`--skip-uncovered`: the runs no model covers).
"""

from __future__ import annotations

import logging

import numpy as np

from ..model.periods import ModelSet, run_ranges_text
from .merge import EraRun
from .output import EraStatus


def record_models(
    status: EraStatus, models: ModelSet, log: logging.Logger, era: EraRun | None = None
) -> None:
    """Before judging (`era` None): the files and periods, said once; after: the runs each
    model judged, and the runs left out or skipped."""
    runs = np.zeros(0, np.int64) if era is None else era.results.run.to_numpy()
    record: dict = {"models": models.as_json(runs)}
    if models.exclude:
        record["exclude_runs"] = [period.option_text() for period in models.exclude]
    coverage = era.coverage if era is not None else None
    if coverage is not None:
        if models.exclude:
            record["excluded_runs"] = list(coverage.excluded)
        if models.skip_uncovered:
            record["skipped_runs"] = list(coverage.uncovered)
    status.models = record
    if era is None and models.single is None:
        log.info("era: model(s) by period: %s", models.describe())
    if coverage is not None and coverage.uncovered:
        message = (
            f"--skip-uncovered: {len(coverage.uncovered)} run(s) covered by no model were not "
            f"judged: {run_ranges_text(coverage.uncovered)}"
        )
        log.warning(message)
        status.warnings.append(message)
