"""Commands that make data: `simulate` (an era with its truth) and `make-test-data` (a request)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import add_force, add_oms, non_negative_float, non_negative_int, positive_int

logger = logging.getLogger("pixelring2nmf.cli")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "simulate",
        help="write a realistic DIALS parquet, OMS JSON and truth table of simulated runs",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty)")
    add_force(p, "into a non-empty --out folder")
    p.add_argument("--runs", type=positive_int, default=5, help="number of runs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--ls-per-run", type=positive_int, default=None, help="LS per run (default 400-1200)"
    )
    p.add_argument("--first-run", type=positive_int, default=390000, help="first run number")
    p.add_argument(
        "--anomaly-rate",
        type=non_negative_float,
        default=None,
        help="injected anomalies per LS (default: a few per run, of every kind)",
    )
    p.add_argument("--clean", action="store_true", help="inject no anomaly (training data)")
    p.add_argument(
        "--detector-seed",
        type=int,
        default=2024,
        help="seed of the simulated detector (dead ROCs, gains); keep the default so that "
        "every simulation shares the detector of the shipped model (default 2024)",
    )
    p.add_argument(
        "--dead-groups",
        nargs="+",
        default=(),
        metavar="GROUP",
        help="power groups dead in these runs on top of the detector's own (e.g. "
        "FPix_BpI_D3_ROG1): a later period of the same detector, for `train --valid-runs`",
    )
    p.add_argument("--era", default="Run2025Z", help="era used in the file name (default Run2025Z)")
    p.add_argument(
        "--scenario",
        choices=("era", "demo"),
        default="era",
        help="era: realistic runs with random anomalies (default); demo: one 750-LS run with "
        "exactly one Multi-Disk LS (a ROG dead on 3 disks) and a 3-LS Single-Disk anomaly",
    )
    p.add_argument(
        "--ring",
        choices=("1", "2", "both"),
        default="2",
        help="which ring's ME to simulate: 2 (default), 1, or both: the two MEs of the same LS "
        "with the same power-group outages in both rings, one OMS JSON and one truth.csv "
        "(its last column `rings` says which ring(s) each anomaly silences)",
    )
    p.add_argument(
        "--int-lists",
        action="store_true",
        help="write `data` as list<list<int32>> instead of list<list<double>> (the layout "
        "files saved from cmsdials have)",
    )
    p.set_defaults(handler=run_simulate)

    p = commands.add_parser("make-test-data", help="write test_data.pkl for test_predictions.py")
    p.add_argument("--parquet", type=Path, required=True, help="DIALS parquet file")
    add_oms(p, several=False)
    p.add_argument("--batch-size", type=positive_int, default=750, help="LS per batch (750)")
    p.add_argument("--batch-id", type=non_negative_int, default=0, help="which batch (0)")
    p.add_argument(
        "--out", type=Path, default=Path("test_data.pkl"), help="pickle to write (test_data.pkl)"
    )
    add_force(p)
    p.set_defaults(handler=run_make_test_data)


def run_simulate(args: argparse.Namespace) -> int:
    """Write the three files and say what was injected."""
    from ..io.parquet import DEFAULT_VALUE_TYPE
    from ..io.paths import output_folder
    from ..sim.simulate import simulate

    paths = simulate(
        output_folder(args.out, force=args.force, what="--out folder"),
        runs=args.runs,
        seed=args.seed,
        ls_per_run=args.ls_per_run,
        first_run=args.first_run,
        anomaly_rate=args.anomaly_rate,
        clean=args.clean,
        era=args.era,
        scenario=args.scenario,
        detector_seed=args.detector_seed,
        dead_groups=args.dead_groups,
        value_type="int32" if args.int_lists else DEFAULT_VALUE_TYPE,
        ring=args.ring,
    )
    for key, path in paths.items():
        logger.info("wrote %s: %s", key, path)
    return 0


def run_make_test_data(args: argparse.Namespace) -> int:
    """One batch of a parquet as the original `test_data.pkl`, for `test_predictions.py`."""
    import numpy as np

    from ..io.paths import output_file
    from ..io.testdata import make_test_data, write_test_data

    out = output_file(args.out, force=args.force, what="--out")  # before the work
    batch = make_test_data(
        args.parquet, args.oms, batch_size=args.batch_size, batch_id=args.batch_id
    )
    write_test_data(batch, out)
    runs = np.unique(batch["run_number"]).tolist()
    extra = sorted(set(batch) - {"Ring1", "Ring2", "run_number", "ls_number"})
    print(
        f"Wrote {out}: {len(batch['run_number'])} LS of run(s) {runs}; "
        f"OMS columns: {', '.join(extra) if extra else 'none'}"
    )
    return 0
