"""Plan: which files make the era, what their footers say, and the tasks they are cut into.

A task is whole row groups of one file: parquet decodes a row group without reading the rows
before it, so tasks can run anywhere, in any order, and a chunk of maps never spans two row
groups (the results do not depend on how the row groups were grouped into tasks). Footers are
read where the tasks run (a cluster's workers may see storage the client does not).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from mlserver_model.errors import InputError

from ..errors import DataError
from ..io.parquet import (
    RowGroupInfo,
    is_url,
    row_group_infos,
    row_group_runs,
    split_row_groups,
)

Source = str | Path  # a local path, or a URL that the workers open through fsspec


def parquet_inputs(inputs: Iterable[str | Path]) -> list[Source]:
    """Files as given, directories expanded to their *.parquet files (sorted, not recursive).

    URLs (root://, https://, file://...) are kept as given: the machines that judge them (a
    cluster's workers) open them, and this one may not even see that storage. A file given
    twice is read once.
    """
    files: list[Source] = []
    for given in inputs:
        if is_url(str(given)):
            files.append(str(given))
            continue
        item = Path(given)
        if item.is_dir():
            found = sorted(item.glob("*.parquet"))
            if not found:
                raise DataError(f"{item}: directory holds no *.parquet file")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"DIALS parquet not found: {item}")
    unique = dict.fromkeys(p if isinstance(p, str) else p.resolve() for p in files)
    return list(unique)


@dataclass(frozen=True)
class FilePlan:
    """A file's row groups (LS, runs) as its footer says; or why it could not be opened."""

    file_index: int  # position in the era's list of files: the order of the merge
    source: Source
    row_groups: tuple[RowGroupInfo, ...] = ()
    failure: str = ""
    ring: int = 0  # the ring its maps are of (from its ME and binning); 0: not known

    @property
    def n_ls(self) -> int:
        return sum(info.n_ls for info in self.row_groups)

    def with_runs(self, runs: Collection[int]) -> FilePlan:
        """Only the row groups that may hold one of `runs` (by their footer statistics; a row
        group without statistics may hold any run). Others become empty, keeping their index."""
        wanted = sorted({int(run) for run in runs})

        def may_hold(info: RowGroupInfo) -> bool:
            if info.runs is None:
                return True
            first, last = info.runs
            return any(first <= run <= last for run in wanted)

        kept = tuple(
            info if may_hold(info) else RowGroupInfo(0, info.runs) for info in self.row_groups
        )
        return replace(self, row_groups=kept)


@dataclass(frozen=True)
class RowGroupTask:
    """The unit of work: these row groups of this file, judged in one go."""

    file_index: int
    source: Source
    row_groups: tuple[int, ...]
    n_ls: int
    runs: tuple[int, int] | None = None  # first and last run in them, if the footer says

    def describe(self) -> str:
        first, last = self.row_groups[0], self.row_groups[-1]
        groups = f"row group {first}" if first == last else f"row groups {first}-{last}"
        return f"{self.source}, {groups}"


def problem(source: Source, where: str, error: BaseException) -> str:
    """`where: problem`, without the file name the reader's message may already start with."""
    message = str(error)
    if message.startswith(f"{source}: "):
        message = message[len(f"{source}: ") :]
    elif where == str(source) and str(source) in message:
        return message  # e.g. "<file> is not a readable parquet file: ..."
    return f"{where}: {message}"


def plan_file(file_index: int, source: Source) -> FilePlan:
    """Read one footer; a file that cannot be opened becomes a failure naming it, not the era's
    end (the other files are still judged)."""
    from ..model.rings import file_geometry

    try:
        infos = tuple(row_group_infos(source))
        return FilePlan(file_index, source, infos, ring=file_geometry(source).ring)
    except (DataError, InputError) as error:
        return FilePlan(file_index, source, failure=problem(source, str(source), error))


def plan_runs(plan: FilePlan) -> list[int]:
    """Every run in a file: from the footer where a row group holds one run, else from the run
    column of the others (never a map). A file whose run column cannot be read gives the runs
    its footer names; its row groups then fail, named, when judged."""
    runs: set[int] = set()
    unsure: list[int] = []
    for index, info in enumerate(plan.row_groups):
        if info.runs is not None and info.runs[0] == info.runs[1]:
            runs.add(int(info.runs[0]))
        elif info.n_ls:
            unsure.append(index)
    try:
        runs.update(int(run) for run in row_group_runs(plan.source, unsure))
    except (DataError, InputError):
        named = (plan.row_groups[i].runs for i in unsure)
        runs.update(int(run) for pair in named if pair is not None for run in pair)
    return sorted(runs)


def plan_tasks(plans: Iterable[FilePlan], task_ls: int) -> list[RowGroupTask]:
    """Tasks of whole row groups of up to `task_ls` LS, in file and row-group order."""
    tasks = []
    for plan in plans:
        sizes = [info.n_ls for info in plan.row_groups]
        for groups in split_row_groups(sizes, task_ls):
            infos = [plan.row_groups[g] for g in groups]
            n_ls = sum(info.n_ls for info in infos)
            runs = None
            if all(info.runs is not None for info in infos):
                runs = (min(i.runs[0] for i in infos), max(i.runs[1] for i in infos))
            tasks.append(RowGroupTask(plan.file_index, plan.source, groups, n_ls, runs))
    return tasks
