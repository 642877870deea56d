"""`pixelring2nmf build`: `dismcli build` (cmsdism 0.6.1) without the checks against DIALS.

`build` validates template.yaml with dism-core and writes the tree `dismcli build` writes, file
for file (a test builds both and compares them): `$BUILD_PATH` (dismcli's variable, default
`.dism-artifacts/build`) replaced whole, holding for each MLServer resource `<Key>/` = every
entry of CodeUri (`__pycache__` included, as dismcli copies it), the model file and
`model-settings.json` {"name": Name, "implementation": Handler, "parameters": {"uri": <model file
name>, "version": "0.1.0"}}, and beside them a normalised `template.yaml` (CodeUri and ModelUri
relative to the build). Unlike dismcli it neither logs in to CERN nor checks the ME and the
datasets against DIALS. Paths in the template resolve against the current directory, as with
dismcli.

Nothing for local serving goes into the build: `dismcli package` zips the folder whole, and a
settings.json there would ship (MLServer gives it priority over the environment, so a local
one would pin the deployed server to loopback). `serve` passes its settings through MLServer's
environment variables instead (serving/mlserver.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError

BUILD_PATH_ENV = "BUILD_PATH"
DEFAULT_BUILD_PATH = Path(".dism-artifacts/build")
MODEL_SETTINGS_FILE = "model-settings.json"
BUILD_TEMPLATE_FILE = "template.yaml"  # the normalised template, in the build root
MODEL_VERSION = "0.1.0"  # dismcli writes this fixed version


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


# --------------------------------------------------------------------------- build


def model_settings(properties: Any) -> dict[str, Any]:
    """model-settings.json exactly as dismcli writes it (the model file sits beside it)."""
    return {
        "name": properties.Name,
        "implementation": properties.Handler,
        "parameters": {"uri": Path(properties.ModelUri).name, "version": MODEL_VERSION},
    }


def build_root() -> Path:
    return Path(os.environ.get(BUILD_PATH_ENV) or DEFAULT_BUILD_PATH)


def build(
    template_path: str | Path,
    *,
    runs_from_model: bool = False,
    report: Callable[[str], object] | None = None,
) -> dict[str, Path]:
    """Validate the template and write the build root as dismcli does; {key: folder}.

    The tree is assembled beside the root and put in its place once complete, so a failed
    build leaves the previous one whole. The built template's MinRunNumber/MaxRunNumber are
    the model's period (serving/validity.py; `report` gets the line that says so).
    """
    from .model_match import check_model_match
    from .validity import apply_model_period

    template = load_template(template_path)
    resources = mlserver_resources(template)
    for key, resource in resources.items():  # before anything is written: it may refuse
        check_model_match(key, resource.Properties, template_path)
        line = apply_model_period(
            key, resource.Properties, template_path, runs_from_model=runs_from_model
        )
        if report is not None:
            report(line)
    root = build_root()
    staging = root.with_name(f".{root.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    folders = {}
    for key, resource in resources.items():
        build_resource(key, resource.Properties, staging)
        # as dismcli, after copying: the built template points into the build
        resource.Properties.CodeUri = Path(key)
        resource.Properties.ModelUri = Path(Path(resource.Properties.ModelUri).name)
        folders[key] = root / key
    _write_template(template, staging / BUILD_TEMPLATE_FILE)
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    return folders


def build_resource(key: str, properties: Any, root: Path) -> Path:
    """Write `<root>/<key>/`: the model file, every entry of CodeUri, model-settings.json."""
    folder = root / key
    folder.mkdir(parents=True)
    model_path = Path(properties.ModelUri)
    shutil.copy2(model_path, folder / model_path.name)
    for source in sorted(Path(properties.CodeUri).glob("*")):
        if source.is_dir():
            shutil.copytree(source, folder / source.name)
        else:
            shutil.copy2(source, folder / source.name)
    with open(folder / MODEL_SETTINGS_FILE, "w", encoding="utf-8") as handle:
        json.dump(model_settings(properties), handle)
    return folder


def _write_template(template: Any, path: Path) -> None:
    """The template as dismcli writes it into the build: yaml.dump of its JSON model dump."""
    import yaml

    with open(path, "w", encoding="utf-8") as handle:
        yaml.dump(template.model_dump(mode="json"), handle)


def source_files(template_path: str | Path, properties: Any) -> Iterator[Path]:
    """Every file a build copies or depends on: the template, CodeUri's files, the model."""
    yield Path(template_path)
    yield Path(properties.ModelUri)
    for path in Path(properties.CodeUri).rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def needs_build(template_path: str | Path, properties: Any, folder: Path) -> bool:
    """True when the folder is missing, was built from other settings, or is older than a
    source (byte-code caches aside: Python rewrites them, and they change nothing served)."""
    stamp = folder / MODEL_SETTINGS_FILE  # written after every copied file
    try:
        with open(stamp, encoding="utf-8") as handle:
            if json.load(handle) != model_settings(properties):
                return True
    except (OSError, ValueError):
        return True
    built_ns = stamp.stat().st_mtime_ns
    sources = source_files(template_path, properties)
    return any(path.stat().st_mtime_ns > built_ns for path in sources)


def prepare_serving(template_path: str | Path) -> tuple[Path, bool]:
    """The build folder of the template's one inference service, and whether it was rebuilt.

    `serve` runs one MLServer for one model: a template with several services is refused.
    The build is redone only when a source changed.
    """
    template = load_template(template_path)
    resources = mlserver_resources(template)
    if len(resources) != 1:
        raise DataError(
            f"serve runs one inference service, the template has {len(resources)}: "
            f"{sorted(resources)}"
        )
    ((key, resource),) = resources.items()
    folder = build_root() / key
    if not needs_build(template_path, resource.Properties, folder):
        return folder, False
    return build(template_path)[key], True
