"""(run, LS) keys: the one definition of a repeated lumisection, for maps and OMS rows alike.

DIALS stores one histogram per LS and OMS one row per LS, so a key seen twice means that two
files, two MEs or two downloads were put together. The policy for maps, everywhere in the
toolkit: every LS is judged once, from its *first* copy in input order (files in the order
given, then rows in file order), and the command says how many copies it dropped, where, and
ends incomplete (exit code 2). OMS rows are not maps: a repeated OMS row is refused, since its
two copies may disagree on the DCS flags.
"""

from __future__ import annotations

import numpy as np


def repeated_mask(run: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """(N,) bool: True for every (run, LS) that already appeared earlier in the given order."""
    run = np.asarray(run, dtype=np.int64)
    ls = np.asarray(ls, dtype=np.int64)
    repeated = np.zeros(run.size, dtype=bool)
    if run.size < 2:
        return repeated
    order = np.lexsort((ls, run))  # stable: equal keys keep their input order
    same = (run[order][1:] == run[order][:-1]) & (ls[order][1:] == ls[order][:-1])
    repeated[order[1:][same]] = True
    return repeated


def examples(run: np.ndarray, ls: np.ndarray, mask: np.ndarray, n: int = 5) -> list[tuple]:
    """Up to `n` distinct (run, LS) pairs where `mask` is true, sorted: what a message shows."""
    pairs = sorted({(int(r), int(s)) for r, s in zip(run[mask], ls[mask], strict=True)})
    return pairs[:n]


def consecutive_ranges(values: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique integers -> inclusive (first, last) runs of consecutive values.

    LS ranges of a certification JSON and run ranges in messages are both this.
    """
    values = np.asarray(values, dtype=np.int64)
    if not values.size:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    firsts = np.r_[values[0], values[breaks + 1]]
    lasts = np.r_[values[breaks], values[-1]]
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]
