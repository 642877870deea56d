"""Detection rates of our rule and of the original rule, at every occupancy.

    python bench/detection.py [--anomalous 1000] [--clean 3000]

On maps of the simulated detector (judged by the shipped model) and, when
../shared/reference is present, on maps made from the real NMF components of the original
deployment (judged by a model trained on 900 such maps). See pixelring2nmf/evaluation.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.pixelring2nmf import PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf import simulate as simulator
from pixelring2nmf.evaluation import (
    StudySize,
    detection_study,
    failures,
    real_component_maker,
)
from pixelring2nmf.train import train_model

REAL = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "ring2_nmf_components_2025C.npy"
)


def simulated(occupancy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pileup = rng.uniform(20, 65, len(occupancy))
    return simulator.expected_maps(simulator.default_detector(), occupancy, pileup)


def as_markdown(table) -> str:
    pivot = table.pivot_table(
        index="scenario", columns="occupancy", values=["rate", "rate_original"], sort=False
    )
    occupancies = sorted(table.occupancy.unique())
    lines = [
        "| scenario (LS per cell) | rule | " + " | ".join(f"{o}/ROC" for o in occupancies) + " |",
        "|---|---|" + "---|" * len(occupancies),
    ]
    for scenario in table.scenario.unique():
        n = int(table[table.scenario == scenario].n_ls.iloc[0])
        for column, rule in (("rate", "ours"), ("rate_original", "original")):
            cells = " | ".join(
                f"{100 * pivot.loc[scenario, (column, o)]:.1f}%" for o in occupancies
            )
            lines.append(f"| {scenario} ({n}) | {rule} | {cells} |")
    quiet = table[table.scenario.isin(["clean", "Single-Disk"])]
    totals = quiet.groupby("scenario", sort=False)[["n_ls", "flagged", "flagged_original"]].sum()
    summary = "; ".join(
        f"{scenario}: {row.flagged} of {row.n_ls:,} LS flagged (original rule: "
        f"{row.flagged_original})"
        for scenario, row in totals.iterrows()
    )
    return "\n".join(lines) + f"\n\nTotals — {summary}."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anomalous", type=int, default=1000, help="LS per anomalous cell")
    parser.add_argument("--clean", type=int, default=3000, help="clean LS per occupancy")
    args = parser.parse_args()
    size = StudySize(args.anomalous, args.clean)
    parts, problems = [], []
    table = detection_study(PixelRing2NMF.load(), simulated, simulator.sample_maps, size=size)
    problems += [f"simulated: {p}" for p in failures(table)]
    parts.append("### Simulated detector, shipped model\n\n" + as_markdown(table))
    if REAL.exists():
        components = np.load(REAL)
        make = real_component_maker(components)
        rng = np.random.default_rng(7)
        occupancy = rng.uniform(200, 1400, 900)
        train = insert_cross(rng.poisson(make(occupancy, rng)).reshape(900, 136, 48))
        model = train_model(train)
        real = detection_study(model, make, lambda e, r: r.poisson(e), seed=2, size=size)
        problems += [f"real components: {p}" for p in failures(real)]
        parts.append(
            "### Maps from the real 2025C components, model trained on 900 such maps\n\n"
            + as_markdown(real)
        )
    verdict = "All acceptance bars hold." if not problems else "FAILED: " + "; ".join(problems)
    body = (
        "`python bench/detection.py` — share of LS flagged. Must be >= 99 % (dead ROG on 2 "
        "disks), >= 95 % (60 % of a ROG dead on 2 disks), 0 (Single-Disk, clean; the permanently "
        f"dead group FPix_BmO_D1_ROG2 is in every map). {verdict}\n\n" + "\n\n".join(parts)
    )
    print(body)
    write_section("detection", "Detection against occupancy", body)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
