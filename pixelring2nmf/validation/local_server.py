"""Start, query and stop a local MLServer process: shared by the tests that serve and bench/.

Not on the serving path (MLServer itself runs there); `requests` is imported where it is used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

READY_PATH = "/v2/health/ready"
IMAGE_PYTHON_VAR = "PIXELRING2NMF_IMAGE_PYTHON"  # overrides <repo>/.venv-image/bin/python


def image_python(repo: Path) -> Path:
    """The Python of the image-emulation venv (scripts/make_image_venv.sh), maybe absent."""
    return Path(os.environ.get(IMAGE_PYTHON_VAR) or repo / ".venv-image" / "bin" / "python")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalServer:
    """A started MLServer process and where to reach it."""

    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_local_server(
    command: list[str],
    port: int,
    log_path: Path,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout_s: float = 120.0,
    server_class: type[LocalServer] = LocalServer,
) -> LocalServer:
    """Start the process and return once /v2/health/ready answers 200 (bounded wait).

    The wait polls the endpoint and, between polls, waits on the process itself, so a server
    that dies is reported at once with the end of its log.
    """
    import requests

    with open(log_path, "wb") as log_handle:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log_handle, stderr=subprocess.STDOUT
        )
    server = server_class(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"MLServer exited with code {process.returncode} before becoming ready:\n"
                f"{server.log()[-4000:]}"
            )
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(server.base_url + READY_PATH, timeout=2).status_code == 200:
                return server
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
    stop_local_server(server)
    raise RuntimeError(f"MLServer not ready after {timeout_s} s:\n{server.log()[-4000:]}")


def stop_local_server(server: LocalServer) -> None:
    """Stop the process we started, by its PID: SIGTERM, then SIGKILL if it hangs."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=30)


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process in MB, from /proc (Linux).

    With parallel_workers 0 the models run inside the MLServer process, so its figures are
    what a request costs; the benchmarks read them before and after.
    """
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (MLServer's worker processes), from /proc (Linux)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pids += process_tree(int(child))
    return pids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB: what a pod's limit counts."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += memory_mb(member).get("VmRSS", 0.0)
    return total


def post_infer(server: LocalServer, model: str, body: bytes, timeout_s: float):
    """POST a V2 inference request already encoded as JSON; return (seconds, response).

    The body is sent as bytes so that every request of a benchmark carries the same payload
    and no client-side encoding is timed.
    """
    import requests

    start = time.perf_counter()
    response = requests.post(
        f"{server.base_url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=timeout_s,
    )
    return time.perf_counter() - start, response
