"""Serving latency of a 750-LS DIALS request through MLServer, against a do-nothing handler.

    python bench/serving.py [--rounds 15] [--warmups 2]

One MLServer serves two models side by side: the folder `pixelring2nmf build` writes (as
DIALS would get it) and a do-nothing handler that receives the same parsed request and
answers Flag/Metric of the right length without looking at the data. The same JSON bytes
(what test_predictions.py sends: flattened INT32 Ring2 [750, 140, 56] plus the
oms_lumisection_info__* tensors) are POSTed to each, interleaved, so both medians come from
the same run and the ratio isolates the cost of our handler over MLServer's own (HTTP, JSON
parsing, pydantic). Done once with the main environment's MLServer and, when the image venv
exists (.venv-image or $PIXELRING2NMF_IMAGE_PYTHON), once with MLServer 1.5.0 serving a copy
of the build folder. Exit code 1 when a ratio of medians exceeds 1.25.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

from mlserver_model import simulator
from mlserver_model.dism_build import mlserver_command, server_settings
from mlserver_model.local_server import LocalServer as Server
from mlserver_model.local_server import free_port, start_local_server
from mlserver_model.local_server import stop_local_server as stop_server
from mlserver_model.testdata import make_test_data

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "pixel-ring2-nmf"
BUILD_KEY = "PixelRing2NMF"
NOOP_NAME = "do-nothing"
IMAGE_PYTHON = Path(
    os.environ.get("PIXELRING2NMF_IMAGE_PYTHON") or REPO / ".venv-image" / "bin" / "python"
)
N_LS = 750
MAX_RATIO = 1.25
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 300.0

# The do-nothing model: MLServer parses the request for it exactly as for ours; it only reads
# N from the Ring2 shape, so the answer (and its encoding) has the same size as ours.
NOOP_SOURCE = '''"""Do-nothing MLServer model: the baseline of bench/serving.py."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class DoNothing(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        n_ls = next(int(t.shape[0]) for t in payload.inputs if t.name == "Ring2")
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                ResponseOutput(name="Flag", shape=[n_ls], datatype="BOOL", data=[False] * n_ls),
                ResponseOutput(name="Metric", shape=[n_ls], datatype="FP32", data=[0.0] * n_ls),
            ],
        )
'''


@dataclass
class Measurement:
    environment: str
    mlserver_version: str
    ours_s: list[float]
    noop_s: list[float]
    rss_idle_mb: float
    rss_after_mb: float
    hwm_mb: float
    n_flagged: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours_s) / statistics.median(self.noop_s)


# --------------------------------------------------------------------------- request


def load_request_builder() -> Any:
    """test_predictions.py (a script, not a package member): its build_request is DIALS's."""
    spec = importlib.util.spec_from_file_location("test_predictions", REPO / "test_predictions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_request_body(tmp: Path) -> bytes:
    """The 750-LS demo run (one Multi-Disk LS) as DIALS's JSON, serialised once (~30 MB)."""
    paths = simulator.simulate(tmp / "demo", runs=1, seed=1, scenario="demo")
    batch = make_test_data(paths["parquet"], paths["oms"], batch_size=N_LS, batch_id=0)
    body = load_request_builder().build_request(batch, None)
    return json.dumps(body).encode()


# --------------------------------------------------------------------------- model folders


def build_model_folder(parent: Path) -> Path:
    """`pixelring2nmf build` with BUILD_PATH=parent: the folder DIALS would serve."""
    env = {**os.environ, "BUILD_PATH": str(parent)}
    subprocess.run(
        [sys.executable, "-m", "mlserver_model.cli", "build"],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=env,
    )
    return parent / BUILD_KEY


def write_noop_folder(parent: Path) -> Path:
    folder = parent / "noop"
    folder.mkdir(parents=True)
    (folder / "noop_handler.py").write_text(NOOP_SOURCE)
    settings = {
        "name": NOOP_NAME,
        "implementation": "noop_handler.DoNothing",
        "parameters": {"version": "0.1.0"},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def write_server_settings(parent: Path) -> int:
    """settings.json of the served parent folder, like the build's, on a free HTTP port."""
    port = free_port()
    (parent / "settings.json").write_text(json.dumps(server_settings("127.0.0.1", port)))
    return port


# --------------------------------------------------------------------------- server


def start_server(command: list[str], port: int, log_path: Path, env: dict[str, str]) -> Server:
    """Start MLServer and return once /v2/health/ready answers 200 (bounded wait)."""
    return start_local_server(
        command, port, log_path, cwd=log_path.parent, env=env, timeout_s=START_TIMEOUT_S
    )


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) in MB; with parallel_workers 0 the models run in this process."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values


# --------------------------------------------------------------------------- measurement


def post(server: Server, model: str, body: bytes) -> tuple[float, requests.Response]:
    start = time.perf_counter()
    response = requests.post(
        f"{server.base_url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=REQUEST_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{model}: HTTP {response.status_code}: {response.text[:1000]}")
    return elapsed, response


def count_flagged(response: requests.Response) -> int:
    """Number of flagged LS in our answer, after checking Flag has one value per LS."""
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    flags = outputs["Flag"]["data"]
    if len(flags) != N_LS or len(outputs["Metric"]["data"]) != N_LS:
        raise RuntimeError(f"Flag/Metric must hold {N_LS} values, got {len(flags)}")
    return int(np.count_nonzero(flags))


def measure(
    environment: str,
    command: list[str],
    log_path: Path,
    port: int,
    env: dict[str, str],
    body: bytes,
    args: argparse.Namespace,
) -> Measurement:
    server = start_server(command, port, log_path, env)
    try:
        version = requests.get(f"{server.base_url}/v2", timeout=10).json()["version"]
        idle = memory_mb(server.process.pid)
        for _ in range(args.warmups):
            post(server, MODEL_NAME, body)
            post(server, NOOP_NAME, body)
        ours, noop, flagged = [], [], set()
        for _ in range(args.rounds):
            elapsed, response = post(server, MODEL_NAME, body)
            ours.append(elapsed)
            flagged.add(count_flagged(response))
            noop.append(post(server, NOOP_NAME, body)[0])
        after = memory_mb(server.process.pid)
    finally:
        stop_server(server)
    if len(flagged) != 1:
        raise RuntimeError(f"{environment}: answers differ between rounds: {sorted(flagged)}")
    result = Measurement(
        environment,
        version,
        ours,
        noop,
        idle["VmRSS"],
        after["VmRSS"],
        after["VmHWM"],
        flagged.pop(),
    )
    print(f"[{environment}] mlserver {version}: ratio {result.ratio:.2f}", flush=True)
    return result


def main_environment(tmp: Path, body: bytes, args: argparse.Namespace) -> Measurement:
    """Main venv: the build folder and the do-nothing folder under one `mlserver start`."""
    parent = tmp / "main" / "models"
    build_model_folder(parent)
    write_noop_folder(parent)
    port = write_server_settings(parent)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = mlserver_command(parent)
    return measure("main", command, tmp / "main" / "server.log", port, env, body, args)


def image_environment(tmp: Path, body: bytes, args: argparse.Namespace) -> Measurement:
    """Image venv: a copy of the build folder (nothing of the repo visible) beside the no-op."""
    parent = tmp / "image" / "mnt"
    shutil.copytree(tmp / "main" / "models" / BUILD_KEY, parent / MODEL_NAME)
    write_noop_folder(parent)
    port = write_server_settings(parent)
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    command = mlserver_command(parent, IMAGE_PYTHON)
    return measure("image", command, tmp / "image" / "server.log", port, env, body, args)


# --------------------------------------------------------------------------- report


def table_rows(m: Measurement) -> str:
    def cells(times: list[float]) -> str:
        median = statistics.median(times)
        p90 = float(np.percentile(times, 90))
        return f"{median * 1e3:.0f} ms | {p90 * 1e3:.0f} ms | {N_LS / median:.0f}"

    name = f"{m.environment} (MLServer {m.mlserver_version})"
    verdict = "ok" if m.ratio <= MAX_RATIO else f"**above {MAX_RATIO}**"
    return (
        f"| {name} | ours (`{MODEL_NAME}`) | {cells(m.ours_s)} | **{m.ratio:.2f}** ({verdict}) "
        f"| {m.rss_idle_mb:.0f} / {m.rss_after_mb:.0f} / {m.hwm_mb:.0f} MB |\n"
        f"| {name} | do-nothing handler | {cells(m.noop_s)} | 1 | same server |"
    )


def report(
    results: list[Measurement], body_mb: float, args: argparse.Namespace, image_note: str
) -> str:
    rows = "\n".join(table_rows(m) for m in results)
    failed = [m.environment for m in results if m.ratio > MAX_RATIO]
    flagged = ", ".join(f"{m.environment}: {m.n_flagged}" for m in results)
    verdict = (
        f"**FAILED**: ratio above {MAX_RATIO} in {', '.join(failed)}."
        if failed
        else f"Passed: every ratio is at most {MAX_RATIO}."
    )
    return f"""
`python bench/serving.py` — one {N_LS}-LS request as DIALS sends it (flattened INT32 `Ring2`
[{N_LS}, 140, 56] + 11 `oms_lumisection_info__*` tensors; {body_mb:.1f} MB of JSON, the same
bytes every time), POSTed by one client over loopback to one MLServer serving both our build
folder and a do-nothing handler (same parsed request, answers Flag/Metric of {N_LS} values
without reading the data). Interleaved ours/do-nothing for {args.rounds} rounds after
{args.warmups} warm-ups each; settings.json as the build's (debug off, parallel_workers 0).
Latency is client-side, request sent to answer read.

| server | model | median | p90 | LS/s (750 / median) | ratio of medians | server RSS idle / after / peak |
|---|---|---|---|---|---|---|
{rows}

{verdict} Flagged LS in our answers (expected 1): {flagged}.
Server memory is the whole MLServer process (both models loaded, parallel_workers 0);
"peak" is VmHWM over the run, which includes the do-nothing requests.{image_note}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmups", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        body = demo_request_body(tmp)
        results = [main_environment(tmp, body, args)]
        image_note = ""
        if IMAGE_PYTHON.exists():
            results.append(image_environment(tmp, body, args))
        else:
            image_note = f"\nImage environment not measured ({IMAGE_PYTHON} absent)."
    text = report(results, len(body) / 1e6, args, image_note)
    print(text)
    print(f"total {time.monotonic() - started:.0f} s")
    write_section("serving", "Serving: a 750-LS request through MLServer", text)
    return 0 if all(m.ratio <= MAX_RATIO for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
