"""Redraw the README's `stats` heatmap from two small simulated eras, exactly as a user would.

    python docs/make_stats_figures.py [--workdir /tmp/pixelring2nmf-stats-docs]

Simulates two eras of 4 runs each (seeds 3 and 4, anomaly rate 0.01), runs `pixelring2nmf era`
on each with the shipped model, then `pixelring2nmf stats` over both, and keeps its heatmap as
docs/img/stats_heatmap.png (as a palette PNG, to stay a light page).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from pixelring2nmf.cli import main as cli
from pixelring2nmf.sim import simulate as simulator

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixelring2nmf-stats-docs"))
    args = parser.parse_args()
    eras = []
    for i, seed in enumerate((3, 4)):
        sim = simulator.simulate(
            args.workdir / f"sim{i}",
            runs=4,
            seed=seed,
            first_run=390000 + 100 * i,
            anomaly_rate=0.01,
        )
        era_dir = args.workdir / f"2025{'CD'[i]}"
        cli(
            [
                "era",
                "--parquet",
                str(sim["parquet"]),
                "--oms",
                str(sim["oms"]),
                "--out",
                str(era_dir),
                "--no-progress",
                "--force",
            ]
        )
        eras.append(str(era_dir))
    out = args.workdir / "stats"
    cli(["stats", "--era", *eras, "--out", str(out), "--force"])
    (DOCS / "img").mkdir(exist_ok=True)
    # a palette PNG: the same picture in a third of the bytes (the README stays light)
    with Image.open(out / "powergroups_heatmap.png") as image:
        image.convert("RGB").quantize(colors=256).save(
            DOCS / "img" / "stats_heatmap.png", optimize=True
        )


if __name__ == "__main__":
    main()
