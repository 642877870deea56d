"""Models by period: which model file judges which run (docs/domain.md, "Periods").

The detector changes during a year (a group dies, ROCs are disabled), so the experts keep one
model per period and choose it by run number. A model file states its period (`train
--valid-runs FIRST:LAST`, `FIRST:` for the current, open one); a file written before periods
existed states none and is valid for every run. Given several files (`--model a b ...`), every
run must be covered by exactly one: a run covered by none or by two is a question only the user
can answer, so it is refused before anything is judged, naming the runs and the models.
`--exclude-runs` leaves run ranges out on purpose (HV bias scans, machine development), and
`--skip-uncovered` judges the covered runs and lists the others.

The served model is one model and refuses nothing by its period: DIALS sends it only the runs
the template's `MinRunNumber`/`MaxRunNumber` select, and `build` keeps those equal to the period.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlserver_model.joint import JointNMF, load_model
from mlserver_model.pixelring2nmf import PixelRing2NMF

from ..errors import OptionError
from ..io.keys import consecutive_ranges
from .rings import model_rings, rings_text

NOT_JUDGED = -1  # index_of's answer for a run that no model judges (excluded, or skipped)
_SHOWN_RANGES = 8  # run ranges named in a message before "and N more"


@dataclass(frozen=True)
class RunRange:
    """Runs first..last, both included; `last` None for an open period (and every run after)."""

    first: int = 1
    last: int | None = None

    @classmethod
    def of_model(cls, model: PixelRing2NMF) -> RunRange:
        """The model file's period; a file that states none is valid for every run."""
        stated = model.valid_runs
        return cls() if stated is None else cls(*stated)

    @property
    def every_run(self) -> bool:
        return self.first <= 1 and self.last is None

    def covers(self, runs: np.ndarray) -> np.ndarray:
        runs = np.asarray(runs)
        inside = runs >= self.first
        return inside if self.last is None else inside & (runs <= self.last)

    def overlaps(self, first: int, last: int) -> bool:
        return last >= self.first and (self.last is None or first <= self.last)

    def option_text(self) -> str:
        """As the options write it: `382800:392668`, `382800:`."""
        return f"{self.first}:" if self.last is None else f"{self.first}:{self.last}"

    def describe(self) -> str:
        if self.every_run:
            return "every run (no period stated)"
        if self.last is None:
            return f"runs {self.first} onwards"
        return f"run {self.first}" if self.first == self.last else f"runs {self.first}-{self.last}"

    def as_json(self) -> dict[str, int | None] | None:
        return None if self.every_run else {"first": self.first, "last": self.last}


def parse_run_range(text: str, option: str) -> RunRange:
    """`FIRST:LAST`, `FIRST:` (open) or `RUN` (one run) -> RunRange; an OptionError (one line)
    for anything else, LAST < FIRST or a run below 1."""
    first_text, colon, last_text = str(text).strip().partition(":")
    try:
        first = int(first_text)
        last = (int(last_text) if last_text.strip() else None) if colon else first
    except ValueError:
        raise OptionError(
            f"{option} {text!r}: expected FIRST:LAST run numbers (or FIRST: for an open period)"
        ) from None
    if first < 1:
        raise OptionError(f"{option} {text!r}: run numbers start at 1")
    if last is not None and last < first:
        raise OptionError(f"{option} {text!r}: LAST {last} is before FIRST {first}")
    return RunRange(first, last)


def run_ranges_text(runs: Iterable[int], limit: int = _SHOWN_RANGES) -> str:
    """Runs as compact ranges: [1, 2, 3, 7, 9, 10] -> '1-3, 7, 9-10' (at most `limit` ranges)."""
    values = np.unique(np.fromiter((int(r) for r in runs), dtype=np.int64))
    if not len(values):
        return "none"
    parts = [
        str(first) if first == last else f"{first}-{last}"
        for first, last in consecutive_ranges(values)
    ]
    more = f" and {len(parts) - limit} more range(s)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PeriodModel:
    """One model file: where it came from, what it is valid for, and the loaded model."""

    path: str
    model: PixelRing2NMF | JointNMF
    valid: RunRange
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> PeriodModel:
        model = load_model(path)  # one ring or both; a bad file is an ArtifactError naming it
        return cls(str(path), model, RunRange.of_model(model), file_sha256(path))

    def describe(self) -> str:
        return f"{self.path} ({self.valid.describe()})"


@dataclass(frozen=True)
class Coverage:
    """Of the runs of some data: those no model covers, those two or more cover, excluded."""

    uncovered: tuple[int, ...]
    doubly: dict[int, tuple[int, ...]]  # run -> indices of the models that cover it
    excluded: tuple[int, ...]


@dataclass
class ModelSet:
    """The model files of one command, the runs left out, and which model judges which run.

    Picklable: a worker process (forked) or a Dask worker (once, in a plugin) holds the whole
    set, every model loaded once, and splits its chunks by model (`index_of`).
    """

    models: list[PeriodModel]
    exclude: list[RunRange] = field(default_factory=list)
    skip_uncovered: bool = False

    @classmethod
    def load(
        cls,
        paths: Sequence[str | Path],
        exclude: Sequence[RunRange] = (),
        skip_uncovered: bool = False,
    ) -> ModelSet:
        unique = list(dict.fromkeys(str(p) for p in paths))
        models = [PeriodModel.load(p) for p in unique]
        kinds = {model_rings(m.model) for m in models}
        if len(kinds) > 1:
            named = "; ".join(f"{m.path}: {rings_text(model_rings(m.model))}" for m in models)
            raise OptionError(
                f"--model: the files judge different rings ({named}): give models "
                "of one ring (or joint models only)"
            )
        return cls(models, list(exclude), skip_uncovered)

    @property
    def rings(self) -> tuple[int, ...]:
        """The rings every model of the set judges: (1,), (2,) or (1, 2) (joint models)."""
        return model_rings(self.models[0].model)

    @property
    def single(self) -> PixelRing2NMF | JointNMF | None:
        """The one model, when there is nothing to choose (one file valid for every run and no
        run left out): the era then runs exactly as with one model, at the same speed."""
        if len(self.models) == 1 and self.models[0].valid.every_run and not self.exclude:
            return self.models[0].model
        return None

    @property
    def model_for_executor(self) -> PixelRing2NMF | JointNMF | ModelSet:
        return self.single or self

    def excluded_mask(self, runs: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(runs), dtype=bool)
        for period in self.exclude:
            mask |= period.covers(runs)
        return mask

    def index_of(self, runs: np.ndarray) -> np.ndarray:
        """The index of the model that judges each run; NOT_JUDGED where none does (excluded,
        covered by none, or by two: those were refused before any work, unless skipped)."""
        runs = np.asarray(runs)
        covers = np.stack([m.valid.covers(runs) for m in self.models])  # (models, N)
        index = np.argmax(covers, axis=0).astype(np.int64)
        index[(covers.sum(axis=0) != 1) | self.excluded_mask(runs)] = NOT_JUDGED
        return index

    def coverage(self, runs: Iterable[int]) -> Coverage:
        values = np.unique(np.fromiter((int(r) for r in runs), dtype=np.int64))
        excluded = self.excluded_mask(values)
        values, left_out = values[~excluded], values[excluded]
        covers = (
            np.stack([m.valid.covers(values) for m in self.models])
            if self.models
            else np.zeros((0, len(values)), dtype=bool)
        )
        count = covers.sum(axis=0)
        doubly = {
            int(run): tuple(int(i) for i in np.flatnonzero(covers[:, j]))
            for j, run in enumerate(values)
            if count[j] > 1
        }
        uncovered = tuple(int(r) for r in values[count == 0])
        return Coverage(uncovered, doubly, tuple(int(r) for r in left_out))

    def check(self, runs: Iterable[int], *, era_options: bool = True) -> Coverage:
        """Refuse (OptionError, one line naming runs and models) runs covered by two models,
        and runs covered by none unless `skip_uncovered`; the coverage otherwise.
        `era_options`: the message offers era's --exclude-runs and --skip-uncovered."""
        leave_out = ", leave them out with --exclude-runs" if era_options else ""
        coverage = self.coverage(runs)
        listed = "; ".join(m.describe() for m in self.models)
        if coverage.doubly:
            pairs: dict[tuple[int, ...], list[int]] = {}
            for run, indices in coverage.doubly.items():
                pairs.setdefault(indices, []).append(run)
            named = "; ".join(
                f"run(s) {run_ranges_text(both)} by "
                + " and ".join(self.models[i].path for i in indices)
                for indices, both in pairs.items()
            )
            raise OptionError(
                f"--model: {len(coverage.doubly)} run(s) covered by two models, {named}: give "
                f"models whose periods do not overlap{leave_out}"
            )
        if coverage.uncovered and not self.skip_uncovered:
            raise OptionError(
                f"--model: {len(coverage.uncovered)} run(s) covered by no model: "
                f"{run_ranges_text(coverage.uncovered)} (models: {listed}); give a model for "
                f"them{leave_out}"
                + (", or judge the rest with --skip-uncovered" if era_options else "")
            )
        return coverage

    def paths_of(self, runs: np.ndarray) -> np.ndarray:
        """The path of the model that judged each run ('' where none did), as objects."""
        names = np.asarray([m.path for m in self.models] + [""], dtype=object)
        return names[self.index_of(runs)]  # NOT_JUDGED (-1) picks the last: ''

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.models)

    def as_json(self, judged_runs: np.ndarray) -> list[dict]:
        """era.json's `models`: each file with its period, checksum and the runs it judged."""
        index = self.index_of(judged_runs)
        return [
            {
                "path": m.path,
                "valid_runs": m.valid.as_json(),
                "validity": m.valid.describe(),
                "sha256": m.sha256,
                "runs": np.unique(np.asarray(judged_runs)[index == i]).tolist(),
            }
            for i, m in enumerate(self.models)
        ]
