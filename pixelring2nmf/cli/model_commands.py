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
    p.add_argument(
        "--joint",
        action="store_true",
        help="one model of both rings (the whole forward pixel): give Ring 1 and Ring 2 files "
        "(in any order), each ring is trained on its own files and the file holds both",
    )
    p.set_defaults(handler=run_train)

    p = commands.add_parser("predict", help="flag the LS of a DIALS parquet file")
    p.add_argument(
        "--parquet",
        type=Path,
        nargs="+",
        required=True,
        help="DIALS parquet file (of the model's ring); with a joint model, the files of both "
        "rings (an LS is judged on both rings when both hold it, else on the one that does)",
    )
    add_oms(p, several=False)
    add_models(p)
    p.add_argument("--out", type=Path, default=None, help="CSV of per-LS results")
    add_force(p)
    p.set_defaults(handler=run_predict)


def run_train(args: argparse.Namespace) -> int:
    """One ring's model from its files (the ring is the files'), or with --joint one model of
    both rings, each ring trained on its own files exactly as it would be alone."""
    from ..io.paths import output_file
    from ..model.periods import parse_run_range
    from ..model.rings import check_joint_option, sources_by_ring
    from ..model.train import joint_model

    valid = parse_run_range(args.valid_runs, "--valid-runs") if args.valid_runs else None
    out = output_file(args.out, force=args.force, what="model file --out")  # before the work
    by_ring = sources_by_ring(args.parquet)
    check_joint_option(args.joint, by_ring)
    valid_runs = None if valid is None else (valid.first, valid.last)
    if args.joint:
        models = {}
        for ring, files in sorted(by_ring.items()):
            print(f"Ring {ring} ({len(files)} file(s)):")
            models[ring], report = _train_one(args, files, valid_runs)
            print("\n".join(report))
        model = joint_model(models, valid_runs)
    else:
        model, report = _train_one(args, args.parquet, valid_runs)
    try:
        path = model.save(out)
    except OSError as error:  # the runtime writes its own file (it cannot use the toolkit)
        from ..errors import OutputError

        raise OutputError(f"cannot write the model file {out}: {error.strerror}") from error
    if not args.joint:
        print("\n".join(report))
    print(f"Model written to {path}, valid for {valid.describe() if valid else 'every run'}")
    return 0


def _train_one(args: argparse.Namespace, files, valid_runs):
    """One ring's model from its files, and its fit report."""
    from tqdm import tqdm

    from ..model.train import fit_report, load_good_maps, train_model

    maps, provenance = load_good_maps(files, args.oms, args.exclude, args.max_ls, args.seed)
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
            valid_runs=valid_runs,
        )
    return model, fit_report(model, maps)


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
    by_ring = _check_rings(args.parquet, models)
    if len(models.rings) > 1:
        return _predict_joint(args, models, by_ring, oms_table, out)
    (parquet,) = args.parquet
    data = read_dials_parquet(parquet)
    if data.n_repeated:
        logger.warning(data.repeated_message(parquet))
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


def _check_rings(files: list[Path], models):
    """Every file's ring against the model's (one line naming both, before any map is read);
    the files by ring. A one-ring model takes one file, as it always did."""
    from ..errors import OptionError
    from ..model.rings import check_sources, describe_model

    paths = ", ".join(m.path for m in models.models)
    by_ring = check_sources(
        files, models.models[0].model, describe_model(models.models[0].model, paths)
    )
    if len(models.rings) == 1 and len(files) > 1:
        raise OptionError(
            f"--parquet: {describe_model(models.models[0].model, paths)} judges one file at a "
            "time (several files: `era`, or a joint model with the files of both rings)"
        )
    return by_ring


def _predict_joint(args: argparse.Namespace, models, by_ring, oms_table, out) -> int:
    """A joint model on the files of both rings: LS paired by (run, LS); each batch (both rings,
    Ring 1 only, Ring 2 only) says its three [INFO] lines under a line naming it; the CSV gains
    the column `rings` (which rings judged the LS)."""
    import numpy as np
    import pandas as pd

    from ..era.joint import JOINT_RINGS_TEXT, RINGS_COLUMN, pair_rings
    from ..io.atomic import write_atomically
    from ..io.oms import checked_oms_columns
    from ..io.results import MODEL_COLUMN, results_table
    from ..model.periods import NOT_JUDGED

    ring_data, n_repeated = {}, 0
    for ring, files in sorted(by_ring.items()):
        ring_data[ring], repeated = _read_ring(files)
        n_repeated += repeated
    batches = pair_rings(ring_data)
    run_all = np.concatenate([run for _, run, _ in batches])
    ls_all = np.concatenate([ls for _, _, ls in batches])
    if models.single is None:  # a run covered by none or by two: refused before any judging
        models.check(run_all, era_options=False)
    oms_all = checked_oms_columns(oms_table, run_all, ls_all, str(args.oms))
    tables, start = [], 0
    for maps, run, ls in batches:
        rows = slice(start, start + len(run))
        start += len(run)
        rings = tuple(sorted(maps))
        where = "both rings" if len(rings) > 1 else f"Ring {rings[0]} only"
        index = models.index_of(run) if models.single is None else np.zeros(len(run), int)
        for i in np.unique(index[index != NOT_JUDGED]):
            pick = np.flatnonzero(index == i)
            columns = None if oms_all is None else {k: v[rows][pick] for k, v in oms_all.items()}
            chosen = models.models[int(i)]
            result = chosen.model.predict({r: m[pick] for r, m in maps.items()}, columns)
            print(
                f"LS in {where}: {len(pick)}"
                + (f", model {chosen.describe()}" if models.single is None else "")
            )
            for line in result.flagging_lines():
                print(line)
            table = results_table(run[pick], ls[pick], result)
            table[RINGS_COLUMN] = JOINT_RINGS_TEXT[rings]
            if models.single is None:
                table[MODEL_COLUMN] = chosen.path
            tables.append(table)
    table = pd.concat(tables, ignore_index=True).sort_values(["run", "ls"], ignore_index=True)
    if out:
        write_atomically(out, lambda partial: table.to_csv(partial, index=False))
        print(f"Per-LS results written to {out}")
    flagged = table[table.flag]
    if len(flagged):
        print(
            flagged[["run", "ls", "metric", "type", "groups", RINGS_COLUMN]].to_string(index=False)
        )
    return 2 if n_repeated else 0


def _read_ring(files):
    """One ring's maps of these files, sorted by (run, LS), each LS from its first copy."""
    from ..io.parquet import first_copies_of, read_dials_parquet

    parts = []
    repeated = 0
    for path in files:
        data = read_dials_parquet(path)
        if data.n_repeated:
            logger.warning(data.repeated_message(path))
        repeated += data.n_repeated
        parts.append(data)
    ring = first_copies_of(parts)
    if ring.n_repeated:
        logger.warning(
            "%d LS found in more than one file of a ring; each judged from its first copy",
            ring.n_repeated,
        )
    return (ring.maps, ring.run, ring.ls), repeated + ring.n_repeated
