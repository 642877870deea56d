"""Inference speed on healthy and anomalous batches, against the original pipeline; training.

    python bench/predict_speed.py [--repeats 21] [--original-repeats 3]

Batches: one simulated 750-LS run (occupancy 900 -> 300 clusters per ROC, the shipped
model's detector), as it is (healthy), with a ROG dead on two disks in every LS, with a whole
quarter dead in every LS (12 groups per LS for the screen to pass on), and healthy but
mismatched (smooth fields of 30 % and 10 % overdispersion: mismatch.py), where the screen
passes a few groups per LS. Ours = `PixelRing2NMF.predict` of the shipped model (validation,
exact NNLS, screen, bad ROCs of the screened groups, group search, DCS filter). Baseline = the
original pipeline (`original.OriginalPipeline`: MiniBatchNMF trained as deployed, `transform`
with 1000 multiplicative updates, (x - mu)^2 > 1e5) on the same batches. One BLAS thread for
both. Our batches are timed in interleaved rounds (every round times each batch once, in a
shuffled order), so a slow phase of this shared machine hits all of them alike; the ratios
are of medians taken in the same process.

Agreement, on the batches that flag: (1) the screened decision equals judging every group ROC
by ROC (the screen is only a shortcut); (2) on the shipped components, our exact NNLS with the
original rule flags the same LS as scikit-learn's 1000-update transform with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.geometry import GROUP_ID_FLAT, QUARTER_GROUPS, group_index
from mlserver_model.pixelring2nmf import PixelRing2NMF, to_model_space
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.model.train import train_model
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.mismatch import Mismatch
from pixelring2nmf.validation.original import OriginalPipeline, original_rule_flags

N_LS = 750
MAX_SLOWDOWN = 2.0  # anomalous batches must stay within 2x of the healthy one
DEAD_ROG = ("FPix_BpI_D1_ROG3", "FPix_BpI_D2_ROG3")
HEALTHY = "healthy"


def batches(seed: int) -> dict[str, np.ndarray]:
    """The four (750, 140, 56) int32 batches of the module docstring."""
    rng = np.random.default_rng(seed)
    occupancy = np.linspace(900, 300, N_LS)
    expected = simulator.expected_maps(simulator.default_detector(), occupancy)
    expected = expected.reshape(N_LS, -1)
    dead_rog = expected.copy()
    dead_rog[:, np.isin(GROUP_ID_FLAT, [group_index(g) for g in DEAD_ROG])] = 0.0
    quarter = expected.copy()
    quarter[:, np.isin(GROUP_ID_FLAT, QUARTER_GROUPS[3])] = 0.0
    mismatched = Mismatch("worst", field_amplitude=0.3, overdispersion=0.1).apply(expected, rng)
    made = {
        HEALTHY: expected,
        "ROG dead on 2 disks in every LS": dead_rog,
        "quarter dead in every LS": quarter,
        "healthy, 30 % smooth misfit + 10 % overdispersion": mismatched,
    }
    return {
        name: insert_cross(simulator.sample_maps(e.reshape(N_LS, 136, 48), rng))
        for name, e in made.items()
    }


def interleaved_times(model: PixelRing2NMF, maps: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per predict of every batch, `repeats` rounds in a shuffled order."""
    times = {name: [] for name in maps}
    order = random.Random(2024)
    for name in maps:  # warm-up
        model.predict(maps[name])
    for _ in range(repeats):
        for name in order.sample(list(maps), len(maps)):
            start = time.perf_counter()
            model.predict(maps[name])
            times[name].append(time.perf_counter() - start)
    return times


def timed(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def sklearn_transform_flags(maps: np.ndarray, components: np.ndarray) -> np.ndarray:
    """The original rule on scikit-learn's 1000-update transform of *our* components."""
    from sklearn.decomposition import MiniBatchNMF

    nmf = MiniBatchNMF(n_components=len(components), tol=0.0, max_iter=1000, alpha_H=0.1)
    nmf.partial_fit(to_model_space(maps[:16]).astype(np.float64))  # sets the solver's parameters
    nmf.components_ = components.astype(np.float64)
    return OriginalPipeline(nmf).predict(maps).flag


def screen_agreement(model: PixelRing2NMF, maps: dict) -> dict[str, tuple[int, bool]]:
    """Per batch: LS flagged, and whether judging every group gives the same flags/Metric."""
    every_group = PixelRing2NMF(
        model.components,
        model.model_error,
        dataclasses.replace(model.thresholds, screen_deficit=-1e30),  # nothing screened out
    )
    out = {}
    for name, batch in maps.items():
        screened, full = model.predict(batch), every_group.predict(batch)
        same = np.array_equal(screened.flag, full.flag) and np.array_equal(
            screened.metric, full.metric
        )
        out[name] = (int(screened.flag.sum()), same)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--original-repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    model = PixelRing2NMF.load()
    maps = batches(seed=1)
    train_maps = insert_cross(
        simulator.sample_maps(
            simulator.expected_maps(simulator.default_detector(), np.linspace(900, 300, 900)),
            np.random.default_rng(2),
        )
    )
    with threadpool_limits(limits=1):
        ours = interleaved_times(model, maps, args.repeats)
        train_ours = timed(lambda: train_model(train_maps), 1)[0]
        start = time.perf_counter()
        original = OriginalPipeline.train(train_maps)
        train_original = time.perf_counter() - start
        original_times = {
            name: timed(lambda b=batch: original.predict(b), args.original_repeats)
            for name, batch in maps.items()
        }
        original_flagged = {name: int(original.predict(maps[name]).flag.sum()) for name in maps}
        agreement = screen_agreement(model, maps)
        dead = maps["ROG dead on 2 disks in every LS"]
        ours_original_rule = original_rule_flags(model, dead)
        sklearn_original_rule = sklearn_transform_flags(dead, model.components)
    tracemalloc.start()
    model.predict(maps["quarter dead in every LS"])
    peak_predict = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    load_after = os.getloadavg()

    medians = {name: statistics.median(t) * 1e3 for name, t in ours.items()}
    healthy_ms = medians[HEALTHY]
    rows = []
    for name, ms in medians.items():
        ratio = ms / healthy_ms
        flagged, same = agreement[name]
        original_s = statistics.median(original_times[name])
        original_cell = f"{original_s:.2f} s (**{original_s * 1e3 / ms:.0f}x**)"
        verdict = "" if ratio <= MAX_SLOWDOWN else " **above 2x**"
        rows.append(
            f"| {name} | **{ms:.1f} ms** ({ms / N_LS * 1e3:.0f} µs/LS) | {ratio:.2f}{verdict} | "
            f"{original_cell} | {flagged} / {original_flagged[name]} | "
            f"{'yes' if same else '**NO**'} |"
        )
    slow = [n for n, ms in medians.items() if ms / healthy_ms > MAX_SLOWDOWN]
    verdict = (
        f"Every anomalous batch is within {MAX_SLOWDOWN:.0f}x of the healthy one."
        if not slow
        else f"**Above {MAX_SLOWDOWN:.0f}x**: {', '.join(slow)}."
    )
    n_differ = int(np.count_nonzero(ours_original_rule != sklearn_original_rule))
    input_mb = maps[HEALTHY].nbytes / 1e6
    body = f"""
`python bench/predict_speed.py` — {N_LS} simulated LS per batch (int32, {input_mb:.0f} MB),
the shipped model, one BLAS thread; ours: median of {args.repeats} interleaved rounds; the
original pipeline: median of {args.original_repeats} runs per batch. Load average (1/5/15 min)
before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, after
{load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} (2 cores shared with other work).

| batch | ours: `predict` | ratio to healthy | original pipeline (speed-up) | LS flagged: ours / original | screened = every group judged |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{verdict} Training on 900 LS: ours (5 components, 300 NMF passes) {train_ours:.1f} s; the
original (MiniBatchNMF, 30 passes of 1000 updates) {train_original:.1f} s.
Peak memory allocated by `predict` on the quarter batch (tracemalloc): {peak_predict / 1e6:.0f} MB
(the input itself is {input_mb:.0f} MB).
On the shipped components and the dead-ROG batch, the original rule flags
{int(ours_original_rule.sum())} LS on our exact NNLS and {int(sklearn_original_rule.sum())} on
scikit-learn's 1000-update transform; {n_differ} of {N_LS} LS differ (1000 multiplicative
updates stop short of the optimum the NNLS reaches, and an LS whose dead ROCs sit right at
the 1e5 loss, at the low-occupancy end of the run where the rule stops seeing them, can flip).
"""
    print(body)
    write_section("predict_speed", "Inference and training speed", body)
    return 0 if not slow else 1


if __name__ == "__main__":
    sys.exit(main())
