"""The `pixelring2nmf` command line: one subcommand per job, each implemented in its own module.

argparse (standard library) rather than typer: one dependency fewer and nothing the CLI needs
that argparse lacks. Each subcommand's module is imported only when that subcommand runs, so
`pixelring2nmf --help` stays instant and heavy libraries (pyarrow, matplotlib, scikit-learn,
mlserver) load only where needed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from . import __version__

# subcommand -> (module inside this package, function taking the parsed arguments)
_COMMANDS = {
    "simulate": ("simulate", "run_simulate"),
    "train": ("train", "run_train"),
    "predict": ("predict", "run_predict"),
    "build": ("dism", "run_build"),
    "serve": ("dism", "run_serve"),
    "make-test-data": ("testdata", "run_make_test_data"),
    "fetch-oms": ("omsclient", "run_fetch_oms"),
    "era": ("era", "run_era"),
    "plot": ("figures", "run_plot"),
    "fetch-dials": ("dials", "run_fetch_dials"),
    "dials-flags": ("dials", "run_dials_flags"),
}


# mlserver_model.bad_ROC's RULE_SIGNIFICANCE and RULE_ORIGINAL, written out rather than imported:
# that module loads numpy, and `--help` must stay instant (tests/test_cli.py checks they match).
RULES = ("significance", "original")


def _add_model_options(p: argparse.ArgumentParser, *, oms_nargs: str | None = "+") -> None:
    """--oms and --model, read alike by every command that runs the model."""
    p.add_argument(
        "--oms", type=Path, nargs=oms_nargs, default=None, help="OMS JSON for the DCS filter"
    )
    p.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")


def _add_rule(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rule",
        choices=RULES,
        default=RULES[0],
        help="bad-ROC rule: ours (default) or the original loss > 1e5",
    )


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a realistic DIALS parquet, OMS JSON and truth table of simulated runs",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.add_argument("--runs", type=int, default=5, help="number of runs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--ls-per-run", type=int, default=None, help="LS per run (default: random, 400-1200)"
    )
    p.add_argument("--first-run", type=int, default=390000, help="first run number")
    p.add_argument(
        "--anomaly-rate",
        type=float,
        default=None,
        help="injected anomalies per LS (default: a few per run, of every kind)",
    )
    p.add_argument("--clean", action="store_true", help="inject no anomaly (training data)")
    p.add_argument(
        "--detector-seed",
        type=int,
        default=2024,
        help="seed of the simulated detector (dead ROCs, gains); keep the default so that "
        "every simulation shares the detector of the shipped model (default 2024)",
    )
    p.add_argument("--era", default="Run2025Z", help="era used in the file name (default Run2025Z)")
    p.add_argument(
        "--scenario",
        choices=("era", "demo"),
        default="era",
        help="era: realistic runs with random anomalies (default); demo: one 750-LS run with "
        "exactly one Multi-Disk LS (a ROG dead on 3 disks) and a 3-LS Single-Disk anomaly",
    )
    p.add_argument(
        "--int-lists",
        action="store_true",
        help="write `data` as list<list<int32>> instead of list<list<double>> (the layout "
        "files saved from cmsdials have)",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the NMF on good LS of DIALS parquet files")
    p.add_argument("--parquet", type=Path, nargs="+", required=True, help="DIALS parquet file(s)")
    p.add_argument("--oms", type=Path, default=None, help="OMS JSON for the DCS filter")
    p.add_argument(
        "--exclude",
        type=Path,
        default=None,
        help="CSV of LS to leave out of training: run,ls_first,ls_last ranges, or run,ls rows "
        "(the simulator's truth.csv works as it is)",
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write (.joblib)")
    p.add_argument(
        "--force", action="store_true", help="overwrite an existing --out (e.g. the shipped model)"
    )
    p.add_argument("--components", type=int, default=5, help="NMF components (default 5)")
    p.add_argument(
        "--alpha-h", type=float, default=0.1, help="L2 regularisation of H (default 0.1)"
    )
    p.add_argument(
        "--passes", type=int, default=300, help="NMF solver passes over the data (default 300)"
    )
    p.add_argument("--max-ls", type=int, default=None, help="use at most this many good LS")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="flag the LS of a DIALS parquet file")
    p.add_argument("--parquet", type=Path, required=True, help="DIALS parquet file")
    _add_model_options(p, oms_nargs=None)
    p.add_argument("--out", type=Path, default=None, help="CSV of per-LS results")
    _add_rule(p)


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="validate template.yaml and write the DISM build folder")
    _add_server_options(p, "written to settings.json")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="build when needed and serve with MLServer (no Docker)")
    _add_server_options(p, "to listen on")


def _add_server_options(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument(
        "-f",
        "--template",
        type=Path,
        default=Path("template.yaml"),
        help="DISM template (default template.yaml; paths in it resolve from here)",
    )
    p.add_argument("--host", default="127.0.0.1", help=f"address {use} (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help=f"HTTP port {use} (default 8080)")


def _add_make_test_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-test-data", help="write test_data.pkl for test_predictions.py")
    p.add_argument("--parquet", type=Path, required=True, help="DIALS parquet file")
    p.add_argument("--oms", type=Path, default=None, help="OMS JSON to add its columns")
    p.add_argument("--batch-size", type=int, default=750, help="LS per batch (default 750)")
    p.add_argument("--batch-id", type=int, default=0, help="which batch (default 0)")
    p.add_argument(
        "--out", type=Path, default=Path("test_data.pkl"), help="pickle to write (test_data.pkl)"
    )


def _add_fetch_oms(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-oms", help="download OMS lumisections of runs (needs credentials)")
    p.add_argument("--runs", type=int, nargs="+", required=True, help="run numbers")
    p.add_argument("--out", type=Path, required=True, help="OMS JSON file to write")
    p.add_argument(
        "--via",
        choices=("oms", "dials"),
        default="oms",
        help="oms: the OMS API with an OMS application (default); dials: DIALS's OMS proxy "
        "with DIALS credentials",
    )
    _add_dials_connection(p)


def _add_dials_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default="tracker", help="DIALS workspace (default tracker)")
    p.add_argument(
        "--base-url",
        default=None,
        help="DIALS URL (default: $DIALS_BASE_URL, else the production DIALS)",
    )


def _add_fetch_dials(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch-dials", help="download the Ring 2 ME of runs from DIALS into a parquet (resumable)"
    )
    p.add_argument("--dataset", required=True, help="dataset regex, e.g. '/ZeroBias/Run2025C.*'")
    runs = p.add_mutually_exclusive_group(required=True)
    runs.add_argument("--runs", type=int, nargs="+", help="run numbers")
    runs.add_argument(
        "--run-range",
        type=int,
        nargs=2,
        metavar=("FIRST", "LAST"),
        help="all runs from FIRST to LAST (one query)",
    )
    p.add_argument("--out", type=Path, required=True, help="parquet file to write")
    p.add_argument("--force", action="store_true", help="download again over an existing --out")
    p.add_argument("--page-size", type=int, default=100, help="LS per page (default 100)")
    p.add_argument("--attempts", type=int, default=4, help="tries per page (default 4)")
    p.add_argument(
        "--retry-wait", type=float, default=5.0, help="seconds before the 2nd try, doubling"
    )
    _add_no_progress(p)
    _add_dials_connection(p)


def _add_dials_flags(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dials-flags",
        help="what a registered model flagged in DIALS, LS by LS against a local prediction",
    )
    p.add_argument("--model-id", type=int, required=True, help="DIALS id of the registered model")
    p.add_argument("--runs", type=int, nargs="+", required=True, help="run numbers")
    p.add_argument(
        "--parquet",
        type=Path,
        nargs="+",
        required=True,
        help="the same data DIALS judged (from fetch-dials)",
    )
    _add_model_options(p)
    p.add_argument("--out", type=Path, default=None, help="CSV of the LS flagged by either")
    _add_dials_connection(p)


def _add_era(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "era",
        help="run the model over whole eras (streamed) and write the experts' anomaly tables",
    )
    p.add_argument(
        "--parquet",
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR_OR_URL",
        help="DIALS parquet file(s), directories of them, or URLs read through fsspec "
        "(e.g. root://eosuser.cern.ch//eos/...; kept as given, opened where the work runs)",
    )
    _add_model_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument("--xlsx", action="store_true", help="also write era.xlsx, a sheet per table")
    p.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS|local:N",
        help="judge on a Dask cluster: the address of a running scheduler (tcp://host:8786, "
        "tls://...), or local:N for N worker processes on this machine; the same files come out",
    )
    p.add_argument(
        "--task-ls",
        type=int,
        default=None,
        metavar="N",
        help="LS per task, in whole row groups (default: 1000; with --dask, about 4 tasks "
        "per worker connected at the start, 1000 to 5000)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    _add_rule(p)
    p.add_argument(
        "--persistent-fraction",
        type=float,
        default=0.5,
        help="a group anomalous in more than this share of a run's DCS-good LS is reported "
        "once as persistent (default 0.5)",
    )
    p.add_argument(
        "--persistent-min-ls",
        type=int,
        default=50,
        help="runs with fewer DCS-good LS have no persistent groups (default 50)",
    )
    _add_no_progress(p)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="plot one LS (occupancy, reconstruction, significance, bad ROCs) or an era's runs",
    )
    p.add_argument("--parquet", type=Path, nargs="+", default=None, help="DIALS parquet(s)/dirs")
    p.add_argument("--run", type=int, default=None, help="run of the LS to plot")
    p.add_argument("--ls", type=int, default=None, help="lumisection to plot")
    _add_model_options(p)
    _add_rule(p)
    p.add_argument("--era", type=Path, default=None, help="an `era` output directory")
    p.add_argument("--runs", type=int, nargs="+", default=None, help="with --era: these runs")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="figure file: .png (one file per run with --era) or .pdf (one page per run)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelring2nmf",
        description="NMF anomaly detection for Ring 2 of the CMS forward pixel detector.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_simulate,
        _add_train,
        _add_predict,
        _add_build,
        _add_serve,
        _add_make_test_data,
        _add_fetch_oms,
        _add_era,
        _add_plot,
        _add_fetch_dials,
        _add_dials_flags,
    ):
        add(sub)
    return parser


def _log_to_stdout(verbose: bool) -> None:
    """Every log line of a command on stdout, with one '[LEVEL]: ' prefix (errors: stderr).

    The pipeline's own handler (for servers) is taken off so its lines are not printed twice;
    `force` replaces the previous command's handler when several run in one process.
    """
    from mlserver_model.pixelring2nmf import HANDLER_NAME, LOGGER, OnePrefixFormatter

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OnePrefixFormatter())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    for own in [h for h in LOGGER.handlers if h.get_name() == HANDLER_NAME]:
        LOGGER.removeHandler(own)
    LOGGER.propagate = True
    LOGGER.setLevel(logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stdout(args.verbose)
    module_name, function_name = _COMMANDS[args.command]
    module = importlib.import_module(f"{__package__}.{module_name}")
    try:
        return int(getattr(module, function_name)(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as error:
        # Expected failures (bad input, missing files) end with one clear line, not a traceback.
        print(f"pixelring2nmf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
