"""`pixelring2nmf stats`: statistics per power group over one or several era folders.

Reads what `era` wrote (era/stats.py says what is counted and what is left out), and writes
`powergroups.csv`, `dead_groups.csv`, three figures (PNG, or PDF with --format pdf) and, with
--xlsx, every era's tables merged into `stats.xlsx`, Multi-Disk and Quarter rows filled.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .options import add_force

logger = logging.getLogger("pixelring2nmf.cli")
XLSX_NAME = "stats.xlsx"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "stats",
        help="per power group over era folders: counts by type, heatmap in the detector "
        "layout, histogram, pileup; known-dead groups left out and listed",
    )
    p.add_argument(
        "--era",
        type=Path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="output folder(s) of `era` (finished ones; an incomplete one is read with a warning)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument(
        "--format", choices=("png", "pdf"), default="png", help="figure format (default png)"
    )
    p.add_argument(
        "--xlsx",
        action="store_true",
        help=f"also write {XLSX_NAME}: the tables of every era, one sheet per kind with an Era "
        "column, Multi-Disk and Quarter rows filled",
    )
    p.add_argument(
        "--model",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="model file(s) whose dead groups to leave out (default: those era.json names)",
    )
    add_force(p, "into a non-empty --out folder")
    p.set_defaults(handler=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    """Read every era (all checked before anything is written), count, draw, write."""
    from ..era import stats
    from ..io.atomic import write_atomically
    from ..io.paths import output_folder
    from ..plots.stats_figures import save_stats_figures, stats_figures

    eras = stats.read_eras(args.era)
    geometry = _era_geometry(eras, args.model)
    out_dir = output_folder(args.out, force=args.force, what="--out folder")
    models = [str(m) for m in args.model] if args.model else _era_models(eras)
    model_dead = stats.model_dead_groups(models)
    table, dead = stats.powergroup_stats(eras, model_dead)
    good, anomalous = stats.pileup_samples(eras)
    written = [
        write_atomically(out_dir / stats.POWERGROUPS_NAME, lambda p: table.to_csv(p, index=False)),
        write_atomically(out_dir / stats.DEAD_GROUPS_NAME, lambda p: dead.to_csv(p, index=False)),
    ]
    labels = [era.label for era in eras]
    figures = stats_figures(table, dead, good, anomalous, labels, geometry)
    written += save_stats_figures(figures, out_dir, args.format)
    if args.xlsx:
        extra = {"Power group stats": table, "Dead groups": dead}
        merged = stats.merged_tables(eras)
        written.append(
            write_atomically(
                out_dir / XLSX_NAME, lambda p: stats.write_merged_xlsx(p, merged, extra)
            )
        )
    judged = table[table.Status.str.startswith("judged")]
    print(
        f"stats: {len(eras)} era(s), {len(good):,} DCS-good LS, "
        f"{int(judged.Anomalous_LS.sum()):,} anomalous group-LS in "
        f"{int((judged.Anomalous_LS > 0).sum())} of {len(judged)} judged groups; "
        f"known-dead groups: {', '.join(dict.fromkeys(dead.Powergroup)) or 'none'}; "
        f"{len(written)} file(s) written to {out_dir}"
    )
    return 0


def _era_geometry(eras, model_files):
    """The ring layout of the figures: the eras' ring (one for all; a joint era is drawn in Ring
    2's layout, the same 48 groups); a --model of another ring is refused (one line)."""
    from mlserver_model.geometry import RING2, ring_geometry
    from mlserver_model.joint import load_model

    from ..errors import DataError
    from ..model.rings import describe_model, model_rings, rings_text

    rings = {era.ring for era in eras}
    if len(rings) > 1:
        named = "; ".join(f"{era.path}: {era.ring}" for era in eras)
        raise DataError(
            f"--era: the folders are eras of different rings ({named}): count one ring at a time"
        )
    (ring,) = rings
    for path in model_files or ():
        model = load_model(path)
        if rings_text(model_rings(model)) != ring:
            raise DataError(
                f"--model: {describe_model(model, path)} does not judge the eras' ring "
                f"({ring}, era {eras[0].path}): give a {ring} model"
            )
    return ring_geometry(ring) if "+" not in ring else RING2


def _era_models(eras) -> list[str]:
    models: list[str] = []
    for era in eras:
        models += [m for m in era.models if m not in models]
    return models


# ---- plot --era DIR --each-ls --------------------------------------------------------------------


def add_each_ls(p: argparse.ArgumentParser) -> None:
    """`plot`'s options for one PNG per anomalous LS (the rest of `plot` is era_commands')."""
    from .options import positive_int

    p.add_argument(
        "--each-ls",
        action="store_true",
        help="with --era: one PNG per anomalous LS of the era's per-LS table into the folder "
        "--out (run<RUN>_ls<LS>.png), and index.csv; inputs, OMS and model as era.json lists "
        "them unless --parquet, --oms or --model are given",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --each-ls: worker processes (default: every core the process may use)",
    )


def run_each_ls(args: argparse.Namespace) -> int:
    """Check everything (era, inputs, --out) before drawing; draw; write the index; say it."""
    from ..era.executors import available_cores
    from ..errors import DataError, OptionError
    from ..io.oms import OmsLookup
    from ..io.paths import output_folder
    from ..plots import each_ls
    from .options import load_model

    if args.era is None:
        raise OptionError("--each-ls needs --era DIR (an output folder of `era`)")
    if args.run is not None or args.ls is not None or args.runs:
        raise OptionError("--each-ls draws every anomalous LS: give no --run, --ls or --runs")
    status = each_ls.check_era(args.era)
    if "+" in str(status.get("ring", "")):  # model/rings.py JOINT_RING_NAME
        raise OptionError(
            f"--each-ls draws the LS of a one-ring era; {args.era} is a joint ({status['ring']}) "
            "era: draw its LS with plot --parquet FILES --run R --ls L --model JOINT_MODEL"
        )
    sources, oms_files, models = each_ls.era_inputs(args.era, status)
    if args.parquet:
        from ..era.plan import parquet_inputs

        sources = [str(s) for s in parquet_inputs(args.parquet)]
    missing = [s for s in sources if "://" not in s and not Path(s).exists()]
    if not sources or missing:
        raise DataError(
            f"the parquet input(s) of era {args.era} "
            + (f"are gone ({', '.join(missing)})" if missing else "are not listed in era.json")
            + ": give them with --parquet"
        )
    model_arg = args.model  # one Path today; a list should --model take several files
    if isinstance(model_arg, list) and len(model_arg) == 1:
        model_arg = model_arg[0]
    if isinstance(model_arg, list):
        raise OptionError("--each-ls draws with one model, or with those era.json names")
    model_of_run = None
    if model_arg is None and len(models) > 1:  # each run with the model that judged it
        model_of_run = each_ls.model_of_each_run(args.era, models)
    elif model_arg is None:
        model_arg = Path(models[0]) if models else None
    oms_paths = args.oms or [Path(o) for o in oms_files]
    index = each_ls.anomalous_lumisections(args.era)
    out_dir = output_folder(args.out, force=args.force, what="--out folder")
    if model_of_run is not None:
        model = {m: load_model(Path(m)) for m in sorted(set(model_of_run.values()))}
    else:
        model = load_model(model_arg)
    oms = OmsLookup.read(oms_paths) if oms_paths else None
    tasks = each_ls.plan_tasks(index, out_dir, model_of_run=model_of_run)
    workers = args.workers or available_cores()
    outcome = each_ls.draw_each_ls(tasks, model, oms, sources, workers)
    rows = each_ls.write_index(out_dir / each_ls.INDEX_NAME, index, outcome.drawn)
    print(
        f"plot: {len(rows):,} of {len(index):,} anomalous LS drawn into {out_dir} "
        f"(index: {each_ls.INDEX_NAME}) on {min(workers, max(len(tasks), 1))} process(es)"
        + (f"; INTERRUPTED by {outcome.interrupted}" if outcome.interrupted else "")
    )
    for problem in outcome.problems:
        print(f"pixelring2nmf plot: error: {problem}", file=sys.stderr)
    if outcome.interrupted:
        return 130
    return 2 if outcome.problems else 0
