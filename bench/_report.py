"""Write one benchmark's results into its own section of BENCHMARKS.md.

Each script owns a section between `<!-- bench:NAME -->` markers, so the scripts can be run in
any order and each rerun replaces only its own numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts in `bench/` (each rewrites its own section). Every ratio compares\n"
    "two measurements taken in the same process, on the same data, one after the other.\n"
)


def machine() -> str:
    import numpy as np

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, numpy {np.__version__}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    )


def write_section(name: str, title: str, body: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n\n_Machine: {machine()}_\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text}\n{section}\n"
    BENCHMARKS.write_text(text)
    print(f"[{name}] written to {BENCHMARKS}")
