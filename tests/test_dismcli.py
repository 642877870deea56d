"""The real DISM tools (cmsdism 0.6.1's `dismcli`) on this project, offline.

`dismcli build` and `dismcli package` run as a user runs them, in a project folder of their own,
against loopback fakes of what they reach: DIALS (fake_dials.py: the token cache, the MEs, a
histogram of the ME, the datasets, the model index, the presigned upload URL) and S3 (a
`moto_server` process, where the zip lands). Checked: the real build tree is `pixelring2nmf
build`'s, file for file; the real build folder serves as `dismcli start-api` runs it (`mlserver
start /mnt/<Name>` with MLServer's defaults) and flags the demo's LS, on MLServer 1.7 and on the
image's 1.5.0; the zip holds exactly the runtime files and no settings.json, also after a
`pixelring2nmf serve` in between; the fake's rejections give dismcli's own errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from conftest import (
    BUILD_KEY,
    IMAGE_PYTHON,
    MODEL_NAME,
    REPO,
    cli_command,
    free_port,
    mlserver_env,
    outputs_by_name,
    start_server,
    stop_server,
)
from fake_dials import FakeDials

from mlserver_model.geometry import RING1, RING2_ME
from pixelring2nmf.serving.mlserver import mlserver_start_command
from pixelring2nmf.sim import simulate as simulator

BIN = Path(sys.executable).parent
DISMCLI = BIN / "dismcli"
MOTO_SERVER = BIN / "moto_server"
# Installed by CI (.ci/run: cmsdism --no-deps, moto[s3]); locally the tests skip without them.
pytestmark = pytest.mark.skipif(
    not (DISMCLI.exists() and MOTO_SERVER.exists()) and not os.environ.get("CI"),
    reason='dismcli or moto_server missing: pip install --no-deps "cmsdism==0.6.1" and "moto[s3]"',
)

ME_ID = 1734
BUCKET = "ml-models"
TOKEN = "loopback-token"
DATASET = {
    "dataset_id": 15477,
    "dataset": "/ZeroBias/Run2025Z-PromptReco-v1/DQMIO",
    "era": "Run2025Z",
    "data_tier": "DQMIO",
    "primary_ds_name": "ZeroBias",
    "processed_ds_name": "Run2025Z-PromptReco-v1",
    "processing_version": 1,
    "last_modification_date": "2025-10-01T00:00:00Z",
}
DISMCLI_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A loopback S3 (moto_server) with the bucket DIALS's presigned URLs point to."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "moto_server did not answer within 60 s"
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)  # between polls, watch the process
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="loopback",
            aws_secret_access_key="loopback",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def h2d_rows(tmp_path: Path, shape: tuple[int, int] = (140, 56)) -> list[dict]:
    """Three LS of the Ring 2 ME as DIALS's th2 endpoint returns them (optionally misshapen)."""
    detector = simulator.default_detector()
    run = simulator.simulate_run(392001, 3, detector, np.random.default_rng(3), anomalies="none")
    path = simulator.write_dials_parquet(
        tmp_path / "h2d.parquet", run.maps, np.full(3, 392001), run.ls
    )
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["data"] = [line[: shape[1]] for line in row["data"][: shape[0]]]
    return rows


def start_fake(tmp_path: Path, s3_client: Any, *, mes=None, shape=(140, 56)) -> FakeDials:
    rows = h2d_rows(tmp_path, shape)
    fake = FakeDials(
        h2d_rows=rows,
        mes=mes if mes is not None else [{"me_id": ME_ID, "me": RING2_ME, "count": 3, "dim": 2}],
        datasets=[DATASET],
        presign=lambda workspace, name: s3_client.generate_presigned_url(
            "put_object", Params={"Bucket": BUCKET, "Key": name}, ExpiresIn=600
        ),
    ).start()
    fake.tokens.add(TOKEN)
    return fake


@pytest.fixture
def fake(tmp_path: Path, s3: Any) -> Iterator[FakeDials]:
    server = start_fake(tmp_path, s3)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def code_uri(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the runtime folder as a user's checkout holds it (no byte-code caches, which
    the test processes may be writing meanwhile), so that every build reads the same files."""
    folder = tmp_path_factory.mktemp("checkout") / "mlserver_model"
    shutil.copytree(REPO / "mlserver_model", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def make_project(folder: Path, test_template: Path, code_uri: Path, model_path: Path) -> Path:
    """A project folder: the template (the test model, the copied runtime) and the token
    cache `dismcli -u URL` reads (`.cache-dev/creds`), far from expiring."""
    content = yaml.safe_load(test_template.read_text())
    properties = content["Resources"][BUILD_KEY]["Properties"]
    properties["CodeUri"], properties["ModelUri"] = str(code_uri), str(model_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    creds = folder / ".cache-dev" / "creds"
    creds.parent.mkdir()
    far = "2099-01-01T00:00:00"
    creds.write_text(
        json.dumps(
            {
                "access_token": TOKEN,
                "expires_in": 300,
                "refresh_expires_in": 1800,
                "refresh_token": "unused",
                "token_type": "Bearer",
                "expires_at": far,
                "refresh_expires_at": far,
            }
        )
    )
    return folder


@pytest.fixture
def project(tmp_path: Path, test_template: Path, code_uri: Path, model_path: Path) -> Path:
    return make_project(tmp_path / "project", test_template, code_uri, model_path)


def project_env() -> dict[str, str]:
    """The environment of a user's shell: dismcli's paths at their defaults (relative)."""
    env = dict(os.environ)
    for name in ("BUILD_PATH", "PACKAGE_PATH", "DIALS_DEV_CACHE_DIR", "TEMPLATE_NAME"):
        env.pop(name, None)
    return env


def dismcli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DISMCLI), *args],
        cwd=project,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=DISMCLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dismcli_build_writes_what_pixelring2nmf_build_writes(
    project: Path, fake: FakeDials, test_template: Path, code_uri: Path, model_path: Path
) -> None:
    built = dismcli(project, "build", "-f", "template.yaml", "-u", fake.url)
    assert built.returncode == 0, built.stderr[-3000:]
    ours = make_project(project.parent / "ours", test_template, code_uri, model_path)
    mine = subprocess.run(
        cli_command("build", "-f", "template.yaml"),
        cwd=ours,
        env=project_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert mine.returncode == 0, mine.stderr
    real = tree(project / ".dism-artifacts" / "build")
    assert tree(ours / ".dism-artifacts" / "build") == real
    assert f"{BUILD_KEY}/model-settings.json" in real and "template.yaml" in real
    assert not [name for name in real if name.endswith("settings.json") and "model-" not in name]
    # what dismcli asked DIALS, with the token and the template's workspace
    asked = {endpoint for endpoint, _, status in fake.log if status == 200}
    assert {"mes", "th2", "dataset-index"} <= asked
    assert set(fake.workspaces) == {"global"}


def test_dismcli_package_uploads_exactly_the_runtime_files(
    project: Path, fake: FakeDials, s3: Any, code_uri: Path, model_path: Path, tmp_path: Path
) -> None:
    built = dismcli(project, "build", "-f", "template.yaml", "-u", fake.url)
    assert built.returncode == 0, built.stderr[-3000:]
    # a local server on the real build in between: it must leave nothing in the folder
    port = free_port()
    server = start_server(
        cli_command("serve", "-f", "template.yaml", "--port", str(port)),
        port,
        tmp_path / "serve.log",
        cwd=project,
        env=project_env(),
    )
    stop_server(server)
    assert "is up to date" in server.log()  # served dismcli's own build, not a rebuild
    packaged = dismcli(project, "package", "-u", fake.url)
    assert packaged.returncode == 0, packaged.stderr[-3000:]

    (upload,) = fake.presigned
    assert upload["workspace"] == "global" and upload["object_name"].endswith(".zip")
    body = s3.get_object(Bucket=BUCKET, Key=upload["object_name"])["Body"].read()
    names = set(zipfile.ZipFile(io.BytesIO(body)).namelist())
    runtime = {str(p.relative_to(code_uri)) for p in code_uri.rglob("*") if p.is_file()}
    assert names == runtime | {model_path.name, "model-settings.json"}
    assert "settings.json" not in names
    template = yaml.safe_load((project / ".dism-artifacts/package/template.yaml").read_text())
    code = template["Resources"][BUILD_KEY]["Properties"]["CodeUri"]
    assert code == f"s3://{BUCKET}/{upload['object_name']}"


@pytest.fixture(scope="module")
def real_build(
    tmp_path_factory: pytest.TempPathFactory,
    s3: Any,
    test_template: Path,
    code_uri: Path,
    model_path: Path,
) -> Path:
    """The build folder of a real `dismcli build`."""
    tmp = tmp_path_factory.mktemp("real_build")
    fake = start_fake(tmp, s3)
    try:
        project = make_project(tmp / "project", test_template, code_uri, model_path)
        built = dismcli(project, "build", "-f", "template.yaml", "-u", fake.url)
    finally:
        fake.stop()
    assert built.returncode == 0, built.stderr[-3000:]
    return project / ".dism-artifacts" / "build" / BUILD_KEY


@pytest.mark.parametrize(
    "python", [pytest.param(None, id="main"), pytest.param(IMAGE_PYTHON, id="image")]
)
def test_the_real_build_serves_as_start_api_runs_it(
    python: Path | None,
    real_build: Path,
    demo_body: bytes,
    demo_answer: dict[str, Any],
    tmp_path: Path,
) -> None:
    """`docker run -v <build>:/mnt/<Name> <Image> mlserver start /mnt/<Name>`, without Docker:
    MLServer's defaults (one worker process, debug on, metrics) but for free ports."""
    if python is not None and not python.exists() and not os.environ.get("CI"):
        pytest.skip(f"no image-emulation venv at {python} (CI always has one)")
    folder = tmp_path / "mnt" / MODEL_NAME
    shutil.copytree(real_build, folder)
    port = free_port()
    env = mlserver_env(port, defaults=True, PYTHONDONTWRITEBYTECODE="1")
    command = mlserver_start_command(folder, python or sys.executable)
    server = start_server(command, port, tmp_path / "server.log", cwd=tmp_path / "mnt", env=env)
    try:
        response = server.infer(demo_body)
        log = server.log()  # the start and the request (MLServer's own shutdown aside)
    finally:
        stop_server(server)
    assert response.status_code == 200, response.text[:2000]
    assert outputs_by_name(response.json()) == outputs_by_name(demo_answer)
    assert sum(outputs_by_name(demo_answer)["Flag"]["data"]) == 1  # the demo's Multi-Disk LS
    assert "flagged 1 out of 750 lumisections" in log
    alarming = [
        line
        for line in log.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "Traceback", "DEPRECATED"))
    ]
    assert alarming == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown ME", f'requests the ME "{RING2_ME}" that is not available in DIALS'),
        ("wrong sample shape", "does not match sample data shape (3, 139, 56)"),
    ],
)
def test_the_fakes_rejections_give_dismcli_errors(
    case: str, message: str, project: Path, s3: Any, tmp_path: Path
) -> None:
    if case == "unknown ME":
        fake = start_fake(tmp_path, s3, mes=[{"me_id": 7, "me": "Other/ME", "count": 1, "dim": 2}])
    else:
        fake = start_fake(tmp_path, s3, shape=(139, 56))
    try:
        built = dismcli(project, "build", "-f", "template.yaml", "-u", fake.url)
    finally:
        fake.stop()
    assert built.returncode != 0
    assert message in built.stderr, built.stderr[-3000:]
    assert not (project / ".dism-artifacts" / "build" / BUILD_KEY / "model-settings.json").exists()


# --------------------------------------------------------------- Ring 1 and the joint model


def ring_h2d_rows(tmp_path: Path) -> list[dict]:
    """Three LS of each ring's ME, as DIALS's th2 endpoint returns them (Ring 1: 92 x 56)."""
    for ring in ("ring1", "ring2"):
        (tmp_path / ring).mkdir()
    ring2 = h2d_rows(tmp_path / "ring2")
    ring1 = h2d_rows(tmp_path / "ring1", (92, 56))  # Ring 2's rows cut: the fake's sample
    for row in ring1:
        row.update(me=RING1.me, me_id=ME_ID + 1)
    return ring1 + ring2


RING_MES = [
    {"me_id": ME_ID, "me": RING2_ME, "count": 3, "dim": 2},
    {"me_id": ME_ID + 1, "me": RING1.me, "count": 3, "dim": 2},
]


@pytest.mark.parametrize("kind", ["ring1", "fpix"])
def test_dismcli_builds_the_ring_templates_as_pixelring2nmf_build_and_start_api_serves_them(
    kind: str,
    request: pytest.FixtureRequest,
    s3: Any,
    code_uri: Path,
    fpix_demo_maps: dict[int, np.ndarray],
    demo_data: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The real `dismcli build -f template_ring1.yaml / template_fpix.yaml` (DIALS asked for
    the Ring 1 ME and its 92 x 56 sample), the same tree as ours, served as start-api runs it
    by the image's MLServer 1.5.0 with its defaults (one worker process)."""
    from mlserver_model.joint import load_model

    if not IMAGE_PYTHON.exists() and not os.environ.get("CI"):
        pytest.skip(f"no image-emulation venv at {IMAGE_PYTHON} (CI always has one)")
    template_file, key, name = {
        "ring1": ("template_ring1.yaml", "PixelRing1NMF", "pixel-ring1-nmf"),
        "fpix": ("template_fpix.yaml", "PixelFpixNMF", "pixel-fpix-nmf"),
    }[kind]
    model_path = request.getfixturevalue(f"{kind}_model_path")
    projects = {}
    for who in ("dismcli", "ours"):
        folder = tmp_path / who
        make_project(folder, REPO / "template.yaml", code_uri, model_path)
        content = yaml.safe_load((REPO / template_file).read_text())
        properties = content["Resources"][key]["Properties"]
        properties["CodeUri"], properties["ModelUri"] = str(code_uri), str(model_path)
        (folder / "template.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
        projects[who] = folder
    fake = FakeDials(
        h2d_rows=ring_h2d_rows(tmp_path),
        mes=RING_MES,
        datasets=[DATASET],
        presign=lambda workspace, object_name: "unused",  # build uploads nothing
    ).start()
    fake.tokens.add(TOKEN)
    try:
        built = dismcli(projects["dismcli"], "build", "-f", "template.yaml", "-u", fake.url)
    finally:
        fake.stop()
    assert built.returncode == 0, built.stderr[-3000:]
    asked = {endpoint for endpoint, _, status in fake.log if status == 200}
    assert {"mes", "th2", "dataset-index"} <= asked
    mine = subprocess.run(
        cli_command("build", "-f", "template.yaml"),
        cwd=projects["ours"],
        env=project_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert mine.returncode == 0, mine.stderr
    real = tree(projects["dismcli"] / ".dism-artifacts" / "build")
    assert tree(projects["ours"] / ".dism-artifacts" / "build") == real
    assert json.loads(real[f"{key}/model-settings.json"])["name"] == name

    folder = tmp_path / "mnt" / name
    shutil.copytree(projects["dismcli"] / ".dism-artifacts" / "build" / key, folder)
    port = free_port()
    env = mlserver_env(port, defaults=True, PYTHONDONTWRITEBYTECODE="1")
    command = mlserver_start_command(folder, IMAGE_PYTHON)
    server = start_server(command, port, tmp_path / "server.log", cwd=tmp_path / "mnt", env=env)
    server.model_name = name
    rows = slice(250, 290)
    maps = {"Ring1": fpix_demo_maps[1][rows], "Ring2": fpix_demo_maps[2][rows]}
    names = ["Ring1"] if kind == "ring1" else ["Ring1", "Ring2"]
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(maps[n].shape),
                "datatype": "INT32",
                "data": maps[n].ravel().tolist(),
            }
            for n in names
        ]
    }
    try:
        response = server.infer(body)
        log = server.log()
    finally:
        stop_server(server)
    assert response.status_code == 200, response.text[:2000]
    model = load_model(model_path)
    expected = model.predict(
        maps["Ring1"] if kind == "ring1" else {1: maps["Ring1"], 2: maps["Ring2"]}
    )
    got = outputs_by_name(response.json())
    assert got["Flag"]["data"] == expected.flag.tolist() and expected.flag.any()
    alarming = [
        line
        for line in log.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "Traceback", "DEPRECATED"))
    ]
    assert alarming == []
