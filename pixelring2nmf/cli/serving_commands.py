"""Commands of serving: `build` the DISM folder, `serve` it with MLServer (no Docker)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .options import port


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("build", help="validate template.yaml and write the DISM build folder")
    _add_server_options(p, "written to settings.json")
    p.set_defaults(handler=run_build)
    p = commands.add_parser("serve", help="build when needed and serve with MLServer (no Docker)")
    _add_server_options(p, "to listen on")
    p.set_defaults(handler=run_serve)


def _add_server_options(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument(
        "-f",
        "--template",
        type=Path,
        default=Path("template.yaml"),
        help="DISM template (default template.yaml; paths in it resolve from here)",
    )
    p.add_argument("--host", default="127.0.0.1", help=f"address {use} (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help=f"HTTP port {use} (default 8080)")


def run_build(args: argparse.Namespace) -> int:
    from ..serving.dism import build

    for key, folder in build(args.template, host=args.host, http_port=args.port).items():
        print(f"Built {key} in {folder}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Build when needed, then become `mlserver start <build folder>` (same PID, same signals)."""
    from ..serving.dism import check_port_free, mlserver_command, prepare_serving

    check_port_free(args.host, args.port)
    properties, folder, rebuilt = prepare_serving(args.template, args.host, args.port)
    print(f"Built {folder.name} in {folder}" if rebuilt else f"{folder} is up to date", flush=True)
    print(
        f"Serving {properties.Name} on http://{args.host}:{args.port} "
        f"(POST /v2/models/{properties.Name}/infer); Ctrl+C stops",
        flush=True,
    )
    # Unbuffered, so the server's log lines reach a pipe or a log file as they happen.
    os.environ["PYTHONUNBUFFERED"] = "1"
    command = mlserver_command(folder.resolve())
    os.execv(command[0], command)
    return 0  # not reached: execv replaces this process
