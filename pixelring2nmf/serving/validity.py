"""The template's run conditions and the model's period (`train --valid-runs`) kept equal.

DIALS runs the served model only on the runs the template's `InferenceOnConditions` select
(`MinRunNumber`, `MaxRunNumber`), and the model file states the period it was trained for. The
two were typed separately; `build` now makes them one: a run condition the template leaves out
is written from the model's period, and one it states must agree with it. A disagreement is an
error (a deployed model would then judge runs of another period, or miss runs of its own),
unless `build --runs-from-model` asks for the model's period to replace the template's.

An open period (`FIRST:`) has no MaxRunNumber; the deployed template's `MaxRunNumber: 999999`
(no six-digit run is beyond it) agrees with an open period. A model file without a period
(written before periods existed) is valid for every run: the template's conditions are kept.
Only the built template changes: the template.yaml given is never rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlserver_model.artifact import VALID_RUNS_KEY, ArtifactError, check_valid_runs, load_artifact

from ..errors import DataError

OPEN_MAX_RUN = 999999  # the deployed template's MaxRunNumber: no upper bound (6-digit runs)
RUNS_FROM_MODEL_OPTION = "--runs-from-model"


def model_period(model_uri: str | Path) -> tuple[int, int | None] | None:
    """(first, last or None) of the model file's period; None when it states none."""
    try:
        payload = load_artifact(model_uri)
    except ArtifactError as error:
        raise DataError(str(error)) from None
    value = payload.get(VALID_RUNS_KEY)
    return None if value is None else check_valid_runs(value)


def _period_text(first: int, last: int | None) -> str:
    return f"runs {first} onwards" if last is None else f"runs {first}-{last}"


def _conditions_text(low: int | None, high: int | None) -> str:
    low_text = f"MinRunNumber {low}" if low is not None else "no MinRunNumber"
    return f"{low_text}, " + (f"MaxRunNumber {high}" if high is not None else "no MaxRunNumber")


def apply_model_period(
    key: str, properties: Any, template_path: str | Path, *, runs_from_model: bool = False
) -> str:
    """Write or check `properties.InferenceOnConditions`' run numbers against the model's
    period (in place); the one line that says what was done. A disagreement is a DataError."""
    from dism_core.properties.isvc.inference_cond import InferenceOnConditions

    period = model_period(properties.ModelUri)
    conditions = properties.InferenceOnConditions
    low = conditions.MinRunNumber if conditions is not None else None
    high = conditions.MaxRunNumber if conditions is not None else None
    if period is None:
        return (
            f"{key}: the model states no period (valid for every run): the template's run "
            f"conditions are kept ({_conditions_text(low, high)})"
        )
    first, last = period
    period_text = _period_text(first, last)
    low_agrees = low is None or low == first
    high_agrees = high is None or high == last or (last is None and high == OPEN_MAX_RUN)
    if not (low_agrees and high_agrees) and not runs_from_model:
        raise DataError(
            f"{template_path}: {key}: the template's {_conditions_text(low, high)} disagree "
            f"with the period of its model {properties.ModelUri} ({period_text}); correct one "
            f"of them, or build with {RUNS_FROM_MODEL_OPTION} to write the model's period"
        )
    if conditions is None:
        conditions = properties.InferenceOnConditions = InferenceOnConditions()
    if low_agrees and high_agrees and low is not None and (high is not None or last is None):
        return (
            f"{key}: the template's {_conditions_text(low, high)} agree with the model's "
            f"period ({period_text})"
        )
    how = "replaced by" if not (low_agrees and high_agrees) else "written from"
    conditions.MinRunNumber = first
    if not (high_agrees and high is not None):
        conditions.MaxRunNumber = last
    return (
        f"{key}: {_conditions_text(conditions.MinRunNumber, conditions.MaxRunNumber)} {how} "
        f"the model's period ({period_text})"
    )
