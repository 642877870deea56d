"""`pixelring2nmf plot`: find the data of a figure, ask the model, hand it to `plots`.

Two kinds of figure:
- `--run R --ls L` with `--parquet`: one LS as the model sees it (occupancy, reconstruction,
  deficit significance, bad ROCs and power groups), judged by the same `predict` call as
  everywhere else, with the OMS flags when given;
- `--era DIR`: the per-LS results an `era` run wrote, one page per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, LOGGER, PixelRing2NMF


def find_lumisection(paths: list[Path], run: int, ls: int) -> np.ndarray:
    """The (140, 56) map of (run, LS), reading only row groups that may hold the run."""
    from .parquet import iter_dials_parquet

    for path in paths:
        for chunk in iter_dials_parquet(path, runs=[run]):
            hit = np.flatnonzero(chunk.ls == ls)
            if hit.size:
                return chunk.maps[hit[0]]
    names = ", ".join(str(p) for p in paths)
    raise ValueError(f"run {run}, LS {ls} is not in {names}")


def lumisection_plot(args: argparse.Namespace) -> list[Path]:
    from .era import OmsLookup, parquet_inputs, quiet_logger
    from .plots import lumisection_figure, save_figures

    map_yx = find_lumisection(parquet_inputs(args.parquet), args.run, args.ls)
    oms = (
        OmsLookup.read(args.oms).columns_for(np.array([args.run]), np.array([args.ls]))
        if (args.oms)
        else None
    )
    model = PixelRing2NMF.load(args.model or DEFAULT_MODEL_PATH)
    with quiet_logger(LOGGER.name):  # one LS: the three [INFO] lines would only repeat the title
        result = model.predict(map_yx[None], oms, roc_maps=True, rule=args.rule)
    failed = result.dcs.failed_flags(0)
    dcs_note = f"DCS bad: {', '.join(failed)}" if failed else ("DCS good" if oms else "no OMS data")
    if oms is not None and "pileup" in oms and oms["pileup"][0] is not None:
        dcs_note += f"; pileup {float(oms['pileup'][0]):.1f}"
    figure = lumisection_figure(
        map_yx,
        {name: maps[0] for name, maps in result.roc_maps.items()},
        result.anomalous_groups[0],
        run=args.run,
        ls=args.ls,
        anomaly_type=str(result.anomaly_type[0]),
        metric=float(result.metric[0]),
        flag=bool(result.flag[0]),
        dcs_note=dcs_note,
        z_threshold=model.thresholds.z_threshold,
    )
    return save_figures([figure], args.out)


def era_plot(args: argparse.Namespace) -> list[Path]:
    from .era import RESULTS_STEM, table_csv
    from .plots import era_run_figure, save_figures

    path = Path(args.era) / f"{RESULTS_STEM}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --era takes an output directory of `era`")
    results = pd.read_parquet(path)
    runs = args.runs or sorted(results.run.unique().tolist())
    unknown = sorted(set(runs) - set(results.run.unique().tolist()))
    if unknown:
        raise ValueError(f"run(s) {unknown} are not in {path}")
    persistent_path = table_csv(Path(args.era), "persistent")
    persistent = pd.read_csv(persistent_path) if persistent_path.is_file() else pd.DataFrame()
    figures = []
    for run in runs:
        groups = persistent[persistent.Run_Number == run].Powergroup if len(persistent) else []
        figures.append(era_run_figure(results, int(run), list(groups)))
    return save_figures(figures, args.out)


def run_plot(args: argparse.Namespace) -> int:
    """CLI entry: exactly one of --era or --run/--ls (with --parquet)."""
    from .outputs import output_file

    output_file(args.out, what="--out")  # before the work
    if args.era is not None:
        if args.run is not None or args.ls is not None:
            raise ValueError("give either --era DIR or --run R --ls L, not both")
        written = era_plot(args)
    else:
        if args.run is None or args.ls is None or not args.parquet:
            raise ValueError("give --era DIR, or --parquet FILE --run R --ls L")
        written = lumisection_plot(args)
    for path in written:
        print(f"Figure written to {path}")
    return 0
