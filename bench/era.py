"""`pixelring2nmf era` end to end on simulated eras: LS/s, peak memory, and the truth.

    python bench/era.py [--sizes 30000 120000] [--workdir /tmp/pixelring2nmf-bench-era]

For each size, an era of real-layout parquet (list<list<double>>, row groups of 1000 LS, one
file) with its OMS JSON and injected anomalies is simulated once (kept in --workdir), then
`pixelring2nmf era --xlsx` runs in a fresh process with the shipped model. Measured from
outside: wall time from process start to exit (imports, reading, the model, tables, CSV,
parquet, XLSX: end to end) and the process's peak RSS (wait4's ru_maxrss). The tables are
then matched with the simulator's truth (pixelring2nmf/truthcheck.py).

Goals: >= 3,000 LS/s end to end on the 2-core machine; peak RSS at the largest size within
1.2x of that at the smallest (memory must not grow with the number of LS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.pixelring2nmf import PixelRing2NMF
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.truthcheck import compare_with_truth

LS_PER_RUN = 1000
GOAL_LS_PER_S = 3000.0
GOAL_RSS_RATIO = 1.2


def simulated_era(workdir: Path, n_ls: int) -> dict[str, Path]:
    """The era of `n_ls` LS (runs of 1000 LS, default anomalies), simulated once.

    Kept in `workdir` for later runs with the same workdir (bench/era_scale.py uses it too):
    simulating a large era takes minutes.
    """
    out = workdir / f"era_{n_ls}"
    paths = simulator.output_paths(out)
    if not all(p.exists() for p in paths.values()):
        print(f"simulating {n_ls} LS into {out} ...", flush=True)
        paths = simulator.simulate(out, runs=n_ls // LS_PER_RUN, seed=7, ls_per_run=LS_PER_RUN)
    return paths


def run_era(paths: dict[str, Path], out: Path) -> dict:
    """One `pixelring2nmf era` process: wall seconds, peak RSS (MB), its own summary."""
    command = [sys.executable, "-m", "pixelring2nmf.cli", "era", "--parquet", str(paths["parquet"])]
    command += ["--oms", str(paths["oms"]), "--out", str(out), "--xlsx", "--no-progress", "--force"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stdout = process.stdout.read()
    process.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"era failed ({status}): {stdout}")
    summary = json.loads((out / "era.json").read_text())
    return {
        "seconds": seconds,
        "rss_mb": usage.ru_maxrss / 1024,  # kB on Linux
        "summary": summary,
        "line": stdout.strip().splitlines()[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30000, 120000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pixelring2nmf-bench-era"))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per size")
    args = parser.parse_args()
    model = PixelRing2NMF.load()
    rows, checks = [], []
    for n_ls in args.sizes:
        paths = simulated_era(args.workdir, n_ls)
        runs = [run_era(paths, args.workdir / f"out_{n_ls}") for _ in range(args.repeats)]
        measured = runs[-1]
        n_read = measured["summary"]["n_ls"]
        comparison = compare_with_truth(
            pd.read_csv(args.workdir / f"out_{n_ls}" / "powergroup.csv"),
            pd.read_csv(paths["truth"], keep_default_na=False),
            model.unjudged_groups,
        )
        rates = sorted(n_read / r["seconds"] for r in runs)
        rows.append(
            {
                "n_ls": n_read,
                "file_mb": paths["parquet"].stat().st_size / 1e6,
                "seconds": float(np.median([r["seconds"] for r in runs])),
                "ls_per_s": float(np.median(rates)),
                "ls_per_s_min": rates[0],
                "inner_ls_per_s": float(
                    np.median([n_read / r["summary"]["seconds"] for r in runs])
                ),
                "rss_mb": max(r["rss_mb"] for r in runs),
                "flagged": measured["summary"]["n_flagged"],
                "rows": sum(measured["summary"]["rows_by_type"].values()),
                "repeats": len(runs),
            }
        )
        checks.append((n_read, comparison))
        print(measured["line"])
        print(
            f"  end to end {rows[-1]['ls_per_s']:.0f} LS/s (median; slowest "
            f"{rows[-1]['ls_per_s_min']:.0f}), peak RSS {rows[-1]['rss_mb']:.0f} MB"
        )
        print(f"  truth: {comparison.describe()}")
    write_section("era", "Era analysis: `pixelring2nmf era` end to end", report(rows, checks))
    return 0


def report(rows: list[dict], checks: list) -> str:
    lines = [
        "`python bench/era.py` — simulated eras of real-layout parquet (`list<list<double>>`,",
        "zstd, row groups of 1000 LS) with their OMS JSON, runs of 1000 LS with the simulator's",
        "default anomalies; `pixelring2nmf era --xlsx` with the shipped model in a fresh process per",
        f"run, {rows[0]['repeats']} fresh processes per size (median, slowest; largest peak RSS).",
        "Wall time is process start to exit (imports, reading, the model, tables, CSV, parquet,",
        "XLSX); peak RSS is the process's `ru_maxrss`. The data stay in the page cache between",
        "runs; this virtual machine's speed varies by +-30 % from run to run.",
        "",
        "| LS | parquet | end to end (median) | LS/s end to end: median (slowest) | LS/s inside `era` | peak RSS | flagged LS | table rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_ls']:,} | {r['file_mb']:.0f} MB | {r['seconds']:.1f} s | "
            f"**{r['ls_per_s']:,.0f}** ({r['ls_per_s_min']:,.0f}) | {r['inner_ls_per_s']:,.0f} | "
            f"**{r['rss_mb']:.0f} MB** | {r['flagged']} | {r['rows']} |"
        )
    slowest = min(r["ls_per_s_min"] for r in rows)
    ratio = rows[-1]["rss_mb"] / rows[0]["rss_mb"]
    lines += [
        "",
        f"Slowest end to end: {slowest:,.0f} LS/s (goal >= {GOAL_LS_PER_S:,.0f}: "
        f"{'met' if slowest >= GOAL_LS_PER_S else 'NOT met'}). Peak RSS at {rows[-1]['n_ls']:,} LS "
        f"/ at {rows[0]['n_ls']:,} LS = **{ratio:.2f}** (goal <= {GOAL_RSS_RATIO}: "
        f"{'met' if ratio <= GOAL_RSS_RATIO else 'NOT met'}).",
        "",
        "Tables against the simulator's truth (every injected Multi-Disk, Quarter and Single-Disk",
        "range as one row with its exact first/last LS, type and groups; rows where nothing was",
        "injected):",
        "",
    ]
    for n_ls, comparison in checks:
        lines.append(f"- {n_ls:,} LS: {comparison.describe()}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
