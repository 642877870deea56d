"""`pixelring2nmf build` / `serve`: the offline part of `dismcli build`; `start-api` without Docker.

`build` validates template.yaml with dism-core and writes `.dism-artifacts/build/<Key>/` the way
`dismcli build` (cmsdism 0.6.1) does: every entry of CodeUri, the model file and a
`model-settings.json` {"name": Name, "implementation": Handler, "parameters": {"uri": <model file
name>, "version": "0.1.0"}}. Unlike dismcli it neither logs in to CERN nor checks the ME and the
datasets against DIALS, skips `__pycache__`, replaces only the <Key> folder, and adds a
`settings.json` for a local MLServer (debug off, no worker processes, loopback only).

That settings.json is meant for local serving only: MLServer gives a settings.json in the model
folder priority over the environment, so a packaged copy would pin the production server to
loopback. This is why `build` does not write `.dism-artifacts/build/template.yaml`: without it
`dismcli package` refuses our build and a real `dismcli build` (which wipes the folder) must run
first. Paths in the template resolve against the current directory, as with dismcli; the build
root is `$BUILD_PATH` (dismcli's variable) or `.dism-artifacts/build`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlserver_model.errors import checked_integer

from ..errors import DataError, OptionError

BUILD_PATH_ENV = "BUILD_PATH"
DEFAULT_BUILD_PATH = Path(".dism-artifacts/build")
MODEL_SETTINGS_FILE = "model-settings.json"
SERVER_SETTINGS_FILE = "settings.json"
MODEL_VERSION = "0.1.0"  # dismcli writes this fixed version
_SKIPPED = ("__pycache__",)


# --------------------------------------------------------------------------- template


def load_template(template_path: str | Path) -> Any:
    """Parse and validate a DISM template with dism-core, as `dismcli build` does first.

    dism-core's own message is kept whole (it names the field and the rule); it becomes a
    DataError, so the command line ends with one message and exit code 2.
    """
    import yaml
    from dism_core.template import Template
    from dism_core.validation.isvc import InferenceServiceValidator

    template_path = Path(template_path)
    if not template_path.is_file():
        raise DataError(f"Template {template_path} not found")
    try:
        template = Template.from_yaml_file(template_path)
        InferenceServiceValidator(template)()
    except yaml.YAMLError as error:
        raise DataError(f"{template_path} is not valid YAML: {error}") from None
    except (KeyError, TypeError, AttributeError, NotImplementedError) as error:
        # dism-core indexes the raw YAML before pydantic sees it (e.g. a resource without Type)
        raise DataError(
            f"{template_path} is not a valid DISM template: {type(error).__name__}: {error}"
        ) from None
    except ValueError as error:  # pydantic's ValidationError and the validator's checks
        raise DataError(f"{template_path} is not a valid DISM template:\n{error}") from None
    return template


def mlserver_resources(template: Any) -> dict[str, Any]:
    """The template's MLServer inference services by key (the only kind this project builds)."""
    from dism_core.resources.isvc.types import ServingFrameworkType

    resources = {
        key: resource
        for key, resource in template.Resources.items()
        if resource.ServingFrameworkType == ServingFrameworkType.ML_SERVER
    }
    if not resources:
        raise DataError(
            "The template has no InferenceService::MLServer::* resource to build; "
            f"resources found: {[r.Type for r in template.Resources.values()]}"
        )
    return resources


# --------------------------------------------------------------------------- settings


def model_settings(properties: Any) -> dict[str, Any]:
    """model-settings.json exactly as dismcli writes it (the model file sits beside it)."""
    return {
        "name": properties.Name,
        "implementation": properties.Handler,
        "parameters": {"uri": Path(properties.ModelUri).name, "version": MODEL_VERSION},
    }


def server_settings(host: str = "127.0.0.1", http_port: int = 8080) -> dict[str, Any]:
    """MLServer settings.json for a local server.

    debug off: with it on, a 500 sends the whole traceback to the client. parallel_workers 0:
    a worker process would receive every ~30 MB request pickled (+0.5 s) and on 2 cores gave
    less throughput. gRPC cannot be switched off in MLServer 1.5, so it and the metrics server
    take a free port chosen by the OS (0): two local servers then never clash; nothing local
    uses them, and gRPC would refuse a 750-LS request (> 4 MiB) anyway.
    """
    if checked_integer(http_port, "HTTP port", minimum=1) > 65535:
        raise OptionError(f"HTTP port must be an integer in 1..65535, got {http_port!r}")
    return {
        "debug": False,
        "parallel_workers": 0,
        "host": host,
        "http_port": http_port,
        "grpc_port": 0,
        "metrics_port": 0,
    }


# --------------------------------------------------------------------------- build


def build_root() -> Path:
    return Path(os.environ.get(BUILD_PATH_ENV) or DEFAULT_BUILD_PATH)


def build(
    template_path: str | Path, *, host: str = "127.0.0.1", http_port: int = 8080
) -> dict[str, Path]:
    """Validate the template and write one build folder per MLServer resource; {key: folder}."""
    template = load_template(template_path)
    settings = server_settings(host, http_port)
    return {
        key: build_resource(key, resource.Properties, build_root(), settings)
        for key, resource in mlserver_resources(template).items()
    }


def build_resource(
    key: str, properties: Any, root: Path, settings: dict[str, Any] | None = None
) -> Path:
    """Write `<root>/<key>/`, replacing the previous build only once the new one is complete."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{key}.building"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    model_path = Path(properties.ModelUri)
    shutil.copy2(model_path, staging / model_path.name)
    for source in sorted(Path(properties.CodeUri).glob("*")):
        if source.name in _SKIPPED:
            continue
        if source.is_dir():
            shutil.copytree(source, staging / source.name, ignore=shutil.ignore_patterns(*_SKIPPED))
        else:
            shutil.copy2(source, staging / source.name)
    _write_json(staging / MODEL_SETTINGS_FILE, model_settings(properties))
    if settings is not None:
        _write_json(staging / SERVER_SETTINGS_FILE, settings)
    final = root / key
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    return final


def _write_json(path: Path, content: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(content, handle)


def source_files(template_path: str | Path, properties: Any) -> Iterator[Path]:
    """Every file a build copies or depends on: the template, CodeUri's files, the model."""
    yield Path(template_path)
    yield Path(properties.ModelUri)
    for path in Path(properties.CodeUri).rglob("*"):
        if path.is_file() and not any(part in _SKIPPED for part in path.parts):
            yield path


def needs_build(
    template_path: str | Path, properties: Any, folder: Path, settings: dict[str, Any]
) -> bool:
    """True when the folder is missing, older than a source, or set up for another host/port."""
    stamp = folder / MODEL_SETTINGS_FILE  # written after every copied file
    if not stamp.is_file() or not (folder / SERVER_SETTINGS_FILE).is_file():
        return True
    try:
        with open(folder / SERVER_SETTINGS_FILE, encoding="utf-8") as handle:
            if json.load(handle) != settings:
                return True
        with open(stamp, encoding="utf-8") as handle:
            if json.load(handle) != model_settings(properties):
                return True
    except (OSError, ValueError):
        return True
    built_ns = stamp.stat().st_mtime_ns
    sources = source_files(template_path, properties)
    return any(path.stat().st_mtime_ns > built_ns for path in sources)


# --------------------------------------------------------------------------- CLI


def mlserver_command(folder: Path, python: str | Path = sys.executable) -> list[str]:
    """`mlserver start <folder>` run by the given Python environment's MLServer.

    `python -m mlserver` does not exist (no __main__) and `-m mlserver.cli.main` warns about
    a double import; calling the console script's function works in MLServer 1.5 and 1.7 and
    never picks up another environment's `mlserver` from PATH.
    """
    launcher = "import sys; from mlserver.cli.main import main; sys.argv[0] = 'mlserver'; main()"
    return [str(python), "-c", launcher, "start", str(folder)]


def check_port_free(host: str, port: int) -> None:
    """Fail now, in one line, rather than after "Loaded model" with uvicorn's tracebacks."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OptionError(
                f"cannot listen on {host}:{port} ({error.strerror}): another server is using "
                "it? Choose another with --port"
            ) from None


def prepare_serving(template_path: str | Path, host: str, port: int) -> tuple[Any, Path, bool]:
    """The one inference service of the template, its build folder, and whether it was rebuilt.

    `serve` runs one MLServer for one model: a template with several services is refused.
    The folder is rebuilt only when a source or the server settings changed.
    """
    template = load_template(template_path)
    resources = mlserver_resources(template)
    if len(resources) != 1:
        raise DataError(
            f"serve runs one inference service, the template has {len(resources)}: "
            f"{sorted(resources)}"
        )
    ((key, resource),) = resources.items()
    settings = server_settings(host, port)
    folder = build_root() / key
    if not needs_build(template_path, resource.Properties, folder, settings):
        return resource.Properties, folder, False
    return (
        resource.Properties,
        build_resource(key, resource.Properties, build_root(), settings),
        True,
    )
