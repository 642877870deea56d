"""Server memory and health probes under concurrent requests, on both MLServer versions.

    python bench/memory.py [--no-image] [--scenarios 5000x1 5000x2 ...]

The build folder (`pixelring2nmf build`, the shipped model) is served as production runs it:
`mlserver start /mnt/pixel-ring2-nmf` with MLServer's defaults (one worker process, debug on,
a metrics server) but for free loopback ports, by the main environment's MLServer 1.7 and by
the image venv's 1.5.0, a fresh server per scenario. A scenario `<N>x<k>` sends k requests of N
LS at once from k threads (DIALS's JSON: flattened INT32 Ring2 and the 8 DCS flags, assembled
as text from 750 simulated maps); `<N>nx<k>` sends the maps as nested lists (MLServer's own
parsing, which the serving guard does not do for it). While the clients run, the resident
memory of the server and its worker process is summed every 50 ms (the pod's memory limit
counts both) and `/v2/health/live` is probed every 250 ms, as a liveness probe would. The
table gives each scenario's statuses, the peak, the slowest answer, and the probes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model.dftools import DCS_FLAGS
from mlserver_model.pixelring2nmf import MODEL_NAME
from mlserver_model.preprocessor import insert_cross
from mlserver_model.serving_guard import MB, GuardSettings
from pixelring2nmf.serving.dism import build
from pixelring2nmf.serving.mlserver import mlserver_start_command
from pixelring2nmf.sim import simulate
from pixelring2nmf.validation.local_server import (
    free_port,
    image_python,
    start_local_server,
    stop_local_server,
    tree_rss_mb,
)

REPO = Path(__file__).resolve().parents[1]
BLOCK_LS = 750  # maps are made once for a block and repeated: memory does not depend on values
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 900.0
SAMPLE_S = 0.05
PROBE_S = 0.25
SCENARIOS = ("5000x1", "5000x2", "5000x3", "3000x3", "750x32", "5000nx1", "5001x1")


def template_limit_mb() -> float:
    """The memory limit of template.yaml's resource, in MB (e.g. 3Gi -> 3221)."""
    content = yaml.safe_load((REPO / "template.yaml").read_text())
    (resource,) = content["Resources"].values()
    limit = resource["Properties"]["Resources"]["Limits"]["memory"]
    units = {"Gi": 2**30, "Mi": 2**20, "G": 10**9, "M": 10**6}
    unit = next(u for u in units if limit.endswith(u))
    return float(limit.removesuffix(unit)) * units[unit] / MB


def block_of_maps() -> np.ndarray:
    rng = np.random.default_rng(0)
    occupancy = np.linspace(900, 300, BLOCK_LS)
    expected = simulate.expected_maps(simulate.default_detector(), occupancy)
    return insert_cross(simulate.sample_maps(expected, rng)).astype(np.int32)


def request_body(n_ls: int, block: np.ndarray, nested: bool = False) -> bytes:
    """DIALS's JSON for n_ls LS, assembled from the block's text (no 40 M Python ints)."""
    if nested:
        per_ls = [json.dumps(m.tolist()) for m in block]
    else:
        per_ls = [json.dumps(m.ravel().tolist())[1:-1] for m in block]
    data = ", ".join(per_ls[i % BLOCK_LS] for i in range(n_ls))
    flags = ", ".join(["true"] * n_ls)
    inputs = [
        f'{{"name": "Ring2", "shape": [{n_ls}, 140, 56], "datatype": "INT32", "data": [{data}]}}'
    ]
    inputs += [
        f'{{"name": "oms_lumisection_info__{flag}", "shape": [{n_ls}], "datatype": "BOOL", '
        f'"data": [{flags}]}}'
        for flag in DCS_FLAGS
    ]
    return ('{"inputs": [' + ", ".join(inputs) + "]}").encode()


@dataclass
class Scenario:
    name: str
    n_ls: int
    clients: int
    nested: bool

    @classmethod
    def parse(cls, text: str) -> Scenario:
        size, clients = text.split("x")
        return cls(text, int(size.rstrip("n")), int(clients), size.endswith("n"))


@dataclass
class Outcome:
    environment: str
    scenario: Scenario
    body_mb: float
    idle_mb: float
    peak_mb: float = 0.0
    answers: list[tuple[int | str, float]] = field(default_factory=list)  # (status, seconds)
    probes_s: list[float] = field(default_factory=list)
    probe_failures: int = 0


def post(port: int, body: bytes) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        connection.request(
            "POST",
            f"/v2/models/{MODEL_NAME}/infer",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status, time.perf_counter() - started
    except OSError as error:  # recorded: a reset is a result too
        return type(error).__name__, time.perf_counter() - started


def measure(
    label: str, python: Path, folder: Path, scenario: Scenario, body: bytes, tmp: Path
) -> Outcome:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
    }
    log = tmp / f"server-{label.split()[1]}-{scenario.name}.log"
    server = start_local_server(
        mlserver_start_command(folder, python),
        port,
        log,
        cwd=folder.parent,
        env=env,
        timeout_s=START_TIMEOUT_S,
    )
    pid = server.process.pid
    outcome = Outcome(label, scenario, len(body) / MB, tree_rss_mb(pid))
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            outcome.peak_mb = max(outcome.peak_mb, tree_rss_mb(pid))
            stop.wait(SAMPLE_S)

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.request("GET", "/v2/health/live")
                ok = connection.getresponse().status == 200
                connection.close()
            except OSError:
                ok = False
            outcome.probes_s.append(time.perf_counter() - started)
            outcome.probe_failures += not ok
            stop.wait(PROBE_S)

    def client() -> None:
        outcome.answers.append(post(port, body))

    watchers = [threading.Thread(target=sample), threading.Thread(target=probe)]
    clients = [threading.Thread(target=client) for _ in range(scenario.clients)]
    try:
        for thread in watchers + clients:
            thread.start()
        for thread in clients:
            thread.join()
        stop.wait(1.0)  # one more second of samples: memory freed after the last answer
    finally:
        stop.set()
        for thread in watchers:
            thread.join()
        stop_local_server(server)
    return outcome


def row(o: Outcome, limit_mb: float) -> str:
    statuses: dict[str, list[float]] = {}
    for status, seconds in o.answers:
        statuses.setdefault(str(status), []).append(seconds)
    shown = ", ".join(
        f"{len(t)} x {s}" + (f" ({min(t):.1f}-{max(t):.1f} s)" if s != "200" else "")
        for s, t in sorted(statuses.items())
    )
    slowest = max(seconds for _, seconds in o.answers)
    within = "yes" if o.peak_mb <= limit_mb else "**NO**"
    over_1s = sum(p > 1.0 for p in o.probes_s)
    return (
        f"| {o.environment} | {o.scenario.name} | {o.body_mb:.0f} | {shown} | {o.idle_mb:.0f} | "
        f"**{o.peak_mb:,.0f}** | {within} | {slowest:.1f} | {max(o.probes_s):.2f} / "
        f"{statistics.median(o.probes_s):.3f} | {over_1s} of {len(o.probes_s)} "
        f"(failed {o.probe_failures}) |"
    )


def report(outcomes: list[Outcome], limit_mb: float, started: float, load: tuple) -> str:
    g = GuardSettings()
    rows = "\n".join(row(o, limit_mb) for o in outcomes)
    worst = max(outcomes, key=lambda o: o.peak_mb)
    return f"""
`python bench/memory.py` — memory of the served model under concurrent requests, and health
probes meanwhile. Each row is a fresh `mlserver start /mnt/{MODEL_NAME}` on the build folder
(the shipped model) with **MLServer's defaults, as production runs it** (one worker process,
debug on, a metrics server; free loopback ports), by the main environment's MLServer 1.7.1 or
the image venv's 1.5.0. `NxK`: K clients send a request of N LS at once (DIALS's JSON:
flattened INT32 `Ring2` + the 8 DCS flags; maps simulated, 300-900 clusters per ROC, repeated
in blocks of 750 LS); `Nn`: the maps as nested lists, which MLServer parses itself; 5001 LS is
one more than the model accepts. Peak: the resident memory of the server and its worker process,
summed every {SAMPLE_S * 1000:.0f} ms (what the pod's limit counts); template.yaml's limit is
{limit_mb:,.0f} MB. Probes: `GET /v2/health/live` every {PROBE_S} s during the scenario, their
slowest and median latency, and how many took more than 1 s.

The serving guard admits requests against {g.budget_bytes / MB:,.0f} MB of estimated request
memory (Content-Length x {g.fast_path_cost:g} on the numpy path, x {g.mlserver_path_cost:g}
on MLServer's); what does not fit waits with its body unread (up to {g.queue_wait_s:.0f} s,
{g.queue_length} at most), then gets 503 with Retry-After.

| MLServer | scenario | body (MB) | answers | idle (MB) | peak (MB) | within the limit | slowest answer (s) | probes: max / median (s) | probes > 1 s |
|---|---|---|---|---|---|---|---|---|---|
{rows}

Highest peak: {worst.peak_mb:,.0f} MB ({worst.environment}, {worst.scenario.name}), against
{limit_mb:,.0f} MB. Load average (1/5/15 min) before {load[0][0]:.1f}/{load[0][1]:.1f}/
{load[0][2]:.1f}, after {load[1][0]:.1f}/{load[1][1]:.1f}/{load[1][2]:.1f} (2 cores; client and
server share them); total {(time.monotonic() - started) / 60:.0f} min.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--no-image", action="store_true", help="only the main environment")
    args = parser.parse_args()
    started, load_before = time.monotonic(), os.getloadavg()
    environments = [("MLServer 1.7.1 (main)", Path(sys.executable))]
    image = image_python(REPO)
    if not args.no_image and image.exists():
        environments.append(("MLServer 1.5.0 (image)", image))
    scenarios = [Scenario.parse(text) for text in args.scenarios]
    block = block_of_maps()
    limit_mb = template_limit_mb()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["BUILD_PATH"] = str(tmp / "build")
        (built,) = build(REPO / "template.yaml").values()
        folder = tmp / "mnt" / MODEL_NAME  # as start-api mounts it
        shutil.copytree(built, folder)
        for scenario in scenarios:
            body = request_body(scenario.n_ls, block, scenario.nested)
            for label, python in environments:
                outcome = measure(label, python, folder, scenario, body, tmp)
                outcomes.append(outcome)
                print(row(outcome, limit_mb), flush=True)
            del body
    text = report(outcomes, limit_mb, started, (load_before, os.getloadavg()))
    print(text)
    write_section("memory", "Memory and probes under concurrent requests", text)
    return 0 if all(o.peak_mb <= limit_mb for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
