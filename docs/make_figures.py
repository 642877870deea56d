"""Draw docs/simulated_vs_real.png: one simulated Ring 2 map beside one made from real components.

The right panel is built at run time from the NMF components of the deployed model (real 2025C
collisions, `shared/reference/ring2_nmf_components_2025C.npy`), never stored in the project:
W >= 0 (mostly the first component), scaled to the simulated map's mean occupancy, Poisson
sampled. Without the reference folder only the simulated panel is drawn.

    .venv/bin/python docs/make_figures.py [--seed 3] [--reference DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.plots.draw import plot_ring2
from pixelring2nmf.sim import simulate as simulator

DOCS = Path(__file__).resolve().parent
DEFAULT_REFERENCE = DOCS.parents[0].parent / "shared" / "reference"
COMPONENTS_FILE = "ring2_nmf_components_2025C.npy"
TARGET_PILEUP = 60.0
# Mostly the first (overall) component plus a little of the others, as a typical LS is.
REAL_WEIGHTS = np.array([1.0, 0.08, 0.08, 0.04, 0.04])


def simulated_map(seed: int) -> tuple[np.ndarray, float, float]:
    """A DCS-good LS of a clean simulated run whose pileup is nearest TARGET_PILEUP."""
    rng = np.random.default_rng(seed)
    detector = simulator.make_detector(rng)
    fill = simulator.new_fill(1, rng, min_length_ls=3000)
    run = simulator.simulate_run(
        390001, 3000, detector, rng, anomalies="none", fill=fill, fill_position_ls=0
    )
    candidates = np.flatnonzero(run.dcs_good)
    best = candidates[np.argmin(np.abs(run.pileup[candidates] - TARGET_PILEUP))]
    return run.maps[best], float(run.pileup[best]), float(run.occupancy_per_roc[best])


def map_from_real_components(
    components: np.ndarray, occupancy_per_roc: float, seed: int
) -> np.ndarray:
    """Poisson map from W @ components, scaled to `occupancy_per_roc` over live ROCs."""
    shape = np.tensordot(REAL_WEIGHTS, components.astype(float), axes=1)
    live = shape > 0.02 * shape.mean()
    expected = np.where(live, shape * occupancy_per_roc / shape[live].mean(), 0.0)
    counts = np.random.default_rng(seed).poisson(expected).astype(np.int32)
    return insert_cross(counts)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--out", type=Path, default=DOCS / "simulated_vs_real.png")
    args = parser.parse_args(argv)

    sim_map, pileup, occupancy = simulated_map(args.seed)
    panels = [(sim_map, f"simulated\npileup {pileup:.0f}, {occupancy:.0f} clusters/ROC")]
    components_path = args.reference / COMPONENTS_FILE
    if components_path.is_file():
        real_map = map_from_real_components(np.load(components_path), occupancy, args.seed)
        panels.append((real_map, "from real NMF components (2025C)\nsame mean, Poisson"))
    else:
        print(f"{components_path} not found: drawing the simulated map only")

    vmax = max(float(np.percentile(m[m > 0], 99.5)) for m, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 8.2), squeeze=False)
    for ax, (map_yx, title) in zip(axes[0], panels, strict=True):
        image = plot_ring2(map_yx, ax=ax, title=title, vmin=0, vmax=vmax, cmap="viridis")
        fig.colorbar(image, ax=ax, label="clusters per ROC per LS", fraction=0.08)
    fig.tight_layout()
    fig.savefig(args.out, dpi=72)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
