"""`compare`: an era folder of ours against the original's spreadsheets, range by range.

What "the same anomaly" means is defined once, in validation/compare.py; this module reads
the options, refuses an existing --out without --force before any reading, writes every table
atomically and prints the one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
from pathlib import Path

from .options import add_force

logger = logging.getLogger("pixelring2nmf.cli")
COMPARE_CSV = "compare.csv"
RUNS_CSV = "compare_runs.csv"
TYPES_CSV = "compare_types.csv"
NOT_COMPARED_CSV = "not_compared.csv"
COMPARE_XLSX = "compare.xlsx"
COMPARE_JSON = "compare.json"
XLSX_SHEETS = {"compare": "Compare", "runs": "Runs", "types": "Types"}


def run_range(text: str) -> tuple[int, int | None]:
    """'FIRST:LAST', 'FIRST:' (open) or 'RUN' -> (first, last or None)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d*)\s*)?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST, FIRST: or RUN, got {text!r}")
    first = int(match.group(1))
    if match.group(2) is None:
        return first, first
    last = int(match.group(2)) if match.group(2) else None
    if last is not None and last < first:
        raise argparse.ArgumentTypeError(f"run range {text!r} ends before it starts")
    return first, last


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compare",
        help="compare an era folder with the original's spreadsheets, range by range",
    )
    p.add_argument("--era", type=Path, required=True, help="a folder written by `era`")
    p.add_argument(
        "--original",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="the original's spreadsheets (.xlsx or .csv), any of its three layouts, every "
        "sheet read; several files at once (e.g. a whole year)",
    )
    p.add_argument(
        "--runs",
        type=run_range,
        nargs="+",
        default=None,
        metavar="FIRST:LAST",
        help="the runs the original judged (FIRST: for open; default: the runs its files "
        "name). A run in these ranges where the original lists nothing had no anomaly there",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--xlsx", action="store_true", help="also write compare.xlsx (three sheets)")
    add_force(p, "into a non-empty --out folder")
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from ..io.atomic import write_atomically, write_text
    from ..io.original_sheets import read_original
    from ..io.paths import output_folder
    from ..validation.compare import compare, read_era

    out_dir = output_folder(args.out, force=args.force, what="--out folder")
    era = read_era(args.era)
    if era.state != "finished":
        logger.warning(
            "era %s is %s (era.json): compared with what it judged; the rest of its input "
            "counts as not in the era",
            args.era,
            era.state,
        )
    original = read_original(args.original, era.ring)  # the era's ring's rows
    result = compare(original, era, args.runs)
    tables = {
        COMPARE_CSV: result.table,
        RUNS_CSV: result.runs,
        TYPES_CSV: result.types,
        NOT_COMPARED_CSV: result.not_compared,
    }
    for name, table in tables.items():
        write_atomically(out_dir / name, lambda p, t=table: t.to_csv(p, index=False))
    if args.xlsx:
        write_atomically(out_dir / COMPARE_XLSX, lambda p: _write_xlsx(p, result))
    else:  # an earlier --xlsx run's workbook would no longer match the CSVs
        with contextlib.suppress(FileNotFoundError):
            (out_dir / COMPARE_XLSX).unlink()
    summary = {
        "era": str(args.era),
        "era_state": era.state,
        "original": [str(p) for p in args.original],
        "runs": [f"{a}:{'' if b is None else b}" for a, b in args.runs] if args.runs else None,
        "sheets": original.sheets,
        "empty_sheets": original.empty_sheets,
        "counts": result.counts,
        "summary": result.summary_line(),
    }
    write_text(out_dir / COMPARE_JSON, json.dumps(summary, indent=2) + "\n")
    print(f"{result.summary_line()}; written to {out_dir}")
    return 0


def _write_xlsx(path: Path, result) -> None:
    import pandas as pd

    from ..io.workbook import write_readable_sheet

    sheets = {"compare": result.table, "runs": result.runs, "types": result.types}
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for key, table in sheets.items():
            name = XLSX_SHEETS[key]
            write_readable_sheet(writer, table, name)
