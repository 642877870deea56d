"""Options that several commands share, and the argparse types that check values as they parse.

A value that cannot work (a port of 80000, zero workers, a negative rate) is refused by
argparse itself, with the usage line and exit code 2, before any file is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_PORT = 65535


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def port(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a TCP port in 1..{MAX_PORT}, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, default=None, help="model file (default: the shipped model)"
    )


def add_models(parser: argparse.ArgumentParser) -> None:
    """`--model FILE...`: one flag, several files, each run judged by the one whose period
    (`train --valid-runs`) covers it."""
    parser.add_argument(
        "--model",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="model file(s) (default: the shipped model); with several, each run is judged by "
        "the one whose period (train --valid-runs) covers it, and a run covered by none or by "
        "two is refused before any work",
    )


def add_oms(parser: argparse.ArgumentParser, *, several: bool = True) -> None:
    parser.add_argument(
        "--oms",
        type=Path,
        nargs="+" if several else None,
        default=None,
        help="OMS JSON file(s) for the DCS filter" if several else "OMS JSON for the DCS filter",
    )


def add_force(parser: argparse.ArgumentParser, what: str = "an existing --out") -> None:
    parser.add_argument("--force", action="store_true", help=f"overwrite {what}")


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_dials_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default="tracker", help="DIALS workspace (default tracker)")
    parser.add_argument(
        "--base-url",
        default=None,
        help="DIALS URL (default: $DIALS_BASE_URL, else the production DIALS)",
    )


def load_models(paths: list[Path] | None, exclude: list[str] | None = None, skip: bool = False):
    """The model files given (or the shipped one) as a ModelSet; a bad file is an
    ArtifactError, a bad --exclude-runs range an OptionError (one line each)."""
    from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH

    from ..model.periods import ModelSet, parse_run_range

    ranges = [parse_run_range(text, "--exclude-runs") for text in exclude or ()]
    return ModelSet.load(paths or [DEFAULT_MODEL_PATH], ranges, skip)


def load_model(path: Path | None):
    """The model file given, or the shipped one; a bad file is an ArtifactError (one line)."""
    from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, PixelRing2NMF

    return PixelRing2NMF.load(path or DEFAULT_MODEL_PATH)
