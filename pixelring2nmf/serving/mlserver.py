"""`pixelring2nmf serve`: `dismcli start-api` without Docker, a local MLServer on a build folder.

What production runs is `mlserver start /mnt/<Name>` on the build folder with MLServer's
defaults (DOMAIN.md 14). Locally:
- settings go through MLServer's `MLSERVER_*` environment variables, never into the build
  folder (dism.py): the address, the HTTP port, a free gRPC port (gRPC cannot be switched off,
  and port 0 made MLServer log "running on :0"), no metrics server, debug off (a 500 would
  send the traceback to the client), no worker processes;
- the folder is served through a link named after the model, as `/mnt/<Name>` in production:
  MLServer warns when a model's folder is named otherwise;
- the model is loaded here first (`preflight`), so that a bad model file ends `serve` with one
  line instead of a server that starts and stops;
- MLServer runs as a child in a session of its own (the terminal's Ctrl-C reaches only
  `serve`, which stops it with SIGTERM: MLServer logs a CancelledError traceback on SIGINT),
  through launcher.py (ready only with a loaded model, non-zero exit when it failed), and dies
  with `serve` if `serve` is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import DataError, OptionError
from .dism import MODEL_SETTINGS_FILE

LAUNCHER = Path(__file__).with_name("launcher.py")
# Runs a script file without putting its folder on sys.path (runpy does not add a file's
# folder, `python FILE` would); works with any Python that has MLServer.
_RUN_FILE = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
# `python -m mlserver` does not exist (no __main__) and `-m mlserver.cli.main` warns about a
# double import; calling the console script's function works in MLServer 1.5 and 1.7.
_MLSERVER_MAIN = "import sys; from mlserver.cli.main import main; sys.argv[0] = 'mlserver'; main()"
STOP_TIMEOUT_S = 30.0


def mlserver_start_command(folder: Path, python: str | Path = sys.executable) -> list[str]:
    """`mlserver start <folder>` exactly as production runs it, with the given Python's MLServer
    (never another environment's `mlserver` from PATH)."""
    return [str(python), "-c", _MLSERVER_MAIN, "start", str(folder)]


def serve_command(folder: Path, python: str | Path = sys.executable) -> list[str]:
    """`mlserver start <folder>` through launcher.py (module docstring)."""
    return [str(python), "-c", _RUN_FILE, str(LAUNCHER), "start", str(folder)]


def mlserver_environment(host: str, http_port: int, grpc_port: int) -> dict[str, str]:
    """The MLSERVER_* settings of a local server (module docstring); PYTHONUNBUFFERED so that
    its log lines reach a pipe or a file as they happen, and no byte code written into the
    build folder, which `dismcli package` would zip."""
    return {
        "MLSERVER_HOST": host,
        "MLSERVER_HTTP_PORT": str(http_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_ENDPOINT": "",
        "MLSERVER_DEBUG": "false",
        "MLSERVER_PARALLEL_WORKERS": "0",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # as start-api: nothing written into the build
    }


def check_port_free(host: str, port: int) -> None:
    """Fail now, in one line, rather than after "Loaded model" with uvicorn's tracebacks."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OptionError(
                f"cannot listen on {host}:{port} ({error.strerror}): another server is using "
                "it? Choose another with --port"
            ) from None


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def preflight(folder: Path) -> str:
    """Load the build folder's model as the handler will, or raise one user error; its name.

    A model file that cannot be loaded is an ArtifactError naming the file (the command line's
    one line, exit 2), before any server starts.
    """
    from mlserver_model.joint import load_model

    try:
        settings = json.loads((folder / MODEL_SETTINGS_FILE).read_text(encoding="utf-8"))
        name, uri = settings["name"], settings["parameters"]["uri"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{folder / MODEL_SETTINGS_FILE}: not a model-settings file ({error})"
        ) from None
    load_model(folder / uri)  # a one-ring or a joint model, as the handler loads it
    return str(name)


def run_mlserver(folder: Path, name: str, host: str, http_port: int) -> int:
    """Serve `folder` until MLServer stops; its exit code. Ctrl-C or SIGTERM (both arrive as
    KeyboardInterrupt, the command line's convention) stop MLServer with SIGTERM first and
    are raised again once it has stopped; a second one kills it."""
    env = {**os.environ, **mlserver_environment(host, http_port, free_port(host))}
    with tempfile.TemporaryDirectory(prefix="pixelring2nmf-serve-") as links:
        served = Path(links) / name  # the model's folder, named as the model (/mnt/<Name>)
        served.symlink_to(folder.resolve(), target_is_directory=True)
        parent = os.getpid()
        process = subprocess.Popen(
            serve_command(served),
            env=env,
            start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),  # serve runs no other thread
        )
        try:
            return process.wait()
        except KeyboardInterrupt:
            _stop(process)
            raise


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        process.kill()
        process.wait()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill MLServer when `serve` dies (a killed `serve` leaves no orphan server
    in its own session); elsewhere MLServer outlives a killed `serve`."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # `serve` died before the request took effect
        os._exit(1)
