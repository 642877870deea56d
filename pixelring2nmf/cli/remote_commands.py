"""Commands that talk to CERN services: `fetch-oms`, `fetch-dials`, `dials-flags`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import (
    add_dials_connection,
    add_force,
    add_model,
    add_no_progress,
    add_oms,
    non_negative_float,
    positive_int,
)

logger = logging.getLogger("pixelring2nmf.cli")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "fetch-oms", help="download OMS lumisections of runs (needs credentials)"
    )
    p.add_argument("--runs", type=positive_int, nargs="+", required=True, help="run numbers")
    p.add_argument("--out", type=Path, required=True, help="OMS JSON file to write")
    add_force(p)
    p.add_argument(
        "--via",
        choices=("oms", "dials"),
        default="oms",
        help="oms: the OMS API with an OMS application (default); dials: DIALS's OMS proxy "
        "with DIALS credentials",
    )
    add_dials_connection(p)
    p.set_defaults(handler=run_fetch_oms)

    p = commands.add_parser(
        "fetch-dials",
        help="download the Ring 2 (or --ring 1) ME of runs from DIALS into a parquet (resumable)",
    )
    p.add_argument("--dataset", required=True, help="dataset regex, e.g. '/ZeroBias/Run2025C.*'")
    runs = p.add_mutually_exclusive_group(required=True)
    runs.add_argument("--runs", type=positive_int, nargs="+", help="run numbers")
    runs.add_argument(
        "--run-range",
        type=positive_int,
        nargs=2,
        metavar=("FIRST", "LAST"),
        help="all runs from FIRST to LAST (one query)",
    )
    p.add_argument("--out", type=Path, required=True, help="parquet file to write")
    add_force(p, "(download again over) an existing --out")
    p.add_argument(
        "--ring",
        type=int,
        choices=(1, 2),
        default=2,
        help="which ring's ME to download: 2 (default) or 1; one file holds one ring",
    )
    p.add_argument("--page-size", type=positive_int, default=100, help="LS per page (100)")
    p.add_argument("--attempts", type=positive_int, default=4, help="tries per page (4)")
    p.add_argument(
        "--retry-wait", type=non_negative_float, default=5.0, help="seconds before the 2nd try"
    )
    add_no_progress(p)
    add_dials_connection(p)
    p.set_defaults(handler=run_fetch_dials)

    p = commands.add_parser(
        "dials-flags",
        help="what a registered model flagged in DIALS, LS by LS against a local prediction",
    )
    p.add_argument("--model-id", type=positive_int, required=True, help="DIALS id of the model")
    p.add_argument("--runs", type=positive_int, nargs="+", required=True, help="run numbers")
    p.add_argument(
        "--parquet",
        type=Path,
        nargs="+",
        required=True,
        help="the same data DIALS judged (from fetch-dials)",
    )
    add_oms(p)
    add_model(p)
    p.add_argument("--out", type=Path, default=None, help="CSV of the LS flagged by either")
    add_force(p)
    add_dials_connection(p)
    p.set_defaults(handler=run_dials_flags)


def run_fetch_oms(args: argparse.Namespace) -> int:
    """The OMS JSON of runs, through the OMS API (an OMS application's credentials) or DIALS's
    OMS proxy (DIALS credentials); either way the same file comes out."""
    from mlserver_model.omstools import OMS_COLUMNS

    from ..io.oms import oms_from_lumisections
    from ..io.paths import output_file
    from ..remote.oms_api import fetch_lumisections, write_oms_json

    output_file(args.out, force=args.force, what="--out")  # before the download
    if args.via == "dials":
        from ..remote.dials import connect, oms_lumisections

        rows = oms_lumisections(connect(args.base_url, args.workspace), args.runs)
        columns = oms_from_lumisections(rows) if rows else {name: [] for name in OMS_COLUMNS}
        source = "DIALS OMS proxy"
    else:
        columns = fetch_lumisections(args.runs)
        source = "OMS"
    write_oms_json(columns, args.out, runs=args.runs, source=source)
    return 0


def run_fetch_dials(args: argparse.Namespace) -> int:
    """`fetch-dials --dataset REGEX (--runs R... | --run-range A B) --out FILE.parquet`."""
    import pyarrow.parquet as pq

    from mlserver_model.geometry import ring_geometry

    from ..io.paths import output_file
    from ..remote.dials import connect, fetch_h2d, h2d_queries

    output_file(args.out, force=args.force, what="--out")  # a finished download is kept
    me = ring_geometry(args.ring).me
    queries = h2d_queries(
        args.dataset,
        args.runs,
        tuple(args.run_range) if args.run_range else None,
        args.page_size,
        me,
    )
    dials = connect(args.base_url, args.workspace)
    state = fetch_h2d(
        dials,
        queries,
        Path(args.out),
        attempts=args.attempts,
        retry_wait_s=args.retry_wait,
        progress=not args.no_progress,
    )
    table = pq.read_table(args.out, columns=["dataset", "run_number"])
    datasets = sorted(set(table.column("dataset").to_pylist()))
    n_runs = len(set(table.column("run_number").to_pylist()))
    print(
        f"fetch-dials: {table.num_rows} LS of {n_runs} run(s) in {state.pages} page(s) "
        f"written to {args.out}"
    )
    if len(datasets) > 1:
        logger.warning(
            "fetch-dials: the regex matched %d datasets %s: an LS may appear once per dataset; "
            "narrow --dataset before running `era`",
            len(datasets),
            datasets,
        )
    if table.num_rows == 0:
        logger.warning("fetch-dials: DIALS had no LS of %s for this request", me)
    return 0


def run_dials_flags(args: argparse.Namespace) -> int:
    """What model N flagged in DIALS, LS by LS against a local prediction of the same data.

    The local prediction is the era engine's (only the row groups that may hold the runs are
    read), with its duplicate policy: a repeated LS is judged from its first copy, said, and
    the command ends with exit code 2.
    """
    import pyarrow.parquet as pq

    from ..era.engine import analyse_era
    from ..era.executors import InProcessExecutor
    from ..era.plan import parquet_inputs
    from ..errors import DataError
    from ..io.atomic import write_atomically
    from ..io.oms import OmsLookup
    from ..io.paths import output_file
    from ..remote.dials import compare_flags, connect, dials_flags
    from .options import load_model

    if args.out:
        output_file(args.out, force=args.force, what="--out")  # before the work
    sources = parquet_inputs(args.parquet)
    runs = list(dict.fromkeys(args.runs))
    oms = OmsLookup.read(args.oms) if args.oms else None
    executor = InProcessExecutor(load_model(args.model), oms)
    era = analyse_era(sources, executor, progress=False, runs=runs, report=logger.error)
    if era.error is not None:
        raise era.error
    if era.interrupted:
        raise KeyboardInterrupt(era.interrupted)
    local = era.results[era.results.run.isin(runs)].reset_index(drop=True)
    missing_runs = sorted(set(runs) - set(local.run.unique().tolist()))
    if missing_runs:
        raise DataError(
            f"run(s) {missing_runs} are not in {', '.join(map(str, sources))}: fetch them first "
            "with `pixelring2nmf fetch-dials`"
        )
    dataset_ids = sorted(
        {
            int(d)
            for p in sources
            for d in pq.read_table(p, columns=["dataset_id"]).column(0).to_pylist()
        }
    )
    dials = connect(args.base_url, args.workspace)
    comparison = compare_flags(dials_flags(dials, args.model_id, runs, dataset_ids), local)
    counts = comparison.status.value_counts()
    if args.out:
        write_atomically(args.out, lambda partial: comparison.to_csv(partial, index=False))
    print(
        f"dials-flags: model {args.model_id}, {len(local)} LS of {len(runs)} run(s): "
        f"agree {counts.get('agree', 0)}, only DIALS {counts.get('only DIALS', 0)}, "
        f"only local {counts.get('only local', 0)}"
        + (f"; per-LS comparison written to {args.out}" if args.out else "")
    )
    differing = comparison[comparison.status != "agree"]
    if len(differing):
        print(differing.to_string(index=False, max_rows=50))
    for problem in era.failures:
        logger.warning("dials-flags: %s", problem)
    return 2 if era.failures or era.interrupted else 0
