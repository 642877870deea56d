"""A simulated era scored against its truth.csv: found / injected per anomaly type, false flags.

    python bench/scored_era.py [--runs 42] [--anomaly-rate 0.006] [--seed 2025] [--no-original]

The era: `pixelring2nmf simulate` (era scenario: every kind of anomaly, DCS gaps, nulls, LS
missing from the parquet) with >= 30,000 LS. Two models judge it, each beside the original
pipeline trained on the same maps:

- *the era's own detector*: trained as `scripts/train_shipped_model.sh` trains the shipped
  model (two clean simulated runs of the same detector, DCS-good LS, 900 of them, seed 11);
- *a stale model*: trained on maps of the same detector seen through a fixed smooth field of
  25 % peak (`mismatch.smooth_fields`): the detector drifted between training and the era, so
  every map of the era is mismatched the same way.

Every rule sees the DCS filter (OMS JSON of the era). Scoring (evaluation.score_era): per
category of truth.csv, LS injected, LS in the parquet, LS flagged, events (consecutive LS of one
anomaly) found; clean LS flagged are the false rows. Partial outages on two disks are split by
the share of their live ROCs that died (>= 45 %: should flag; 35-45 %: either; < 35 %: quiet).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.dftools import dcs_filter
from mlserver_model.geometry import GROUP_ID_FLAT, N_GROUPS
from mlserver_model.preprocessor import insert_cross, remove_cross
from pixelring2nmf.io.oms import align_oms, read_oms_json
from pixelring2nmf.io.parquet import read_dials_parquet
from pixelring2nmf.model.train import load_good_maps, train_model
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.evaluation import score_era
from pixelring2nmf.validation.mismatch import smooth_fields
from pixelring2nmf.validation.original import OriginalPipeline

MIN_ERA_LS = 30_000
STALE_FIELD = 0.25


def shipped_like_training_maps(tmp: Path) -> np.ndarray:
    """The maps scripts/train_shipped_model.sh trains the shipped model on."""
    paths = simulator.simulate(
        tmp / "train", runs=2, seed=11, ls_per_run=600, clean=True, era="Run2025Z"
    )
    maps, _ = load_good_maps([paths["parquet"]], paths["oms"], max_ls=900, seed=11)
    return maps


def stale_training_maps(maps_nyx: np.ndarray, seed: int) -> np.ndarray:
    """The same maps from a detector that then drifted: one fixed smooth field on every LS.

    Counts are scaled by the field and rounded stochastically (floor(x f + U)), which keeps
    their Poisson-like scatter instead of adding a second Poisson draw.
    """
    rng = np.random.default_rng(seed)
    field = smooth_fields(1, STALE_FIELD, rng)[0]
    counts = remove_cross(maps_nyx).reshape(len(maps_nyx), -1) * field
    drifted = np.floor(counts + rng.random(counts.shape)).astype(np.int32)
    return insert_cross(drifted.reshape(-1, 136, 48))


def flags_table(run: np.ndarray, ls: np.ndarray, flag: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"run": run, "ls": ls, "flag": flag})


def judge(name, training_maps, era, oms, dcs_good, with_original) -> dict[str, pd.DataFrame]:
    """Per-LS flags (after the DCS filter) of ours and the original trained on the maps."""
    started = time.monotonic()
    model = train_model(training_maps)
    flags = {"ours": flags_table(era.run, era.ls, model.predict(era.maps, oms).flag)}
    ours_s = time.monotonic() - started
    if with_original:
        original = OriginalPipeline.train(training_maps)
        original_flag = original.predict(era.maps).flag & dcs_good
        flags["original pipeline"] = flags_table(era.run, era.ls, original_flag)
    print(
        f"[{name}] ours {ours_s:.0f} s, all {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return flags


def markdown(score: pd.DataFrame) -> str:
    rules = list(score.rule.unique())
    head = "| truth category | should | LS injected | LS in data | " + " | ".join(
        f"{r}: LS flagged | {r}: events found" for r in rules
    )
    lines = [head + " |", "|---|---|---|---|" + "---|---|" * len(rules)]
    for category, rows in score.groupby("category", sort=False):
        first = rows.iloc[0]
        cells = []
        for rule in rules:
            row = rows[rows.rule == rule].iloc[0]
            events = (
                ""
                if pd.isna(row.events_injected)
                else f"{int(row.events_found)} / {int(row.events_injected)}"
            )
            cells.append(f"{row.ls_flagged} / {row.ls_in_data} | {events}")
        lines.append(
            f"| {category} | {first.expected} | {first.ls_injected} | {first.ls_in_data} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=42)
    parser.add_argument("--anomaly-rate", type=float, default=0.006, help="anomalies per LS")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--no-original", dest="original", action="store_false")
    parser.add_argument("--min-ls", type=int, default=MIN_ERA_LS, help="refuse smaller eras")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-era-") as tmp_name:
        tmp = Path(tmp_name)
        paths = simulator.simulate(
            tmp / "era", runs=args.runs, seed=args.seed, anomaly_rate=args.anomaly_rate
        )
        era = read_dials_parquet(paths["parquet"])
        truth = pd.read_csv(paths["truth"], keep_default_na=False)
        oms_table = read_oms_json(paths["oms"])
        training = shipped_like_training_maps(tmp)
    if len(era) < args.min_ls:
        raise SystemExit(f"the era has {len(era)} LS, fewer than {args.min_ls}: raise --runs")
    oms = align_oms(oms_table, era.run, era.ls)
    dcs_good = dcs_filter(oms, len(era.run)).good
    live = np.bincount(
        GROUP_ID_FLAT,
        weights=simulator.default_detector().live_rocs.ravel(),
        minlength=N_GROUPS,
    )
    sections = []
    worlds = (
        ("the era's own detector (trained as the shipped model)", training),
        (f"the detector before a drift (a fixed {STALE_FIELD:.0%} smooth field)", None),
    )
    for name, maps in worlds:
        maps = maps if maps is not None else stale_training_maps(training, args.seed)
        flags = judge(name, maps, era, oms, dcs_good, args.original)
        score = score_era(truth, flags, live)
        clean = score[score.category == "clean"]
        false_rows = ", ".join(f"{r.rule}: {r.ls_flagged}" for r in clean.itertuples())
        sections.append(
            f"#### Judged by a model of {name}\n\nFalse rows (clean LS flagged): {false_rows}."
            f"\n\n{markdown(score)}"
        )
    counts = truth.anomaly_type.value_counts().to_dict()
    body = f"""`python bench/scored_era.py --runs {args.runs} --anomaly-rate {args.anomaly_rate} --seed {args.seed}`
— a simulated era of **{len(era):,} LS** in {len(np.unique(era.run))} runs
({int(dcs_good.sum()):,} DCS-good), scored against the simulator's `truth.csv`
({len(truth):,} anomalous LS: {counts}). Cells: LS flagged / LS of that category in the
parquet (the DCS filter applied; truth anomalies sit on DCS-good LS only), and events found /
injected (an event is one anomaly, 1-16 consecutive LS; found when any of its LS is flagged).
"Missing" LS are absent from the parquet by design. Total time
{(time.monotonic() - started) / 60:.0f} min.

""" + "\n\n".join(sections)
    print(body)
    write_section("scored_era", "A scored simulated era", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
