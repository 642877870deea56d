"""The joint model over an era: both rings' maps of an LS, paired by (run, LS), judged together.

A joint model (`train --joint`, mlserver_model/joint.py) decides on the evidence of both rings
of an LS. Its inputs are two sets of files, one per ring, cut into row groups that need not
match, so the era pairs LS, not files. The design keeps the engine's unit of work (one task =
row groups of one file) and makes each task self-sufficient:

- a task of a **Ring 2** file reads, for the runs of each chunk, the Ring 1 maps of those runs
  (only the Ring 1 row groups whose footer may hold them) and pairs them by (run, LS): an LS
  found in both rings is judged on both, one found in Ring 2 only on Ring 2 alone;
- a task of a **Ring 1** file judges only its LS that no Ring 2 file holds (it reads the Ring 2
  files' run and LS columns, 16 bytes per LS, never a map), on Ring 1 alone.

So every LS is judged exactly once, wherever the tasks run (this process, worker processes, or
Dask workers that see the same files), and the results do not depend on how files were cut
into tasks. Each LS's result says which rings judged it (`rings`: '1+2', '1' or '2'), from
which era.json counts the LS seen by one ring only. Files of the other ring are opened as local
paths (a URL input works for the tasks' own files only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.joint import JointNMF

from ..io.oms import OmsLookup
from ..io.results import empty_results
from ..model.periods import ModelSet
from .verdict import judge_by_period, judge_lumisections

RINGS_COLUMN = "rings"  # per-LS: the rings that judged the LS ('1+2', '1', '2')
PRIMARY_RING = 2  # its tasks pair; the other ring's tasks judge only what it lacks
JOINT_RINGS_TEXT = {(1, 2): "1+2", (1,): "1", (2,): "2"}


def lumisection_keys(run: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """One int64 per (run, LS): both are below 2**31 in CMS."""
    return (np.asarray(run, dtype=np.int64) << 32) | np.asarray(ls, dtype=np.int64)


def pair_rings(
    ring_data: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> list[tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]]:
    """(maps, run, ls) per ring -> batches of LS sorted by (run, LS): those in both rings (both
    maps, same order), then those of each ring alone. Each ring's LS are unique already."""
    keys = {ring: lumisection_keys(run, ls) for ring, (_, run, ls) in ring_data.items()}
    batches = []
    if len(ring_data) == 2:
        (r1, k1), (r2, k2) = sorted(keys.items())
        common, i1, i2 = np.intersect1d(k1, k2, assume_unique=True, return_indices=True)
        if len(common):
            maps = {r1: ring_data[r1][0][i1], r2: ring_data[r2][0][i2]}
            batches.append((maps, ring_data[r1][1][i1], ring_data[r1][2][i1]))
        alone = {r1: np.setdiff1d(np.arange(len(k1)), i1), r2: np.setdiff1d(np.arange(len(k2)), i2)}
    else:
        alone = {ring: np.arange(len(k)) for ring, k in keys.items()}
    for ring, rows in sorted(alone.items()):
        if len(rows):
            maps, run, ls = ring_data[ring]
            order = rows[np.argsort(keys[ring][rows], kind="stable")]
            batches.append(({ring: maps[order]}, run[order], ls[order]))
    return batches


def judge_rings(
    maps: dict[int, np.ndarray],
    run: np.ndarray,
    ls: np.ndarray,
    model: JointNMF | ModelSet,
    oms: OmsLookup | None,
) -> pd.DataFrame:
    """The era's per-LS columns for LS of one or both rings (the same LS in every map), by the
    joint model (or, with several, each run by its period's), and the rings that judged them."""
    if isinstance(model, ModelSet):
        table = judge_by_period(maps, run, ls, model, oms)
    else:
        table, _ = judge_lumisections(maps, run, ls, model, oms)
    table[RINGS_COLUMN] = JOINT_RINGS_TEXT[tuple(sorted(maps))]
    return table


def _empty() -> pd.DataFrame:
    return empty_results().assign(**{RINGS_COLUMN: pd.Series(dtype=object)})


class JointEra:
    """What the tasks of a joint era judge with: the model(s) and every file of both rings.

    Travels to worker processes (forked) and Dask workers (a plugin) in place of the model;
    each process learns the files' rings and the other ring's LS keys once, lazily.
    """

    def __init__(self, model: JointNMF | ModelSet, sources: Sequence[str | Path]) -> None:
        self.model = model
        self.sources = tuple(sources)
        self._rings: dict[str, int] = {}
        self._keys: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {"model": self.model, "sources": self.sources, "_rings": {}, "_keys": {}}

    def ring_of(self, source: str | Path) -> int:
        from ..model.rings import file_geometry

        name = str(source)
        if name not in self._rings:
            self._rings[name] = file_geometry(source).ring
        return self._rings[name]

    def other_sources(self, ring: int) -> list[str | Path]:
        return [s for s in self.sources if self.ring_of(s) != ring]

    def judge_chunk(self, chunk, source: str | Path, oms: OmsLookup | None) -> pd.DataFrame:
        """The LS of one chunk of `source` that this task must judge (module docstring)."""
        ring = chunk.geometry.ring
        runs = np.unique(chunk.run)
        mine = (chunk.maps, chunk.run, chunk.ls)
        if ring == PRIMARY_RING:  # the other ring's LS of this chunk only: the rest of those
            other = self._other_maps(self.other_sources(ring), runs)  # runs is another task's
            if other is not None:
                inside = np.isin(lumisection_keys(other[1], other[2]), lumisection_keys(*mine[1:]))
                other = tuple(a[inside] for a in other)
            ring_data = {ring: mine} if other is None else {ring: mine, 3 - ring: other}
        else:
            taken = self._other_keys(self.other_sources(ring), runs)
            alone = ~np.isin(lumisection_keys(chunk.run, chunk.ls), taken)
            ring_data = {ring: tuple(a[alone] for a in mine)}
        tables = [
            judge_rings(maps, run, ls, self.model, oms) for maps, run, ls in pair_rings(ring_data)
        ]
        return pd.concat(tables, ignore_index=True) if tables else _empty()

    def _other_maps(self, sources: Sequence[str | Path], runs: np.ndarray):
        """The other ring's (maps, run, ls) of these runs, each LS from its first copy."""
        from ..io.parquet import first_copies_of, read_dials_parquet

        parts = [read_dials_parquet(source, runs=runs.tolist()) for source in sources]
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        other = first_copies_of(parts)
        return other.maps, other.run, other.ls

    def _other_keys(self, sources: Sequence[str | Path], runs: np.ndarray) -> np.ndarray:
        """The (run, LS) keys the other ring's files hold in these runs."""
        keys = [self._file_keys(source) for source in sources]
        every = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        return every[np.isin(every >> 32, runs)]

    def _file_keys(self, source: str | Path) -> np.ndarray:
        name = str(source)
        if name not in self._keys:
            from ..io.parquet import open_dials_parquet

            with open_dials_parquet(source) as parquet_file:
                table = parquet_file.read(columns=["run_number", "ls_number"])
            self._keys[name] = lumisection_keys(
                table.column("run_number").to_numpy(), table.column("ls_number").to_numpy()
            )
        return self._keys[name]


def one_ring_counts(results: pd.DataFrame) -> dict:
    """era.json's counts of a joint era: LS judged on both rings, and on one ring only."""
    rings = results[RINGS_COLUMN] if RINGS_COLUMN in results.columns else pd.Series(dtype=object)
    return {
        "ls_both_rings": int((rings == "1+2").sum()),
        "ls_one_ring_only": {f"Ring {r}": int((rings == str(r)).sum()) for r in (1, 2)},
    }
