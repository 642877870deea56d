"""Shared fixtures: a model trained here, the demo test data, and one real MLServer.

Tests never depend on the shipped model file (users retrain and overwrite it): every test that
asserts model-specific behaviour uses `model` / `model_path`, a small model trained at session
start on clean simulated maps of the simulator's default detector, the detector of the demo
and of every simulation in the tests. The shipped file has its own small tests.

The server is started the way a user does (`pixelring2nmf serve --port P`, which builds and
then runs `mlserver start <build dir>` as its child), on a free loopback port, with its build
folder in a temporary BUILD_PATH. Readiness is awaited by polling /v2/health/ready with a
deadline while watching the process; teardown stops it by its PID. A 750-LS request is ~30 MB
of JSON, so the demo request body is serialised once and the single-client answer is kept for
comparisons.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from mlserver_model.pixelring2nmf import MODEL_NAME, PixelRing2NMF
from mlserver_model.preprocessor import insert_cross
from pixelring2nmf.serving.mlserver import mlserver_environment
from pixelring2nmf.sim import simulate
from pixelring2nmf.validation.local_server import (
    LocalServer,
    free_port,
    image_python,
    start_local_server,
)
from pixelring2nmf.validation.local_server import stop_local_server as stop_server

# Tests send Ctrl-C (SIGINT) to the commands they start. A shell's background job (`cmd &`
# without job control) starts with SIGINT ignored, and a child inherits an ignored signal, so
# the commands would never see it: give them the default back, as a terminal would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
BUILD_KEY = "PixelRing2NMF"
TEST_MODEL_FILE = "test-model.joblib"  # not the shipped file's name: a build holds both
IMAGE_PYTHON = image_python(REPO)
SERVER_START_TIMEOUT_S = 120.0
# Tests that need the image-emulation virtualenv skip on a developer machine without it, but
# must run in CI (which creates it): CI=true turns the skip off, so a missing venv fails loudly.
needs_image_venv = pytest.mark.skipif(
    not IMAGE_PYTHON.exists() and not os.environ.get("CI"),
    reason=f"no image-emulation venv at {IMAGE_PYTHON} (bash scripts/make_image_venv.sh)",
)


def load_script_module() -> Any:
    """The top-level test_predictions.py script as a module (it is not a package member)."""
    spec = importlib.util.spec_from_file_location(
        "test_predictions_script", REPO / "test_predictions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RunningServer(LocalServer):
    """A started MLServer serving our model, with a shortcut to its infer endpoint."""

    model_name: str = MODEL_NAME  # the Ring 1 and joint servers set theirs

    @property
    def infer_url(self) -> str:
        return f"{self.base_url}/v2/models/{self.model_name}/infer"

    def infer(self, body: bytes | dict, timeout_s: float = 300.0) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(
            self.infer_url,
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=timeout_s,
        )


def start_server(
    command: list[str], port: int, log_path: Path, *, cwd: Path, env: dict[str, str]
) -> RunningServer:
    """Start a server process and return once /v2/health/ready answers 200 (bounded wait)."""
    return start_local_server(
        command,
        port,
        log_path,
        cwd=cwd,
        env=env,
        timeout_s=SERVER_START_TIMEOUT_S,
        server_class=RunningServer,
    )


def mlserver_env(port: int, *, defaults: bool = False, **extra: str) -> dict[str, str]:
    """The environment of an MLServer started by a test, with nothing of the repository visible.

    `defaults`: MLServer's own defaults but for the ports (one worker process, debug on, a
    metrics server), as `dismcli start-api` and production run it; otherwise the settings
    `pixelring2nmf serve` passes. Ports are always free ones (tests may run side by side).
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}
    if defaults:
        env.update(
            MLSERVER_HTTP_PORT=str(port),
            MLSERVER_GRPC_PORT=str(free_port()),
            MLSERVER_METRICS_PORT=str(free_port()),
        )
    else:
        env.update(mlserver_environment("127.0.0.1", port, free_port()))
    return {**env, **extra}


def cli_command(*args: str) -> list[str]:
    """`pixelring2nmf ARGS` run by this interpreter (the same as the console script)."""
    return [sys.executable, "-m", "pixelring2nmf.cli", *args]


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on 600 clean simulated LS of the default detector (a few seconds).

    The LS span the occupancies of a fill (pileup 20-65), as the shipped model's do; 150
    passes fit these maps to well under the 5 % model-error floor.
    """
    from pixelring2nmf.model.train import train_model

    rng = np.random.default_rng(2026)
    detector = simulate.default_detector()
    pileup = rng.uniform(20.0, 65.0, 600)
    expected = simulate.expected_maps(detector, pileup * simulate.NOMINAL_CLUSTERS_PER_PILEUP)
    maps = insert_cross(simulate.sample_maps(expected, rng))
    model = train_model(maps, passes=150, seed=0, provenance={"data_files": ["simulated"]})
    return model.save(tmp_path_factory.mktemp("model") / TEST_MODEL_FILE)


@pytest.fixture(scope="session")
def model(model_path: Path) -> PixelRing2NMF:
    return PixelRing2NMF.load(model_path)


@pytest.fixture(scope="session")
def ring1_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Ring 1 model trained like `model_path`: 600 clean simulated LS of the default Ring 1
    detector over a fill's pileups (a few seconds)."""
    from mlserver_model.geometry import RING1
    from pixelring2nmf.model.train import train_model

    rng = np.random.default_rng(2027)
    detector = simulate.default_detector(RING1)
    pileup = rng.uniform(20.0, 65.0, 600)
    expected = simulate.expected_maps(detector, pileup * detector.clusters_per_pileup)
    maps = insert_cross(simulate.sample_maps(expected, rng), geometry=RING1)
    model = train_model(maps, passes=150, seed=0, provenance={"data_files": ["simulated"]})
    return model.save(tmp_path_factory.mktemp("ring1_model") / "test-ring1-model.joblib")


@pytest.fixture(scope="session")
def joint_model_path(
    ring1_model_path: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The joint model of the two session models (what `train --joint` writes: each ring
    trained on its own maps, one file)."""
    from pixelring2nmf.model.train import joint_model

    rings = {1: PixelRing2NMF.load(ring1_model_path), 2: PixelRing2NMF.load(model_path)}
    path = tmp_path_factory.mktemp("joint_model") / "test-fpix-model.joblib"
    return joint_model(rings).save(path)


@pytest.fixture(scope="session")
def test_template(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """template.yaml with the test model as ModelUri (absolute paths, so any cwd works)."""
    import yaml

    content = yaml.safe_load((REPO / "template.yaml").read_text())
    properties = content["Resources"][BUILD_KEY]["Properties"]
    properties["CodeUri"] = str(REPO / "mlserver_model")
    properties["ModelUri"] = str(model_path)
    path = tmp_path_factory.mktemp("template") / "template.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def build_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for build/serve: a private BUILD_PATH, unbuffered logs."""
    env = dict(os.environ)
    env["BUILD_PATH"] = str(tmp_path_factory.mktemp("dism") / "build")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pixelring2nmf simulate --scenario demo --seed 1`: one 750-LS run, one Multi-Disk LS."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        cli_command("simulate", "--out", str(out), "--scenario", "demo", "--seed", "1"),
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return out


@pytest.fixture(scope="session")
def demo_files(demo_dir: Path) -> tuple[Path, Path]:
    """(parquet, OMS JSON) written by the simulator."""
    (parquet,) = demo_dir.glob("*.parquet")
    (oms,) = demo_dir.glob("oms*.json")
    return parquet, oms


@pytest.fixture(scope="session")
def test_data_pkl(demo_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default test data: batch 0 (750 LS) of the demo run with its OMS columns."""
    parquet, oms = demo_files
    out = tmp_path_factory.mktemp("testdata") / "test_data.pkl"
    subprocess.run(
        cli_command(
            "make-test-data",
            "--parquet",
            str(parquet),
            "--oms",
            str(oms),
            "--batch-size",
            "750",
            "--batch-id",
            "0",
            "--out",
            str(out),
        ),
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return out


@pytest.fixture(scope="session")
def script_module() -> Any:
    return load_script_module()


@pytest.fixture(scope="session")
def demo_data(test_data_pkl: Path, script_module: Any) -> dict[str, Any]:
    return script_module.load_test_data(test_data_pkl)


@pytest.fixture(scope="session")
def demo_body(demo_data: dict[str, Any], script_module: Any) -> bytes:
    """The 750-LS request test_predictions.py sends, serialised once (~30 MB)."""
    return json.dumps(script_module.build_request(demo_data, None)).encode()


@pytest.fixture(scope="session")
def served_model(
    build_env: dict[str, str], test_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator:
    """`pixelring2nmf serve -f T --port P`, T serving the test model: the shared server."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "mlserver.log"
    command = cli_command("serve", "-f", str(test_template), "--port", str(port))
    server = start_server(command, port, log_path, cwd=REPO, env=build_env)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def demo_answer(served_model: RunningServer, demo_body: bytes) -> dict[str, Any]:
    """The single-client answer of the shared server to the 750-LS demo request."""
    response = served_model.infer(demo_body)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


@pytest.fixture(scope="session")
def build_folder(served_model: RunningServer, build_env: dict[str, str]) -> Path:
    """The build folder the shared server runs from."""
    return Path(build_env["BUILD_PATH"]) / BUILD_KEY


def outputs_by_name(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in answer["outputs"]}


# --- a simulated era judged by the session's model (test_era.py, test_plots.py) ------------------


@pytest.fixture(scope="session")
def era_sim(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """About 4,000 LS in 6 runs with many anomalies of every kind."""
    from pixelring2nmf.sim import simulate as simulator

    out = tmp_path_factory.mktemp("era_sim")
    return simulator.simulate(out, runs=6, seed=21, ls_per_run=700, anomaly_rate=0.012)


@pytest.fixture(scope="session")
def era_out(
    era_sim: dict[str, Path], model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from pixelring2nmf.cli import main as cli_main

    out = tmp_path_factory.mktemp("era_out")
    args = ["era", "--parquet", str(era_sim["parquet"].parent), "--oms", str(era_sim["oms"])]
    args += ["--model", str(model_path), "--out", str(out), "--xlsx", "--no-progress"]
    assert cli_main(args) == 0
    return out


# --- Ring 1 and the joint model (pixel-ring1-nmf, pixel-fpix-nmf): served like Ring 2 -----------

RING1_BUILD_KEY = "PixelRing1NMF"
FPIX_BUILD_KEY = "PixelFpixNMF"


@pytest.fixture(scope="session")
def fpix_model_path(joint_model_path: Path) -> Path:
    """The session's joint model (pixel-fpix-nmf), as the serving tests call it."""
    return joint_model_path


def ring_template(
    template_file: str, key: str, model_file: Path, folder: Path, code_uri: Path | None = None
) -> Path:
    """A repository template with another ModelUri (absolute paths, so any cwd works)."""
    import yaml

    content = yaml.safe_load((REPO / template_file).read_text())
    properties = content["Resources"][key]["Properties"]
    properties["CodeUri"] = str(code_uri or REPO / "mlserver_model")
    properties["ModelUri"] = str(model_file)
    path = folder / template_file
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ring1_template(ring1_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """template_ring1.yaml with the session's Ring 1 model."""
    folder = tmp_path_factory.mktemp("template_ring1")
    return ring_template("template_ring1.yaml", RING1_BUILD_KEY, ring1_model_path, folder)


@pytest.fixture(scope="session")
def fpix_template(fpix_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """template_fpix.yaml with the session's joint model."""
    folder = tmp_path_factory.mktemp("template_fpix")
    return ring_template("template_fpix.yaml", FPIX_BUILD_KEY, fpix_model_path, folder)


@pytest.fixture(scope="session")
def fpix_demo_maps(
    demo_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, np.ndarray]:
    """Maps of both rings for the 750 demo LS: `simulate --scenario demo --seed 1 --ring both`,
    whose Ring 2 maps and OMS data are the demo's, its group outages silent in both rings."""
    from pixelring2nmf.io.parquet import read_dials_parquet

    out = tmp_path_factory.mktemp("demo_fpix")
    command = ["simulate", "--out", str(out), "--scenario", "demo", "--seed", "1"]
    subprocess.run(cli_command(*command, "--ring", "both"), check=True, capture_output=True)
    (ring1_file,) = out.glob("*PXRing_1.parquet")
    ring1 = read_dials_parquet(ring1_file)
    assert np.array_equal(ring1.ls, demo_data["ls_number"])
    return {1: ring1.maps, 2: np.asarray(demo_data["Ring2"])}


def served_ring_model(
    template: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[RunningServer]:
    env = dict(os.environ)
    env["BUILD_PATH"] = str(tmp_path_factory.mktemp(f"dism_{name}") / "build")
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    log_path = tmp_path_factory.mktemp(f"server_{name}") / "mlserver.log"
    command = cli_command("serve", "-f", str(template), "--port", str(port))
    server = start_server(command, port, log_path, cwd=REPO, env=env)
    server.model_name = name
    server.build_path = Path(env["BUILD_PATH"])
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def served_ring1(
    ring1_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """`pixelring2nmf serve -f template_ring1.yaml`: the session's one Ring 1 server."""
    yield from served_ring_model(ring1_template, tmp_path_factory, "pixel-ring1-nmf")


@pytest.fixture(scope="session")
def served_fpix(
    fpix_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """`pixelring2nmf serve -f template_fpix.yaml`: the session's one joint-model server."""
    yield from served_ring_model(fpix_template, tmp_path_factory, "pixel-fpix-nmf")
