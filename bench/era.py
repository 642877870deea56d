"""`pixelring2nmf era` end to end: one process, worker processes, a local Dask cluster.

    python bench/era.py [--n-ls 76000] [--memory-sizes 30000 150000] [--rounds 5]
                        [--workdir /tmp/pixelring2nmf-bench-era]

An era of `--n-ls` LS (real-layout parquet: `list<list<double>>`, zstd, row groups of 1000 LS,
runs of 1000 LS with the simulator's default anomalies, and its OMS JSON) is simulated once and
kept in --workdir. Then, in turns so that a change in the machine's other work weighs on every
configuration alike, `--rounds` times each:

    pixelring2nmf era --workers 1        (one process: the reference)
    pixelring2nmf era --workers 2        (two worker processes)
    pixelring2nmf era --dask local:2     (two Dask worker processes)

each in a fresh process, with the shipped model. Measured from outside: wall time from process
start to exit (imports, reading, the model, tables, CSV and parquet: end to end); from era.json:
the analysis alone (plan, tasks, merge; what `era` prints as LS/s) and the peak RSS of the
main process and of the largest worker. Every configuration's tables and per-LS results are
compared byte for byte with the reference's, and the tables with the simulator's truth.

Memory: `--workers 2` again on eras of `--memory-sizes` LS, to show that no process's peak
grows with the era.

Goals (issue "The toolkit in layers"): `--workers 2` >= 1.6x the LS/s of `--workers 1`;
`--dask local:2` within 1.3x of `--workers 2`; a worker's peak memory independent of the
era's size (largest / smallest era <= 1.2; the main process, which holds the era's OMS table and
per-LS results, is reported beside it).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.truthcheck import compare_with_truth

LS_PER_RUN = 1000
CONFIGURATIONS = {
    "--workers 1": ["--workers", "1"],
    "--workers 2": ["--workers", "2"],
    "--dask local:2": ["--dask", "local:2"],
}
GOAL_PROCESSES = 1.6  # --workers 2 over --workers 1
GOAL_DASK = 1.3  # --workers 2 over --dask local:2, at most
GOAL_MEMORY = 1.2  # peak at the largest era over the smallest, at most
COMPARED = [
    "lumisections.parquet",
    "lumisections.csv",
    "condensed.csv",
    "powergroup.csv",
    "per_ls.csv",
    "run_summary.csv",
    "persistent.csv",
]


def simulated_era(workdir: Path, n_ls: int) -> dict[str, Path]:
    """The era of `n_ls` LS (runs of 1000 LS, default anomalies), simulated once.

    Kept in `workdir` for later runs with the same workdir (bench/era_scale.py uses it too):
    simulating a large era takes a minute.
    """
    out = workdir / f"era_{n_ls}"
    paths = simulator.output_paths(out)
    if not all(p.exists() for p in paths.values()):
        print(f"simulating {n_ls} LS into {out} ...", flush=True)
        paths = simulator.simulate(out, runs=n_ls // LS_PER_RUN, seed=7, ls_per_run=LS_PER_RUN)
    return paths


def run_era(paths: dict[str, Path], out: Path, options: list[str]) -> dict:
    """One `pixelring2nmf era` process: wall seconds, its era.json, its summary line."""
    command = [sys.executable, "-m", "pixelring2nmf.cli", "era", "--parquet", str(paths["parquet"])]
    command += ["--oms", str(paths["oms"]), "--out", str(out), "--no-progress", "--force"]
    start = time.perf_counter()
    done = subprocess.run([*command, *options], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"era {options} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads((out / "era.json").read_text())
    return {"seconds": seconds, "summary": summary, "line": done.stdout.strip().splitlines()[-1]}


def same_outputs(out: Path, reference: Path) -> bool:
    return all(filecmp.cmp(out / name, reference / name, shallow=False) for name in COMPARED)


def measure_speed(paths: dict[str, Path], workdir: Path, rounds: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
    reference = workdir / "out_speed_--workers_1"
    for round_number in range(rounds):
        for name, options in CONFIGURATIONS.items():
            out = workdir / f"out_speed_{name.replace(' ', '_')}"
            run = run_era(paths, out, options)
            run["load"] = os.getloadavg()[0]
            if name != "--workers 1":
                run["identical"] = same_outputs(out, reference)
            runs[name].append(run)
            n_ls = run["summary"]["n_ls"]
            print(
                f"round {round_number + 1} {name}: {run['seconds']:.2f} s end to end "
                f"({n_ls / run['seconds']:,.0f} LS/s), analysis {run['summary']['seconds']:.2f} s",
                flush=True,
            )
    return runs


def measure_memory(workdir: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n_ls in sizes:
        paths = simulated_era(workdir, n_ls)
        run = run_era(paths, workdir / f"out_memory_{n_ls}", CONFIGURATIONS["--workers 2"])
        peaks = run["summary"]["peak_memory_mb"]
        rows.append({"n_ls": run["summary"]["n_ls"], **peaks})
        print(f"{n_ls} LS: peak memory {peaks}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ls", type=int, default=76_000)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[30_000, 150_000])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per configuration")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixelring2nmf-bench-era"))
    args = parser.parse_args()
    paths = simulated_era(args.workdir, args.n_ls)
    runs = measure_speed(paths, args.workdir, args.rounds)
    truth = compare_with_truth(
        pd.read_csv(args.workdir / "out_speed_--workers_1" / "powergroup.csv"),
        pd.read_csv(paths["truth"], keep_default_na=False),
        PixelRing2NMF.load().unjudged_groups,
    )
    memory = measure_memory(args.workdir, sorted({*args.memory_sizes, args.n_ls}))
    body = report(paths, runs, memory, truth)
    print(body)
    write_section("era", "Era analysis: `pixelring2nmf era` on every core", body)
    return 0


def paired(runs: dict[str, list[dict]], slow: str, fast: str) -> tuple[float, float, list]:
    """Median over rounds of `fast`'s LS/s over `slow`'s: end to end, analysis, and each
    round's end-to-end ratio."""
    pairs = list(zip(runs[slow], runs[fast], strict=True))
    wall = [a["seconds"] / b["seconds"] for a, b in pairs]
    inner = [a["summary"]["seconds"] / b["summary"]["seconds"] for a, b in pairs]
    return _median(wall), _median(inner), wall


def _median(values) -> float:
    return float(statistics.median(values))


def report(paths: dict[str, Path], runs: dict[str, list[dict]], memory: list[dict], truth) -> str:
    n_ls = runs["--workers 1"][0]["summary"]["n_ls"]
    rounds = len(runs["--workers 1"])
    size_mb = paths["parquet"].stat().st_size / 1e6
    lines = [
        f"`python bench/era.py` — a simulated era of {n_ls:,} LS in one parquet of "
        f"{size_mb:.0f} MB (`list<list<double>>`, zstd, row groups of 1000 LS) with its OMS JSON,",
        "runs of 1000 LS with the simulator's default anomalies, the shipped model. Each",
        f"configuration ran {rounds} times in a fresh process, the three in turns (round 1: A, B,",
        "C; round 2: A, B, C; ...), so that the other work on this 2-core machine weighs on all",
        "alike. End to end = process start to exit (imports, reading, the model, tables, CSV and",
        "parquet); analysis = what `era` reports (plan, tasks, merge). Peak memory from era.json",
        "(each process's own `ru_maxrss`).",
        "",
        "| configuration | end to end, median (each round) | LS/s end to end | analysis, median | LS/s of the analysis | peak memory: main / largest worker | outputs |",
        "|---|---|---|---|---|---|---|",
    ]
    medians = {}
    for name, done in runs.items():
        wall = _median(r["seconds"] for r in done)
        inner = _median(r["summary"]["seconds"] for r in done)
        medians[name] = (n_ls / wall, n_ls / inner)
        each = ", ".join(f"{r['seconds']:.1f}" for r in done)
        peak = done[-1]["summary"]["peak_memory_mb"]
        same = (
            "reference"
            if name == "--workers 1"
            else ("identical" if all(r["identical"] for r in done) else "**DIFFER**")
        )
        lines.append(
            f"| `era {name}` | {wall:.2f} s ({each}) | **{n_ls / wall:,.0f}** | {inner:.2f} s | "
            f"**{n_ls / inner:,.0f}** | {peak['this process']} / {peak['largest worker']} MB | "
            f"{same} |"
        )
    two = [medians["--workers 2"][i] / medians["--workers 1"][i] for i in (0, 1)]
    dask = [medians["--workers 2"][i] / medians["--dask local:2"][i] for i in (0, 1)]
    paired_two = paired(runs, "--workers 1", "--workers 2")
    paired_dask = paired(runs, "--dask local:2", "--workers 2")
    loads = [r["load"] for done in runs.values() for r in done]
    lines += [
        "",
        "Ratios of LS/s, two ways: of the medians above, and the median of the per-round ratios "
        "(the two runs of a round follow each other, so they share the machine's state: the "
        "steadier measure on a machine whose speed drifts).",
        "",
        f"- `--workers 2` / `--workers 1`: medians **{two[0]:.2f}x** end to end, "
        f"**{two[1]:.2f}x** for the analysis; per round (median) **{paired_two[0]:.2f}x** end "
        f"to end ({', '.join(f'{r:.2f}' for r in paired_two[2])}), **{paired_two[1]:.2f}x** "
        f"for the analysis (goal >= {GOAL_PROCESSES}: "
        f"{'met' if min(paired_two[:2]) >= GOAL_PROCESSES else 'NOT met'} per round).",
        f"- `--workers 2` / `--dask local:2`: medians **{dask[0]:.2f}x** end to end, "
        f"**{dask[1]:.2f}x** for the analysis; per round **{paired_dask[0]:.2f}x** end to end, "
        f"**{paired_dask[1]:.2f}x** for the analysis (goal <= {GOAL_DASK}: "
        f"{'met' if max(*dask, *paired_dask[:2]) <= GOAL_DASK else 'NOT met'}; end to end "
        "includes the local cluster's start; its workers are forked, so they start with the "
        "libraries imported).",
        f"- 1-minute load average at the runs: {min(loads):.2f}-{max(loads):.2f}.",
        f"- Tables against the simulator's truth: {truth.describe()}.",
        "",
        "**Memory per process against the era's size** (`era --workers 2`):",
        "",
        "| LS | main process | largest worker |",
        "|---|---|---|",
    ]
    for row in memory:
        lines.append(f"| {row['n_ls']:,} | {row['this process']} MB | {row['largest worker']} MB |")
    worker = memory[-1]["largest worker"] / memory[0]["largest worker"]
    main_ratio = memory[-1]["this process"] / memory[0]["this process"]
    extra_ls = memory[-1]["n_ls"] - memory[0]["n_ls"]
    per_ls_kb = (memory[-1]["this process"] - memory[0]["this process"]) * 1e3 / extra_ls
    lines += [
        "",
        f"Largest era / smallest: workers **{worker:.2f}x** (goal <= {GOAL_MEMORY}: "
        f"{'met' if worker <= GOAL_MEMORY else 'NOT met'}): a worker holds one chunk of 1000 LS "
        f"at a time, whatever the era. The main process: **{main_ratio:.2f}x**, "
        f"{per_ls_kb:.2f} kB more per LS. It judges no map; what grows is the era's OMS table "
        "(parsed from JSON: the text, its Python lists and the table are held together for a "
        "moment, ~0.5 kB per LS) and the per-LS results it merges into the tables (~0.1 kB per "
        "LS): for a 300,000-LS year it would peak at ~"
        f"{memory[0]['this process'] + per_ls_kb * (300_000 - memory[0]['n_ls']) / 1e3:.0f} MB.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
