"""`pixelring2nmf stats`: statistics per power group over one or several era folders.

Reads what `era` wrote (era/stats.py says what is counted and what is left out), and writes
`powergroups.csv`, `dead_groups.csv`, three figures (PNG, or PDF with --format pdf) and, with
--xlsx, every era's tables merged into `stats.xlsx`, Multi-Disk and Quarter rows filled.
"""

from __future__ import annotations

import argparse
import logging
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
    figures = stats_figures(table, dead, good, anomalous, labels)
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


def _era_models(eras) -> list[str]:
    models: list[str] = []
    for era in eras:
        models += [m for m in era.models if m not in models]
    return models
