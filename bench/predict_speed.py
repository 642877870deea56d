"""Predict speed against the original algorithm, training time, and peak memory.

    python bench/predict_speed.py [--repeats 21] [--original-repeats 2]

Baseline = the original deployment's inference on the same components and the same 750 LS:
scikit-learn's MiniBatchNMF.transform with tol 0 and max_iter 1000 (1000 multiplicative
updates), then the loss > 1e5 rule. Ours = PixelRing2NMF.predict (validation, exact NNLS,
screened significance test, group search, DCS filter). Both run with one BLAS thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.bad_ROC import Thresholds, group_counts, search_original
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf import simulate as simulator
from pixelring2nmf.train import train_model

N_LS = 750


def simulated_run(n_ls: int, seed: int) -> np.ndarray:
    """(n, 140, 56) int32 maps over a fill-like occupancy range, from the shipped detector."""
    rng = np.random.default_rng(seed)
    occupancy = np.linspace(900, 300, n_ls)
    expected = simulator.expected_maps(simulator.default_detector(), occupancy)
    return insert_cross(simulator.sample_maps(expected, rng))


def original_flags(maps: np.ndarray, components: np.ndarray) -> np.ndarray:
    """The original deployment's inference, as it ran: 1000 MU iterations, then the 1e5 rule."""
    from sklearn.decomposition import MiniBatchNMF

    x = to_model_space(maps).astype(np.float64)
    nmf = MiniBatchNMF(n_components=len(components), tol=0.0, max_iter=1000, alpha_H=0.1)
    nmf.partial_fit(x[:16])  # sets the solver's internal parameters
    nmf.components_ = components.astype(np.float64)
    w = nmf.transform(x)
    expected = w @ nmf.components_
    bad = (x - expected) ** 2 > Thresholds().original_loss
    search = search_original(group_counts(bad), Thresholds())
    return search.metric >= 1.0


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--original-repeats", type=int, default=3)
    args = parser.parse_args()
    model = PixelRing2NMF.load()
    maps = simulated_run(N_LS, seed=1)
    with threadpool_limits(limits=1):
        model.predict(maps)  # warm-up
        ours = timed(lambda: model.predict(maps), args.repeats)
        original = timed(lambda: original_flags(maps, model.components), args.original_repeats)
        agree = np.array_equal(
            model.predict(maps, rule="original").flag, original_flags(maps, model.components)
        )
        train_maps = simulated_run(900, seed=2)
        train_times = timed(lambda: train_model(train_maps), 1)
    tracemalloc.start()
    model.predict(maps)
    peak_predict = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tracemalloc.start()
    train_model(train_maps)
    peak_train = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    ours_ms, original_s = statistics.median(ours) * 1e3, statistics.median(original)
    ratio = original_s * 1e3 / ours_ms
    input_mb = maps.nbytes / 1e6
    body = f"""
`python bench/predict_speed.py` — {N_LS} simulated LS (int32, {input_mb:.0f} MB), one BLAS thread.

| what | median | runs |
|---|---|---|
| ours: `PixelRing2NMF.predict` | **{ours_ms:.1f} ms** ({ours_ms / N_LS * 1e3:.0f} µs/LS) | {len(ours)} |
| original: `MiniBatchNMF.transform` (tol 0, 1000 iterations) + loss > 1e5 | {original_s:.2f} s ({original_s / N_LS * 1e3:.1f} ms/LS) | {len(original)} |
| **speed-up** | **{ratio:.0f}x** | |
| training, 900 LS, 5 components, 300 NMF passes | {train_times[0]:.1f} s | 1 |

Peak memory allocated (tracemalloc): predict {peak_predict / 1e6:.0f} MB
(the input itself is {input_mb:.0f} MB); training {peak_train / 1e6:.0f} MB.
Our NNLS with the original rule flags the same LS as the original 1000-iteration transform:
{"yes" if agree else "NO"}.
"""
    print(body)
    write_section("predict_speed", "Inference and training speed", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
