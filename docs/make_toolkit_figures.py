"""Redraw the README's `plot` figures from a small simulated era, exactly as a user would.

    python docs/make_toolkit_figures.py [--workdir /tmp/pixelring2nmf-docs]

Simulates 8 runs (seed 3, anomaly rate 0.01), runs `pixelring2nmf era` with the shipped model,
then `pixelring2nmf plot` for the first Multi-Disk, Quarter and Single-Disk LS the era found,
a clean DCS-good LS, and the era page of the run with the Multi-Disk LS.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pixelring2nmf.cli import main as cli
from pixelring2nmf.sim import simulate as simulator

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixelring2nmf-docs"))
    args = parser.parse_args()
    sim = simulator.simulate(args.workdir / "sim", runs=8, seed=3, anomaly_rate=0.01)
    era_dir = args.workdir / "era"
    common = ["--oms", str(sim["oms"])]
    cli(
        [
            "era",
            "--parquet",
            str(sim["parquet"]),
            *common,
            "--out",
            str(era_dir),
            "--no-progress",
            "--force",
        ]
    )
    results = pd.read_parquet(era_dir / "lumisections.parquet")
    good = results[results.dcs_good]
    picks = {
        "multidisk": good[good.type == "Multi-Disk"].iloc[0],
        "quarter": good[good.type == "Quarter"].iloc[0],
        "singledisk": good[good.type == "Single-Disk"].iloc[0],
        "clean": good[(good.type == "none") & (good.metric == 0)].iloc[100],
    }
    for name, row in picks.items():
        out = DOCS / f"plot_{name}.png"
        lumi = ["--run", str(row.run), "--ls", str(row.ls), "--out", str(out)]
        cli(["plot", "--parquet", str(sim["parquet"]), *common, *lumi])
    run = str(picks["multidisk"].run)
    cli(["plot", "--era", str(era_dir), "--runs", run, "--out", str(DOCS / "plot_era_run.png")])


if __name__ == "__main__":
    main()
