"""The built folder is the whole runtime: it serves alone, and needs nothing of the toolkit.

DISM zips the model folder and DIALS runs it in `seldonio/mlserver:1.5.0`, where nothing outside
the folder exists and only numpy, scipy, scikit-learn, pandas, joblib and mlserver are
installed. Here a copy of the build folder is imported as MLServer does (the folder on
sys.path, `app` imported as a top-level module) in a fresh interpreter in which the toolkit and
the offline libraries are made unimportable, and it answers a request.
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
}))
"""


def _request(maps: np.ndarray, dcs: dict[str, np.ndarray]) -> dict[str, Any]:
    inputs = [
        {
            "name": "Ring2",
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
