"""Commands of serving: `build` the DISM folder, `serve` it with MLServer (no Docker)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import port


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "build", help="validate template.yaml and write the DISM build folder as dismcli does"
    )
    _add_template_option(p)
    p.add_argument(
        "--runs-from-model",
        action="store_true",
        help="when the template's MinRunNumber/MaxRunNumber disagree with the model's period "
        "(train --valid-runs), write the model's into the built template instead of refusing",
    )
    p.set_defaults(handler=run_build)
    p = commands.add_parser("serve", help="build when needed and serve with MLServer (no Docker)")
    _add_template_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="HTTP port to listen on (default 8080)")
    p.set_defaults(handler=run_serve)


def _add_template_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--template",
        type=Path,
        default=Path("template.yaml"),
        help="DISM template (default template.yaml; paths in it resolve from here)",
    )


def run_build(args: argparse.Namespace) -> int:
    from ..serving.dism import build

    for key, folder in build(
        args.template, runs_from_model=args.runs_from_model, report=print
    ).items():
        print(f"Built {key} in {folder}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Build when needed, check the model loads, then run MLServer until it stops."""
    from ..errors import DataError
    from ..serving.dism import prepare_serving
    from ..serving.mlserver import check_port_free, preflight, run_mlserver

    check_port_free(args.host, args.port)
    folder, rebuilt = prepare_serving(args.template)
    print(f"Built {folder.name} in {folder}" if rebuilt else f"{folder} is up to date", flush=True)
    name = preflight(folder)
    print(
        f"Serving {name} on http://{args.host}:{args.port} "
        f"(POST /v2/models/{name}/infer); Ctrl+C stops",
        flush=True,
    )
    code = run_mlserver(folder, name, args.host, args.port)
    if code != 0:
        raise DataError(f"MLServer stopped with exit code {code} (its log is above)")
    return 0
