"""Commands of the model itself: `train` a model file, `predict` the LS of a parquet file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import add_force, add_models, add_oms, load_models, positive_int

logger = logging.getLogger("pixelring2nmf.cli")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train the NMF on good LS of DIALS parquet files")
    p.add_argument("--parquet", type=Path, nargs="+", required=True, help="DIALS parquet file(s)")
    add_oms(p, several=False)
    p.add_argument(
        "--exclude",
        type=Path,
        default=None,
        help="CSV of LS to leave out of training: run,ls_first,ls_last ranges, or run,ls rows "
        "(the simulator's truth.csv works as it is)",
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write (.joblib)")
    add_force(p, "an existing --out (e.g. the shipped model)")
    p.add_argument("--components", type=positive_int, default=5, help="NMF components (5)")
    p.add_argument("--alpha-h", type=float, default=0.1, help="L2 regularisation of H (0.1)")
    p.add_argument(
        "--passes", type=positive_int, default=300, help="NMF solver passes over the data (300)"
    )
    p.add_argument("--max-ls", type=positive_int, default=None, help="use at most this many LS")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--valid-runs",
        default=None,
        metavar="FIRST:LAST",
        help="the period (runs) the model is for, stored in the file: FIRST:LAST, or FIRST: "
        "for an open period; `era`/`predict`/`plot --model a b` choose a model per run by it, "
        "`build` writes it as the template's MinRunNumber/MaxRunNumber (default: every run)",
    )
    p.set_defaults(handler=run_train)

    p = commands.add_parser("predict", help="flag the LS of a DIALS parquet file")
    p.add_argument("--parquet", type=Path, required=True, help="DIALS parquet file")
    add_oms(p, several=False)
    add_models(p)
    p.add_argument("--out", type=Path, default=None, help="CSV of per-LS results")
    add_force(p)
    p.set_defaults(handler=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..io.paths import output_file
    from ..model.periods import parse_run_range
    from ..model.train import fit_report, load_good_maps, train_model

    valid = parse_run_range(args.valid_runs, "--valid-runs") if args.valid_runs else None
    out = output_file(args.out, force=args.force, what="model file --out")  # before the work
    maps, provenance = load_good_maps(args.parquet, args.oms, args.exclude, args.max_ls, args.seed)
    print(
        f"Training on {len(maps)} good LS ({provenance['n_ls_good']} good of "
        f"{provenance['n_ls_read']} read, {len(provenance['runs'])} runs)"
    )
    with tqdm(total=args.passes, desc="NMF passes", unit="pass") as bar:
        model = train_model(
            maps,
            n_components=args.components,
            alpha_H=args.alpha_h,
            passes=args.passes,
            seed=args.seed,
            provenance=provenance,
            on_pass=lambda _: bar.update(1),
            valid_runs=None if valid is None else (valid.first, valid.last),
        )
    try:
        path = model.save(out)
    except OSError as error:  # the runtime writes its own file (it cannot use the toolkit)
        from ..errors import OutputError

        raise OutputError(f"cannot write the model file {out}: {error.strerror}") from error
    print("\n".join(fit_report(model, maps)))
    print(f"Model written to {path}, valid for {valid.describe() if valid else 'every run'}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Flag the LS of one file the way DIALS would; the three [INFO] lines, then the flagged LS.

    A repeated LS is judged from its first copy, said, and the command ends with exit code 2.
    """
    from ..io.atomic import write_atomically
    from ..io.oms import check_oms_frame, checked_oms_columns, read_oms_json
    from ..io.parquet import read_dials_parquet
    from ..io.paths import output_file
    from ..io.results import results_table

    out = output_file(args.out, force=args.force, what="--out") if args.out else None
    models = load_models(args.model)
    oms_table = read_oms_json(args.oms) if args.oms else None  # a bad file fails before the maps
    for warning in check_oms_frame(oms_table, str(args.oms)) if oms_table is not None else ():
        logger.warning(warning)
    data = read_dials_parquet(args.parquet)
    if data.n_repeated:
        logger.warning(data.repeated_message(args.parquet))
    oms = checked_oms_columns(oms_table, data.run, data.ls, str(args.oms))
    if models.single is not None:
        result = models.single.predict(data.maps, oms)
        for line in result.flagging_lines():
            print(line)
        table = results_table(data.run, data.ls, result)
    else:
        table = _predict_by_period(models, data, oms)
    if out:
        write_atomically(out, lambda partial: table.to_csv(partial, index=False))
        print(f"Per-LS results written to {out}")
    flagged = table[table.flag]
    if len(flagged):
        print(flagged[["run", "ls", "metric", "type", "groups"]].to_string(index=False))
    return 2 if data.n_repeated else 0


def _predict_by_period(models, data, oms):
    """Several --model files: every run checked first (a run covered by none or by two is
    refused before any LS is judged), then each model's runs judged by it alone, its three
    [INFO] lines under a line naming it; the CSV gains the column `model`."""
    import numpy as np
    import pandas as pd

    from ..io.results import MODEL_COLUMN, results_table
    from ..model.periods import run_ranges_text

    models.check(data.run, era_options=False)
    index = models.index_of(data.run)
    tables = []
    for i in np.unique(index):
        rows = np.flatnonzero(index == i)
        chosen = models.models[int(i)]
        columns = None if oms is None else {name: values[rows] for name, values in oms.items()}
        result = chosen.model.predict(data.maps[rows], columns)
        print(f"Model {chosen.describe()}: run(s) {run_ranges_text(data.run[rows])}")
        for line in result.flagging_lines():
            print(line)
        table = results_table(data.run[rows], data.ls[rows], result)
        table[MODEL_COLUMN] = chosen.path
        tables.append(table.set_index(rows))
    return pd.concat(tables).sort_index().reset_index(drop=True)
