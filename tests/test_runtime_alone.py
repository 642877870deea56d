"""The built folder is the whole runtime: it serves alone, and needs nothing of the toolkit.

DISM zips the model folder and DIALS runs it in `seldonio/mlserver:1.5.0`, where nothing outside
the folder exists and only numpy, scipy, scikit-learn, pandas, joblib and mlserver are
installed. Here a copy of the build folder is imported as MLServer does (the folder on
sys.path, `app` imported as a top-level module) in a fresh interpreter in which the toolkit and
the offline libraries are made unimportable, and it answers a request; the builds of the three
templates (Ring 2, Ring 1, joint) do the same in the image's Python (.venv-image).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import IMAGE_PYTHON, needs_image_venv

from mlserver_model.dftools import DCS_FLAGS

# What the toolkit uses and the image lacks; importing any of them in the runtime is a bug.
OFFLINE_MODULES = (
    "pyarrow",
    "matplotlib",
    "requests",
    "tqdm",
    "yaml",
    "dism_core",
    "pixelring2nmf",  # the toolkit (the folder's pipeline is mlserver_model.pixelring2nmf)
)

# Run in the fresh interpreter: block the offline modules, import app from the folder, serve
# one request through the handler, report the outputs and which modules were imported.
_SERVE_ONE_REQUEST = """
import asyncio, importlib.abc, json, sys

blocked = set(json.loads(sys.argv[1]))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not in the image", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import app
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest

folder = sys.path[0]
settings = ModelSettings.parse_file(folder + "/model-settings.json")
settings.parameters.uri = folder + "/" + settings.parameters.uri
handler = app.Handler(settings)
assert asyncio.run(handler.load()) is True
request = InferenceRequest(**json.loads(open(sys.argv[2]).read()))
response = asyncio.run(handler.predict(request))
print(json.dumps({
    "outputs": {o.name: list(o.data) for o in response.outputs},
    "modules": sorted(sys.modules),
    "package_file": sys.modules["mlserver_model"].__file__,
    "numpy": sys.modules["numpy"].__version__,
}))
"""


def _request(maps: np.ndarray, dcs: dict[str, np.ndarray], name: str = "Ring2") -> dict[str, Any]:
    inputs = [
        {
            "name": name,
            "shape": list(maps.shape),
            "datatype": "INT32",
            "data": maps.ravel().tolist(),
        }
    ]
    inputs += [
        {
            "name": f"oms_lumisection_info__{flag}",
            "shape": [len(maps)],
            "datatype": "BOOL",
            "data": dcs[flag].tolist(),
        }
        for flag in DCS_FLAGS
    ]
    return {"inputs": inputs}


def test_a_copy_of_the_build_folder_serves_alone_without_offline_modules(
    build_folder: Path, demo_data: dict[str, Any], model, tmp_path: Path
) -> None:
    folder = tmp_path / "pixel-ring2-nmf"  # renamed, as `dismcli start-api` mounts it
    shutil.copytree(build_folder, folder, ignore=shutil.ignore_patterns("__pycache__"))
    maps = np.asarray(demo_data["Ring2"][:40])
    dcs = {flag: np.asarray(demo_data[flag][:40], dtype=bool) for flag in DCS_FLAGS}
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(_request(maps, dcs)))
    site = sysconfig.get_paths()["purelib"]
    stdlib = [p for p in sys.path if "lib/python" in p and "site-packages" not in p]
    code = f"import sys; sys.path[:] = {[str(folder), site, *stdlib]!r}\n" + _SERVE_ONE_REQUEST
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, json.dumps(OFFLINE_MODULES), str(request_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])

    expected = model.predict(maps, dcs)
    assert report["outputs"]["Flag"] == expected.flag.tolist()
    np.testing.assert_allclose(report["outputs"]["Metric"], expected.metric, rtol=1e-6)

    imported = set(report["modules"])
    runtime_modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    assert {f"mlserver_model.{name}" for name in runtime_modules - {"app"}} <= imported
    assert "app" in imported and "mlserver_model" in imported
    assert not imported & set(OFFLINE_MODULES)
    assert report["package_file"] == str(folder / "__init__.py")  # not the repository's copy


@needs_image_venv
@pytest.mark.parametrize("kind", ["ring2", "ring1", "fpix"])
def test_the_build_of_each_template_serves_alone_in_the_image(
    kind: str,
    request: pytest.FixtureRequest,
    demo_data: dict[str, Any],
    fpix_demo_maps: dict[int, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """template.yaml, template_ring1.yaml and template_fpix.yaml, each built from the same
    runtime folder, imported alone by the image's Python (MLServer 1.5.0, numpy 1.26)."""
    from mlserver_model.joint import load_model
    from pixelring2nmf.serving import dism

    template, model_path, name = {
        "ring2": ("test_template", "model_path", "pixel-ring2-nmf"),
        "ring1": ("ring1_template", "ring1_model_path", "pixel-ring1-nmf"),
        "fpix": ("fpix_template", "fpix_model_path", "pixel-fpix-nmf"),
    }[kind]
    monkeypatch.setenv(dism.BUILD_PATH_ENV, str(tmp_path / "build"))
    (built,) = dism.build(request.getfixturevalue(template)).values()
    folder = tmp_path / name  # as `dismcli start-api` mounts it
    shutil.copytree(built, folder, ignore=shutil.ignore_patterns("__pycache__"))
    rows = slice(250, 290)  # the demo's Multi-Disk LS among healthy ones
    maps = {"Ring1": fpix_demo_maps[1][rows], "Ring2": fpix_demo_maps[2][rows]}
    dcs = {flag: np.asarray(demo_data[flag][rows], dtype=bool) for flag in DCS_FLAGS}
    names = {"ring2": ["Ring2"], "ring1": ["Ring1"], "fpix": ["Ring1", "Ring2"]}[kind]
    body = _request(maps[names[0]], dcs, names[0])
    for other in names[1:]:
        body["inputs"].insert(1, _request(maps[other], dcs, other)["inputs"][0])
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(body))
    code = f"import sys; sys.path.insert(0, {str(folder)!r})\n" + _SERVE_ONE_REQUEST
    out = subprocess.run(
        [str(IMAGE_PYTHON), "-I", "-c", code, json.dumps(OFFLINE_MODULES), str(request_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])

    model = load_model(request.getfixturevalue(model_path))
    if kind == "fpix":
        expected = model.predict({1: maps["Ring1"], 2: maps["Ring2"]}, dcs)
    else:
        expected = model.predict(maps[names[0]], dcs)
    assert report["outputs"]["Flag"] == expected.flag.tolist()
    assert expected.flag.any()  # the demo's Multi-Disk LS
    np.testing.assert_allclose(report["outputs"]["Metric"], expected.metric, rtol=1e-6)
    assert report["numpy"] == "1.26.4"
    assert not set(report["modules"]) & set(OFFLINE_MODULES)
    assert report["package_file"] == str(folder / "__init__.py")
