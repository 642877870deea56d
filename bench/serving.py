"""Serving latency of a 750-LS DIALS request through MLServer, against a do-nothing handler.

    python bench/serving.py [--runs 3] [--rounds 51] [--warmups 2] [--gap 0.3]

One MLServer serves our model, the folder `pixelring2nmf build` writes (as DIALS would get
it), beside reference models that receive the same parsed request and answer Flag/Metric of
the right length: a do-nothing handler (the baseline), and two that only read or only convert
the 5.9 M values (the floor of any handler that uses the data). Our model is served twice: as
deployed (the serving guard parses the maps with numpy, so MLServer parses only the rest of the
request), and once more as `pixel-ring2-nmf-mlserver-path`, the same handler with the maps
parsed by MLServer as for the reference models (the path before the guard, and the one any
other format takes): its ratio is the one to compare with earlier runs of this benchmark. The same JSON bytes (what
test_predictions.py sends: flattened INT32 Ring2 [750, 140, 56] plus the
oms_lumisection_info__* tensors) are POSTed to each, one request per model per round in a
shuffled order (seeded), so all medians come from the same run, no model always follows
another, and the ratio to the do-nothing handler isolates the cost of a handler over
MLServer's own (HTTP, JSON parsing, pydantic).

The gate is the environment DIALS runs: the image venv (MLServer 1.5.0, numpy 1.26, the
versions of seldonio/mlserver:1.5.0; .venv-image or $PIXELRING2NMF_IMAGE_PYTHON) serving a copy
of the build folder, measured `--runs` times (a fresh server each time); exit code 1 when the
median of those runs' ratios of medians exceeds 1.25, or when the image venv is absent. The
main environment's MLServer is measured once beside it (reported, not gated), and, when the
image's OpenBLAS does not know this CPU (it then runs its generic "Prescott" kernels), the
image once more with OPENBLAS_CORETYPE=Haswell, as on a CPU it knows (reported).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
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

from mlserver_model.pixelring2nmf import MODEL_NAME
from pixelring2nmf.io.testdata import make_test_data
from pixelring2nmf.serving.mlserver import mlserver_environment, serve_command
from pixelring2nmf.sim import simulate as simulator
from pixelring2nmf.validation.local_server import LocalServer as Server
from pixelring2nmf.validation.local_server import (
    free_port,
    image_python,
    memory_mb,
    post_infer,
    start_local_server,
)
from pixelring2nmf.validation.local_server import stop_local_server as stop_server

REPO = Path(__file__).resolve().parents[1]
BUILD_KEY = "PixelRing2NMF"
IMAGE_PYTHON = image_python(REPO)
N_LS = 750
MAX_RATIO = 1.25
ORDER_SEED = 2024  # the shuffled order of the models in each round is the same every run
# OpenBLAS 0.3.23 (numpy 1.26.4's) names unknown CPUs "Prescott" and runs SSE3 kernels; this
# core type has AVX2 kernels and runs on every x86-64 CPU DIALS could use.
KNOWN_CORETYPE = "Haswell"
START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 300.0

# Reference models: MLServer parses the request for them exactly as for ours, and each answers
# Flag/Metric of N values (N read from the Ring2 shape), so the answer has the size of ours.
# `do-nothing` is the baseline; the two others do only the unavoidable first step of any
# handler that looks at the data, so their rows show how much of our cost is that step.
REFERENCE_SOURCE = '''"""Reference MLServer models of bench/serving.py (not part of the project)."""

import marshal

import numpy as np
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


def ring2_values(payload):
    tensor = next(t for t in payload.inputs if t.name == "Ring2")
    data = tensor.data
    return int(tensor.shape[0]), getattr(data, "root", None) or getattr(data, "__root__")


class Reference(MLModel):
    async def load(self) -> bool:
        return True

    def touch(self, values) -> None:
        """Nothing: the do-nothing baseline."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        n_ls, values = ring2_values(payload)
        self.touch(values)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                ResponseOutput(name="Flag", shape=[n_ls], datatype="BOOL", data=[False] * n_ls),
                ResponseOutput(name="Metric", shape=[n_ls], datatype="FP32", data=[0.0] * n_ls),
            ],
        )


class ReadEveryValue(Reference):
    def touch(self, values) -> None:
        """Read each of the 5.9 M ints once, in C, keeping nothing: sum()."""
        sum(values)


class ConvertEveryValue(Reference):
    def touch(self, values) -> None:
        """Our decoder's conversion of the list into an array (marshal, types checked)."""
        n = len(values)
        packed = marshal.dumps(values, 2)
        codes = np.ndarray((n,), np.uint8, packed, 5, (5,))
        assert len(packed) == 5 + 5 * n and bool(np.all(codes == ord("i")))
        np.ndarray((n,), "<i4", packed, 6, (5,)).astype(np.uint32)
'''
# Our handler with the maps left to MLServer: written beside a copy of the build folder. Both
# copies hold the same app.py, which MLServer imports once.
MLSERVER_PATH_NAME = f"{MODEL_NAME}-mlserver-path"
MLSERVER_PATH_SOURCE = '''"""bench/serving.py: our handler, the maps parsed by MLServer (not part of the project)."""

from app import Handler, _guard


class MLServerPathHandler(Handler):
    async def load(self) -> bool:
        loaded = await super().load()
        _guard.stop_serving_in_process(self.name)  # the guard passes its requests through
        return loaded
'''
NOOP_NAME = "do-nothing"
# model name -> (class in REFERENCE_SOURCE, row label)
REFERENCES = {
    NOOP_NAME: ("Reference", "do-nothing handler"),
    "read-only": ("ReadEveryValue", "reference: only reads every value (`sum`)"),
    "convert-only": ("ConvertEveryValue", "reference: only converts every value (`marshal`)"),
}
IMAGE_REFERENCES = [NOOP_NAME, "convert-only"]  # `read-only` makes its point once, in main


@dataclass
class Measurement:
    environment: str
    mlserver_version: str
    latencies_s: dict[str, list[float]]  # model name -> one latency per round
    rss_idle_mb: float
    rss_after_mb: float
    hwm_mb: float
    n_flagged: int

    def ratio(self, model: str = MODEL_NAME) -> float:
        """Ratio of medians, model / do-nothing: the figure the 1.25 bar applies to."""
        medians = {name: statistics.median(times) for name, times in self.latencies_s.items()}
        return medians[model] / medians[NOOP_NAME]

    @property
    def paired_ratio(self) -> float:
        """Median over rounds of ours/do-nothing: less sensitive to slow phases of the VM."""
        pairs = zip(self.latencies_s[MODEL_NAME], self.latencies_s[NOOP_NAME], strict=True)
        return statistics.median(ours / noop for ours, noop in pairs)


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
        [sys.executable, "-m", "pixelring2nmf.cli", "build"],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=env,
    )
    return parent / BUILD_KEY


def write_reference_folders(parent: Path, names: list[str]) -> None:
    """One model folder per reference model, each with a copy of REFERENCE_SOURCE."""
    for name in names:
        folder = parent / name
        folder.mkdir(parents=True)
        (folder / "reference_models.py").write_text(REFERENCE_SOURCE)
        settings = {
            "name": name,
            "implementation": f"reference_models.{REFERENCES[name][0]}",
            "parameters": {"version": "0.1.0"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))


def write_mlserver_path_copy(parent: Path) -> None:
    """A copy of our model folder whose handler leaves the maps to MLServer's parsing."""
    folder = parent / MLSERVER_PATH_NAME
    shutil.copytree(parent / MODEL_NAME, folder)
    (folder / "bench_mlserver_path.py").write_text(MLSERVER_PATH_SOURCE)
    settings = json.loads((folder / "model-settings.json").read_text())
    settings["name"] = MLSERVER_PATH_NAME
    settings["implementation"] = "bench_mlserver_path.MLServerPathHandler"
    (folder / "model-settings.json").write_text(json.dumps(settings))


def server_environment(base: dict[str, str]) -> tuple[int, dict[str, str]]:
    """A free HTTP port and `base` plus the MLSERVER_* settings `pixelring2nmf serve` passes."""
    port = free_port()
    return port, {**base, **mlserver_environment("127.0.0.1", port, free_port())}


# --------------------------------------------------------------------------- server


def start_server(command: list[str], port: int, log_path: Path, env: dict[str, str]) -> Server:
    """Start MLServer and return once /v2/health/ready answers 200 (bounded wait)."""
    return start_local_server(
        command, port, log_path, cwd=log_path.parent, env=env, timeout_s=START_TIMEOUT_S
    )


# --------------------------------------------------------------------------- measurement


def post(server: Server, model: str, body: bytes) -> tuple[float, requests.Response]:
    elapsed, response = post_infer(server, model, body, REQUEST_TIMEOUT_S)
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
    models: list[str],
) -> Measurement:
    """Serve, warm up, then `rounds` rounds of one request per model in a shuffled order."""
    server = start_server(command, port, log_path, env)
    try:
        version = requests.get(f"{server.base_url}/v2", timeout=10).json()["version"]
        idle = memory_mb(server.process.pid)
        for _ in range(args.warmups):
            for model in models:
                post(server, model, body)
        latencies: dict[str, list[float]] = {model: [] for model in models}
        flagged = set()
        order = random.Random(ORDER_SEED)
        for _ in range(args.rounds):
            for model in order.sample(models, len(models)):
                # Think time: the server finishes freeing the previous request (~0.1 s after
                # its answer) before this one arrives, as between DIALS's sparse requests.
                time.sleep(args.gap)
                elapsed, response = post(server, model, body)
                latencies[model].append(elapsed)
                if model == MODEL_NAME:
                    flagged.add(count_flagged(response))
        after = memory_mb(server.process.pid)
    finally:
        stop_server(server)
    if len(flagged) != 1:
        raise RuntimeError(f"{environment}: answers differ between rounds: {sorted(flagged)}")
    result = Measurement(
        environment,
        version,
        latencies,
        idle["VmRSS"],
        after["VmRSS"],
        after["VmHWM"],
        flagged.pop(),
    )
    print(f"[{environment}] mlserver {version}: ratio {result.ratio():.2f}", flush=True)
    return result


def main_environment(tmp: Path, body: bytes, args: argparse.Namespace) -> Measurement:
    """Main venv: the build folder and the reference models under one `mlserver start`."""
    built = build_model_folder(tmp / "main" / "build")
    parent = tmp / "main" / "models"
    shutil.copytree(built, parent / MODEL_NAME)
    write_mlserver_path_copy(parent)
    write_reference_folders(parent, list(REFERENCES))
    port, env = server_environment(dict(os.environ))
    command = serve_command(parent)
    models = [MODEL_NAME, MLSERVER_PATH_NAME, *REFERENCES]
    return measure("main", command, tmp / "main" / "server.log", port, env, body, args, models)


def image_environment(
    tmp: Path,
    body: bytes,
    args: argparse.Namespace,
    coretype: str | None = None,
    run: int | None = None,
) -> Measurement:
    """Image venv: a copy of the build folder (nothing of the repo visible) beside the no-op."""
    label = "image" if coretype is None else f"image, OPENBLAS_CORETYPE={coretype}"
    if run is not None:
        label += f", run {run + 1}/{args.runs}"
    workdir = tmp / f"image-{coretype or 'default'}-{run}"
    parent = workdir / "mnt"
    shutil.copytree(tmp / "main" / "models" / MODEL_NAME, parent / MODEL_NAME)
    write_mlserver_path_copy(parent)
    write_reference_folders(parent, IMAGE_REFERENCES)
    port, env = server_environment(
        {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    )
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    command = serve_command(parent, IMAGE_PYTHON)
    models = [MODEL_NAME, MLSERVER_PATH_NAME, *IMAGE_REFERENCES]
    return measure(label, command, workdir / "server.log", port, env, body, args, models)


def openblas_core(python: Path) -> str:
    """The kernel family the environment's OpenBLAS picked for this CPU ("" if unknown)."""
    probe = (
        "import numpy, threadpoolctl; "
        "print(next((i.get('architecture') or '' for i in threadpoolctl.threadpool_info() "
        "if i.get('internal_api') == 'openblas'), ''))"
    )
    result = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, env={}
    )
    return result.stdout.strip()


# --------------------------------------------------------------------------- report


def table_rows(m: Measurement) -> str:
    def cells(model: str) -> str:
        times = m.latencies_s[model]
        median = statistics.median(times)
        p90 = float(np.percentile(times, 90))
        return f"{median * 1e3:.0f} ms | {p90 * 1e3:.0f} ms | {N_LS / median:.0f}"

    name = f"{m.environment} (MLServer {m.mlserver_version})"
    verdict = "ok" if m.ratio() <= MAX_RATIO else f"**above {MAX_RATIO}**"
    rows = [
        f"| {name} | ours (`{MODEL_NAME}`) | {cells(MODEL_NAME)} | **{m.ratio():.3f}** "
        f"({verdict}) | {m.rss_idle_mb:.0f} / {m.rss_after_mb:.0f} / {m.hwm_mb:.0f} MB |"
    ]
    if MLSERVER_PATH_NAME in m.latencies_s:
        rows.append(
            f"| {name} | ours, maps parsed by MLServer (`{MLSERVER_PATH_NAME}`) | "
            f"{cells(MLSERVER_PATH_NAME)} | **{m.ratio(MLSERVER_PATH_NAME):.3f}** | same server |"
        )
    for model, (_, label) in REFERENCES.items():
        if model in m.latencies_s:
            rows.append(
                f"| {name} | {label} | {cells(model)} | {m.ratio(model):.3f} | same server |"
            )
    return "\n".join(rows)


def image_gate(image_runs: list[Measurement]) -> float | None:
    """The gated figure: median over the image runs of their ratio of medians."""
    return statistics.median(m.ratio() for m in image_runs) if image_runs else None


def report(
    results: list[Measurement],
    image_runs: list[Measurement],
    body_mb: float,
    args: argparse.Namespace,
    notes: str,
) -> str:
    rows = "\n".join(table_rows(m) for m in results)
    gate = image_gate(image_runs)
    flagged = ", ".join(f"{m.environment}: {m.n_flagged}" for m in results)
    if gate is None:
        verdict = "**FAILED**: the image environment (MLServer 1.5.0) was not measured."
    else:
        runs = ", ".join(f"{m.ratio():.3f}" for m in image_runs)
        passed = "passed" if gate <= MAX_RATIO else "**FAILED**"
        verdict = (
            f"Gate (image environment, MLServer 1.5.0): median of {len(image_runs)} runs' "
            f"ratios ({runs}) = **{gate:.3f}**, bar {MAX_RATIO}: {passed}."
        )
    paired = ", ".join(f"{m.environment}: {m.paired_ratio:.3f}" for m in results)
    if image_runs:
        through = [m.ratio(MLSERVER_PATH_NAME) for m in image_runs]
        verdict += (
            f" Our handler with the maps parsed by MLServer, as before the serving guard (the "
            f"figure earlier runs of this benchmark gated): "
            f"{', '.join(f'{r:.3f}' for r in through)}, median "
            f"**{statistics.median(through):.3f}**."
        )
    return f"""
`python bench/serving.py` — one {N_LS}-LS request as DIALS sends it (flattened INT32 `Ring2`
[{N_LS}, 140, 56] + 11 `oms_lumisection_info__*` tensors; {body_mb:.1f} MB of JSON, the same
bytes every time), POSTed by one client over loopback to one MLServer serving our build folder
beside reference models that get the same parsed request and answer Flag/Metric of {N_LS}
values: a do-nothing handler (the baseline: it does not read the data) and two that only read
(`sum`, main environment only) or only convert (`marshal` and a check of the types, our
decoder's step on MLServer's path) the 5.9 M values and throw the result away: no handler that
gets the values from MLServer can beat the latter by much. {args.rounds} rounds of one request to each
model, in a shuffled order, {args.gap} s apart, after {args.warmups} warm-ups each; the settings
`pixelring2nmf serve` passes (MLSERVER_* variables: debug off, parallel_workers 0). Ours is
served as deployed (the serving guard parses the maps with numpy; MLServer parses the rest) and
a second time with the maps left to MLServer, as the reference models get them. Latency is client-side, request sent to answer
read. The image environment (what DIALS runs) is measured {args.runs} times, each with a fresh
server; the main environment once, for reference.

| server | model | median | p90 | LS/s (750 / median) | ratio of medians to do-nothing | server RSS idle / after / peak |
|---|---|---|---|---|---|---|
{rows}

{verdict} Flagged LS in our answers (expected 1): {flagged}.
Median of the per-round ratios ours / do-nothing: {paired}.
Server memory is the whole MLServer process (all models loaded, parallel_workers 0);
"peak" is VmHWM over the run, which includes the reference models' requests.{notes}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="image-environment runs (gated)")
    parser.add_argument("--rounds", type=int, default=51)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between requests")
    args = parser.parse_args()
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        body = demo_request_body(tmp)
        results = [main_environment(tmp, body, args)]  # also builds the folder the image copies
        image_runs: list[Measurement] = []
        notes = ""
        if IMAGE_PYTHON.exists():
            image_runs = [image_environment(tmp, body, args, run=i) for i in range(args.runs)]
            results += image_runs
            if openblas_core(IMAGE_PYTHON) == "Prescott":
                results.append(image_environment(tmp, body, args, KNOWN_CORETYPE))
                notes = (
                    f"\nThe image environment's OpenBLAS (numpy 1.26.4's) does not know this "
                    f"CPU and runs its generic Prescott kernels; the last row sets "
                    f"OPENBLAS_CORETYPE={KNOWN_CORETYPE}, as a CPU it knows would get (reported, "
                    "not gated)."
                )
        else:
            notes = f"\nImage environment not measured ({IMAGE_PYTHON} absent)."
    load_after = os.getloadavg()
    notes += (
        f"\nLoad average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
        f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/"
        f"{load_after[2]:.1f} (2 cores shared with other work); "
        f"total {(time.monotonic() - started) / 60:.0f} min."
    )
    text = report(results, image_runs, len(body) / 1e6, args, notes)
    print(text)
    write_section("serving", "Serving: a 750-LS request through MLServer", text)
    gate = image_gate(image_runs)
    return 0 if gate is not None and gate <= MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
