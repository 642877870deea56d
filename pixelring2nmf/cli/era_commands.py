"""Commands over whole eras: `era` (the model over an era, into the experts' tables) and `plot`.

`era` promises that its folder never lies (era/output.py): era.json says `running` from the
first moment, and every way the command can end (done, nothing judged, an unreadable input,
Ctrl-C, SIGTERM, a failed write, a bug) leaves an era.json that says how it ended and why,
with every table that could be written (an empty result: every table with its header).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from .options import (
    add_force,
    add_models,
    add_no_progress,
    add_oms,
    fraction,
    load_models,
    non_negative_int,
    positive_int,
)
from .ring_inputs import record_joint_counts, ring_inputs, table_ring
from .stats_commands import add_each_ls, run_each_ls

logger = logging.getLogger("pixelring2nmf.cli")
NO_OMS_WARNING = "No OMS data given (--oms): the DCS filter was not applied, every LS may flag"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "era",
        help="run the model over whole eras (streamed) and write the experts' anomaly tables",
    )
    p.add_argument(
        "--parquet",
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR_OR_URL",
        help="DIALS parquet file(s), directories of them, or URLs read through fsspec "
        "(e.g. root://eosuser.cern.ch//eos/...; kept as given, opened where the work runs)",
    )
    add_oms(p)
    add_models(p)
    p.add_argument(
        "--exclude-runs",
        nargs="+",
        default=None,
        metavar="FIRST:LAST",
        help="run ranges to leave out (HV bias scans, machine development): FIRST:LAST, RUN or "
        "FIRST: (listed in era.json)",
    )
    p.add_argument(
        "--skip-uncovered",
        action="store_true",
        help="judge the runs a --model covers and list the others in era.json, instead of "
        "refusing the era",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument("--xlsx", action="store_true", help="also write era.xlsx, a sheet per table")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="worker processes on this machine (default: every core it may use; 1: judge in "
        "this process)",
    )
    where.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS|local:N",
        help="judge on a Dask cluster: the address of a running scheduler (tcp://host:8786, "
        "tls://...), or local:N for N worker processes on this machine; the same files come out",
    )
    p.add_argument(
        "--task-ls",
        type=positive_int,
        default=None,
        metavar="N",
        help="LS per task, in whole row groups (default: 1000; with --dask, about 4 tasks "
        "per worker connected at the start, 1000 to 5000)",
    )
    add_force(p, "into a non-empty --out folder")
    p.add_argument(
        "--persistent-fraction",
        type=fraction,
        default=0.5,
        help="a group anomalous in more than this share of a run's DCS-good LS is reported "
        "once as persistent (default 0.5)",
    )
    p.add_argument(
        "--persistent-min-ls",
        type=non_negative_int,
        default=50,
        help="runs with fewer DCS-good LS have no persistent groups (default 50)",
    )
    add_no_progress(p)
    p.set_defaults(handler=run_era)

    p = commands.add_parser(
        "plot",
        help="plot one LS (occupancy, reconstruction, significance, bad ROCs) or an era's runs",
    )
    p.add_argument("--parquet", type=Path, nargs="+", default=None, help="DIALS parquet(s)/dirs")
    p.add_argument("--run", type=positive_int, default=None, help="run of the LS to plot")
    p.add_argument("--ls", type=positive_int, default=None, help="lumisection to plot")
    add_oms(p)
    add_models(p)
    p.add_argument("--era", type=Path, default=None, help="an `era` output directory")
    p.add_argument("--runs", type=positive_int, nargs="+", default=None, help="with --era: runs")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="figure file: .png (with --era, one file per run: <name>_<run>.png) or .pdf "
        "(one page per run)",
    )
    add_force(p, "existing figure files")
    add_each_ls(p)
    p.set_defaults(handler=run_plot)


# ---- era ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _executor(args: argparse.Namespace, model, oms) -> Iterator:
    """Where the tasks run: a Dask cluster, worker processes here, or this process alone."""
    from ..era.executors import InProcessExecutor, ProcessExecutor, available_cores
    from ..errors import UserError

    if args.dask:
        try:
            from ..era.dask_executor import DaskExecutor, dask_client
        except ImportError as error:
            raise UserError(
                f"--dask needs dask.distributed ({error}): pip install 'pixelring2nmf[dask]'"
            ) from None
        with dask_client(args.dask) as client, DaskExecutor(client, model, oms) as executor:
            yield executor
        return
    workers = args.workers or available_cores()
    if workers == 1:
        yield InProcessExecutor(model, oms)
        return
    with ProcessExecutor(model, oms, workers) as executor:
        yield executor


def run_era(args: argparse.Namespace) -> int:
    """Read, judge (here, in worker processes or on a Dask cluster), tabulate, write.

    Exit code 0 when every LS was judged and every file written; 2 when an input could not be
    used, nothing was judged or a file could not be written (all said); 130 when interrupted
    (what was judged is written); a bug keeps what was judged, then shows its traceback.
    """
    from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH

    from ..era.output import EraFolder, EraStatus
    from ..io.paths import output_folder

    out_dir = output_folder(args.out, force=args.force, what="--out folder")  # before the work
    status = EraStatus(model=", ".join(str(m) for m in args.model or [DEFAULT_MODEL_PATH]))
    folder = EraFolder(out_dir, status)
    folder.begin()
    try:
        era = _judge(args, status)
    except BaseException as stop:  # nothing judged: era.json says why, every table its header
        status.state, status.reason = _why_stopped(stop)
        _write_empty(folder, args.xlsx)
        raise
    return _write_era(folder, era, args)


def _judge(args: argparse.Namespace, status):
    """Inputs, OMS data and model, then the engine on the chosen executor: the EraRun."""
    from ..era.engine import analyse_era
    from ..era.periods import record_models
    from ..era.plan import parquet_inputs
    from ..io.oms import OmsLookup

    sources = parquet_inputs(args.parquet)
    status.files = [str(source) for source in sources]
    oms = OmsLookup.read(args.oms) if args.oms else None
    _record_oms_warnings(status, oms)
    models = load_models(args.model, args.exclude_runs, args.skip_uncovered)
    record_models(status, models, logger)
    model, check_plan = ring_inputs(models, sources, status)
    with _executor(args, model, oms) as executor:
        era = analyse_era(
            sources,
            executor,
            progress=not args.no_progress,
            task_ls=args.task_ls,
            report=lambda message: logger.error("era: skipped %s", message),
            periods=models,
            check_plan=check_plan,
        )
    record_models(status, models, logger, era)
    if oms is not None:
        _record_coverage(status, oms, era)
    return era


def _why_stopped(stop: BaseException) -> tuple[str, str]:
    """era.json's state and reason for a run that ended before or while writing."""
    from ..era.output import FAILED, INTERRUPTED
    from ..errors import user_error_types

    if isinstance(stop, KeyboardInterrupt):
        return INTERRUPTED, f"interrupted by {_how(stop)}"
    if isinstance(stop, user_error_types()):
        return FAILED, str(stop)
    return FAILED, f"internal error: {type(stop).__name__}: {stop}"


def _how(stop: BaseException) -> str:
    return stop.args[0] if stop.args else "Ctrl-C"


def _record_oms_warnings(status, oms) -> None:
    """Say now, and record, what the OMS data lack: no file at all, no DCS flag, bad values,
    and so how far golden.json and the luminosity columns can be trusted."""
    from ..era.certification import certification_warnings

    if oms is None:
        status.oms = {"dcs_filter": "not applied: no --oms given"}
        warnings = [NO_OMS_WARNING]
    else:
        applied = "applied" if oms.has_dcs_flags else "not applied: no DCS flag column"
        status.oms = {"files": oms.sources, "dcs_filter": applied}
        warnings = list(oms.warnings)
    entries, certification = certification_warnings(
        oms is not None,
        oms is not None and oms.has_dcs_flags,
        oms is not None and oms.has_recorded_lumi,
    )
    status.oms.update(entries)
    warnings += certification
    for warning in warnings:
        logger.warning(warning)
    status.warnings += warnings


def _record_coverage(status, oms, era) -> None:
    """Which of the judged LS the OMS data describe, per run; a warning when not all."""
    results = era.results
    coverage = oms.coverage(results.run.to_numpy(), results.ls.to_numpy())
    status.oms.update(coverage.as_dict())
    status.oms["covered_ls_per_run"] = {str(r): n for r, n in coverage.covered_per_run.items()}
    warning = coverage.warning(f"OMS file(s) {', '.join(oms.sources)}")
    if warning:
        logger.warning(warning)
        status.warnings.append(warning)


def _write_empty(folder, xlsx: bool) -> None:
    """Every table with its header, and era.json saying why nothing was judged."""
    import pandas as pd

    from ..era.merge import EraRun
    from ..era.tables import era_tables
    from ..io.results import MODEL_COLUMN, empty_results

    results = empty_results().assign(**{MODEL_COLUMN: pd.Series(dtype=object)})
    empty = EraRun(results=results, files=[])
    with contextlib.suppress(Exception):  # the reason matters more than the empty tables
        folder.write_results(empty, era_tables(empty.results), xlsx=xlsx)
    folder.write_status()


def _write_era(folder, era, args: argparse.Namespace) -> int:
    from ..era.output import FAILED, FINISHED, INCOMPLETE, INTERRUPTED, era_details, summary_line
    from ..era.tables import PersistenceRule, era_tables
    from ..errors import OutputError

    status = folder.status
    rule = PersistenceRule(args.persistent_fraction, args.persistent_min_ls)
    tables = era_tables(era.results, rule, table_ring(status))
    status.problems = list(era.failures)
    status.details = era_details(era, tables)
    record_joint_counts(status, era)
    try:
        folder.write_results(era, tables, xlsx=args.xlsx)
    except BaseException as stop:  # a full disk, a second Ctrl-C, a bug: say so, keep the rest
        status.state, status.reason = _why_stopped(stop)
        with contextlib.suppress(OutputError):
            folder.write_status()
        if isinstance(stop, OutputError):
            print(summary_line(era, tables, folder.out_dir))
        raise
    if era.error is not None:
        status.state = FAILED
        status.reason = f"internal error: {type(era.error).__name__}: {era.error}"
    elif era.interrupted:
        status.state, status.reason = INTERRUPTED, f"interrupted by {era.interrupted}"
    elif not era.complete:
        status.state = INCOMPLETE
        status.reason = _incomplete_reason(era)
    else:
        status.state = FINISHED
    folder.write_status()
    print(summary_line(era, tables, folder.out_dir))
    for problem in era.failures:
        print(f"pixelring2nmf era: error: {problem}", file=sys.stderr)
    if era.error is not None:
        raise era.error
    if era.interrupted:
        return 130
    if not len(era.results) and not era.failures:
        print("pixelring2nmf era: error: no LS to judge in the input", file=sys.stderr)
    return 0 if era.complete else 2


def _incomplete_reason(era) -> str:
    """The first problem, and how many more: what a user reads first in era.json."""
    if not era.failures:
        return "no LS to judge in the input"
    nothing = "nothing judged: " if not len(era.results) else ""
    more = f" (and {len(era.failures) - 1} more problem(s))" if len(era.failures) > 1 else ""
    return f"{nothing}{era.failures[0]}{more}"


# ---- plot --------------------------------------------------------------------------------------


def run_plot(args: argparse.Namespace) -> int:
    """Exactly one of --era DIR or --parquet ... --run R --ls L."""
    from ..errors import OptionError
    from ..io.paths import output_file
    from ..plots.draw import figure_paths, save_figures

    if args.each_ls:
        return run_each_ls(args)
    if args.era is not None:
        if args.run is not None or args.ls is not None:
            raise OptionError("give either --era DIR or --run R --ls L, not both")
        from ..plots.figures import era_plot, era_results

        results, runs = era_results(args.era, args.runs)
        for target in figure_paths(args.out, runs):  # every file checked before drawing
            output_file(target, force=args.force, what="figure")
        written = save_figures(era_plot(args.era, results, runs), args.out, labels=runs)
    else:
        if args.run is None or args.ls is None or not args.parquet:
            raise OptionError("give --era DIR, or --parquet FILE --run R --ls L")
        written = _plot_lumisection(args, output_file(args.out, force=args.force, what="--out"))
    for path in written:
        print(f"Figure written to {path}")
    return 0


def _model_of_run(args: argparse.Namespace):
    """The one model (of --model FILE...) whose period covers --run; refused otherwise."""
    models = load_models(args.model)
    if models.single is not None:
        return models.single
    models.check([args.run], era_options=False)  # covered by none or two: an OptionError
    chosen = models.models[int(models.index_of([args.run])[0])]
    logger.info("plot: run %d judged by %s", args.run, chosen.describe())
    return chosen.model


def _plot_lumisection(args: argparse.Namespace, out: Path) -> list[Path]:
    from ..era.plan import parquet_inputs
    from ..io.oms import OmsLookup
    from ..plots.draw import save_figures
    from ..plots.figures import lumisection_plot

    sources = parquet_inputs(args.parquet)
    oms = OmsLookup.read(args.oms) if args.oms else None
    for warning in oms.warnings if oms is not None else ():
        logger.warning(warning)
    model = _model_of_run(args)
    _check_plot_rings(sources, model, args.model)
    figure, note = lumisection_plot(sources, args.run, args.ls, model, oms)
    if oms is not None and not note.known:
        logger.warning(
            "no OMS data for run %d, LS %d in %s: its DCS state is unknown (the LS could not "
            "be flagged)",
            args.run,
            args.ls,
            ", ".join(oms.sources),
        )
    return save_figures([figure], out)


def _check_plot_rings(sources, model, paths) -> None:
    """Every file of the LS's search against the model's ring(s): one line, before reading."""
    from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH

    from ..model.rings import check_sources, describe_model

    named = ", ".join(str(p) for p in paths or [DEFAULT_MODEL_PATH])
    check_sources(sources, model, describe_model(model, named))
