"""`pixelring2nmf serve` itself: a quiet start, a clean stop, and a model that cannot load.

Each test starts its own `serve` on a free loopback port (a build in its own BUILD_PATH) and
watches the process; readiness is polled while waiting on the process, never by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from conftest import BUILD_KEY, REPO, cli_command, free_port, start_server

from pixelring2nmf.serving.launcher import EXIT_MODEL_NOT_LOADED

# Words of trouble a normal start and stop must not log ("running on :0" came from port 0).
ALARMING = ("WARNING", "ERROR", "Traceback", "CancelledError", "DEPRECATED", ":0 ", "different")


def serve_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "BUILD_PATH": str(tmp_path / "build"), "PYTHONUNBUFFERED": "1"}


def template_with(tmp_path: Path, test_template: Path, **properties: str) -> Path:
    content = yaml.safe_load(test_template.read_text())
    content["Resources"][BUILD_KEY]["Properties"].update(properties)
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_serve_starts_quietly_and_stops_cleanly(
    stop: signal.Signals, test_template: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = cli_command("serve", "-f", str(test_template), "--port", str(port))
    server = start_server(command, port, tmp_path / "serve.log", cwd=REPO, env=serve_env(tmp_path))
    server.process.send_signal(stop)  # what the terminal's Ctrl-C sends `serve` alone
    try:
        code = server.process.wait(timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = server.log()
    assert code == 130, log[-3000:]
    how = "Ctrl-C" if stop == signal.SIGINT else "SIGTERM"
    assert log.rstrip().endswith(f"pixelring2nmf serve: interrupted by {how}")
    assert "Finished server process" in log  # MLServer itself stopped, not killed
    assert [line for line in log.splitlines() if any(w in line for w in ALARMING)] == []
    # nothing written into the build by the server (model-settings.json is written last)
    folder = tmp_path / "build" / BUILD_KEY
    built_ns = (folder / "model-settings.json").stat().st_mtime_ns
    assert [p for p in folder.rglob("*") if p.stat().st_mtime_ns > built_ns] == []
    with contextlib.suppress(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
        pytest.fail("the server still answers after serve ended")


def test_serve_refuses_a_model_file_it_cannot_load_in_one_line(
    test_template: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a model")
    template = template_with(tmp_path, test_template, ModelUri=str(broken))
    port = free_port()
    command = cli_command("serve", "-f", str(template), "--port", str(port))
    done = subprocess.run(
        command, cwd=REPO, env=serve_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("pixelring2nmf serve: error:") and "broken.joblib" in line
    assert "Serving" not in done.stdout  # no server was started


# A handler whose load fails inside MLServer (after serve's own check of the model file), once
# the test has seen the server answer (it creates the file GO then).
_FAILING_HANDLER = """
import asyncio
from pathlib import Path

from app import Handler

GO = Path({go!r})


class FailingHandler(Handler):
    async def load(self):
        while not GO.exists():
            await asyncio.sleep(0.01)
        raise RuntimeError("this model cannot load")
"""


def test_serve_exits_non_zero_and_is_never_ready_when_mlserver_cannot_load_the_model(
    test_template: Path, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    shutil.copytree(REPO / "mlserver_model", code, ignore=shutil.ignore_patterns("__pycache__"))
    go = tmp_path / "go"
    (code / "failing.py").write_text(_FAILING_HANDLER.format(go=str(go)))
    template = template_with(
        tmp_path, test_template, CodeUri=str(code), Handler="failing.FailingHandler"
    )
    port = free_port()
    log_path = tmp_path / "serve.log"
    command = cli_command("serve", "-f", str(template), "--port", str(port))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=serve_env(tmp_path), stdout=log, stderr=subprocess.STDOUT
        )
    statuses = set()
    try:
        while process.poll() is None:  # poll ready the whole time the server lives
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                response = requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                statuses.add(response.status_code)
                go.touch()  # the server answers while loading: now let the load fail
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.01)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert process.returncode == 2, text[-3000:]
    assert go.exists() and 200 not in statuses, statuses  # it answered, never "ready"
    assert "this model cannot load" in text
    last = text.strip().splitlines()[-1]
    assert last == (
        f"pixelring2nmf serve: error: MLServer stopped with exit code {EXIT_MODEL_NOT_LOADED} "
        "(its log is above)"
    )
