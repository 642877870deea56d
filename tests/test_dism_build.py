"""template.yaml against dism-core, and `pixelring2nmf build` / the serve staleness check.

dism-core resolves CodeUri/ModelUri against the current directory (as dismcli does), so these
tests run from the repository root and send the build to a temporary BUILD_PATH.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from dism_core.template import Template
from dism_core.validation.isvc import InferenceServiceValidator

from mlserver_model.pixelring2nmf import MODEL_NAME
from pixelring2nmf.cli import main as cli_main
from pixelring2nmf.serving import dism as dism_build
from pixelring2nmf.serving import mlserver

REPO = Path(__file__).resolve().parents[1]
KEY = "PixelRing2NMF"


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run from the repository root with the build going to tmp_path/build."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv(dism_build.BUILD_PATH_ENV, str(tmp_path / "build"))
    return tmp_path / "build"


def template_dict() -> dict:
    return yaml.safe_load((REPO / "template.yaml").read_text())


def write_template(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def test_template_is_valid_under_dism_core(in_repo: Path) -> None:
    template = Template.from_yaml_file(REPO / "template.yaml")
    InferenceServiceValidator(template)()
    resource = template.Resources[KEY]
    props = resource.Properties
    assert (resource.Type, resource.Workspace) == ("InferenceService::MLServer::SKLearn", "global")
    assert props.Name == MODEL_NAME  # the name the model file and the tests use
    assert props.Image == "registry.cern.ch/docker.io/seldonio/mlserver:1.5.0"
    assert (props.BuiltinThreshold, props.FlaggingKey, props.MetricKey) == (True, "Flag", "Metric")
    assert props.AnomalyThreshold is None
    assert [(s.Name, s.DataType.value, s.Dims) for s in props.InputSignature] == [
        ("Ring2", "INT32", [-1, 140, 56])
    ]
    assert props.InputSignature[0].MonitoringElement.endswith(
        "clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_2"
    )
    assert [(s.Name, s.DataType.value) for s in props.OutputSignature] == [
        ("Flag", "BOOL"),
        ("Metric", "FP32"),
    ]
    (metadata,) = props.InputMetadata
    assert (metadata.Name, metadata.Source.value, metadata.Endpoint.value) == (
        "oms_lumisection_info",
        "OMS",
        "lumisections",
    )
    types = {a.Name: a.DataType.value for a in metadata.Attributes}
    assert types["run_number"] == types["lumisection_number"] == "INT32"
    assert types["pileup"] == "FP32"
    dcs = [name for name, kind in types.items() if kind == "BOOL"]
    assert dcs == [
        "beams_stable",
        "cms_active",
        "bpix_ready",
        "fpix_ready",
        "tibtid_ready",
        "tob_ready",
        "tecp_ready",
        "tecm_ready",
    ]
    conditions = props.InferenceOnConditions
    assert conditions.MinRunNumber == 382800 and conditions.StableBeams is True
    assert conditions.AllowedPrimaryDatasets == ["ZeroBias"]
    assert (conditions.FillType, conditions.Clock, conditions.Sequence) == (
        "PROTONS",
        "LHC",
        "GLOBAL-RUN",
    )
    assert (conditions.MinBField, conditions.MinEnergy) == (3.5, 6500)
    # the deployed original's conditions, known to select the runs DIALS should score
    assert conditions.MaxRunNumber == 999999
    assert (
        conditions.L1KeyMatch.pattern,
        conditions.L1MenuMatch.pattern,
        conditions.HLTConfigMatch.pattern,
    ) == (".*collisions.*", ".*_Collisions.*_.*", ".*/physics/.*")
    assert conditions.L1KeyMatch.match("l1_trg_collisions2024/v64")
    assert conditions.L1MenuMatch.match("L1Menu_Collisions2024_v1_3_0")
    assert conditions.HLTConfigMatch.match("/cdaq/physics/Run2024/2e34/v1.4.9/HLT/V1")
    assert not conditions.HLTConfigMatch.match("/cdaq/special/Run2024/VdM/v1/HLT/V1")
    # set from bench/memory.py: the limit covers a request of max_lumisections LS
    resources = props.Resources
    assert (resources.Requests.cpu, resources.Requests.memory) == ("1", "1Gi")
    assert (resources.Limits.cpu, resources.Limits.memory) == ("2", "3Gi")
    assert (str(props.CodeUri), props.Handler, str(props.ModelUri)) == (
        "mlserver_model",
        "app.Handler",
        "mlserver_model/pixelring2nmf.joblib",
    )


def test_metric_key_needs_an_output_of_that_name(in_repo: Path, tmp_path: Path) -> None:
    content = template_dict()
    content["Resources"][KEY]["Properties"]["MetricKey"] = "Score"
    with pytest.raises(ValueError, match='MetricKey "Score" not found in OutputSignature'):
        dism_build.load_template(write_template(tmp_path, content))


def test_build_writes_the_dismcli_layout(in_repo: Path, capsys: pytest.CaptureFixture) -> None:
    (in_repo / "stale").mkdir(parents=True)  # dismcli replaces the whole build root
    assert cli_main(["build"]) == 0
    folder = in_repo / KEY
    assert f"Built {KEY}" in capsys.readouterr().out
    code = REPO / "mlserver_model"
    code_files = {p.relative_to(code) for p in code.rglob("*") if p.is_file()}
    built_files = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    assert built_files == code_files | {Path("pixelring2nmf.joblib"), Path("model-settings.json")}
    assert sorted(p.name for p in in_repo.iterdir()) == [KEY, "template.yaml"]
    assert json.loads((folder / "model-settings.json").read_text()) == {
        "name": MODEL_NAME,
        "implementation": "app.Handler",
        "parameters": {"uri": "pixelring2nmf.joblib", "version": "0.1.0"},
    }
    model = REPO / "mlserver_model" / "pixelring2nmf.joblib"
    assert (folder / "pixelring2nmf.joblib").read_bytes() == model.read_bytes()
    built_template = yaml.safe_load((in_repo / "template.yaml").read_text())
    properties = built_template["Resources"][KEY]["Properties"]
    assert (properties["CodeUri"], properties["ModelUri"]) == (KEY, "pixelring2nmf.joblib")
    assert not list(in_repo.rglob("settings.json"))  # nothing local ever goes into a build


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Name": "Pixel_Ring2_NMF"}, "RFC 1123"),
        ({"Name": "pixel-ring2-nmf-" + "x" * 30}, "at most 36 characters"),
        ({"FlaggingKey": None}, "BuiltinThreshold = True and FlaggingKey"),
        ({"AnomalyThreshold": 0.5}, "AnomalyThreshold cannot be set if BuiltinThreshold = true"),
    ],
)
def test_build_rejects_a_bad_template_with_dism_core_message(
    in_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, message: str
) -> None:
    content = template_dict()
    properties = content["Resources"][KEY]["Properties"]
    for field, value in change.items():
        if value is None:
            del properties[field]
        else:
            properties[field] = value
    path = write_template(tmp_path, content)
    assert cli_main(["build", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "not a valid DISM template" in err
    assert "Traceback" not in err
    assert not (in_repo / KEY).exists()


def test_build_reports_missing_files(in_repo: Path, tmp_path: Path, capsys) -> None:
    content = template_dict()
    content["Resources"][KEY]["Properties"]["ModelUri"] = "mlserver_model/nothing.joblib"
    assert cli_main(["build", "-f", str(write_template(tmp_path, content))]) == 2
    assert "nothing.joblib not found" in capsys.readouterr().err
    assert cli_main(["build", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml not found" in capsys.readouterr().err


def test_needs_build_follows_sources(in_repo: Path) -> None:
    template_path = REPO / "template.yaml"
    properties = dism_build.load_template(template_path).Resources[KEY].Properties
    folder = in_repo / KEY
    assert dism_build.needs_build(template_path, properties, folder)
    dism_build.build(template_path)
    assert not dism_build.needs_build(template_path, properties, folder)
    # a source newer than the build (simulated by ageing the build's stamp)
    stamp = folder / dism_build.MODEL_SETTINGS_FILE
    old_ns = (REPO / "mlserver_model" / "app.py").stat().st_mtime_ns - 10**9
    os.utime(stamp, ns=(old_ns, old_ns))
    assert dism_build.needs_build(template_path, properties, folder)
    stamp.write_text(json.dumps({"name": "another-model"}))
    assert dism_build.needs_build(template_path, properties, folder)


def test_commands_use_the_given_interpreter(tmp_path: Path) -> None:
    for command in (
        mlserver.mlserver_start_command(tmp_path, "/some/python"),
        mlserver.serve_command(tmp_path, "/some/python"),
    ):
        assert command[0] == "/some/python" and command[-2:] == ["start", str(tmp_path)]
    assert str(mlserver.LAUNCHER) in mlserver.serve_command(tmp_path)


# --------------------------------------------------------------- Ring 1 and the joint model

RING1_ME = "PixelPhase1/Phase1_MechanicalView/PXForward/clusters_per_SignedDiskCoord_per_SignedBladePanelCoord_PXRing_1"  # noqa: E501
RING_TEMPLATES = {
    "template_ring1.yaml": ("PixelRing1NMF", "pixel-ring1-nmf", "pixelring1nmf.joblib"),
    "template_fpix.yaml": ("PixelFpixNMF", "pixel-fpix-nmf", "pixelfpixnmf.joblib"),
}


@pytest.mark.parametrize("template_file", sorted(RING_TEMPLATES))
def test_ring_templates_are_valid_and_differ_from_template_yaml_only_in_their_rings(
    in_repo: Path, template_file: str
) -> None:
    from mlserver_model.geometry import RING1, RING2

    key, name, model_file = RING_TEMPLATES[template_file]
    template = Template.from_yaml_file(REPO / template_file)
    InferenceServiceValidator(template)()
    properties = template.Resources[key].Properties
    rings = (RING1,) if "ring1" in template_file else (RING1, RING2)
    assert properties.Name == name
    assert [
        (s.Name, s.DataType.value, s.Dims, s.MonitoringElement) for s in properties.InputSignature
    ] == [(g.input_name, "INT32", [-1, *g.map_shape], g.me) for g in rings]
    assert str(properties.ModelUri) == f"mlserver_model/{model_file}"
    ring2 = yaml.safe_load((REPO / "template.yaml").read_text())["Resources"][KEY]["Properties"]
    ours = yaml.safe_load((REPO / template_file).read_text())["Resources"][key]["Properties"]
    differing = {field for field in {*ring2, *ours} if ring2.get(field) != ours.get(field)}
    assert differing == {"Name", "Description", "InputSignature", "ModelUri"}


@pytest.mark.parametrize("template_file", sorted(RING_TEMPLATES))
def test_build_f_writes_the_ring_models_folder(
    in_repo: Path, template_file: str, capsys: pytest.CaptureFixture
) -> None:
    key, name, model_file = RING_TEMPLATES[template_file]
    assert cli_main(["build", "-f", template_file]) == 0
    out = capsys.readouterr().out
    assert f"Built {key} in {in_repo / key}" in out
    assert "the model states no period" in out  # the shipped models are valid for every run
    folder = in_repo / key
    assert json.loads((folder / "model-settings.json").read_text()) == {
        "name": name,
        "implementation": "app.Handler",
        "parameters": {"uri": model_file, "version": "0.1.0"},
    }
    shipped = REPO / "mlserver_model" / model_file
    assert (folder / model_file).read_bytes() == shipped.read_bytes()
    assert mlserver.preflight(folder) == name


@pytest.mark.parametrize(
    ("template_file", "change", "message"),
    [
        (
            "template.yaml",
            {"ModelUri": "mlserver_model/pixelring1nmf.joblib"},
            "PXRing_2] does not fit its model mlserver_model/pixelring1nmf.joblib, a pixel-ring1",
        ),
        (
            "template_ring1.yaml",
            {"Name": "pixel-ring2-nmf"},
            "Name 'pixel-ring2-nmf' is that of a pixel-ring2-nmf model, but its model",
        ),
        (
            "template_ring1.yaml",
            {"ModelUri": "mlserver_model/pixelfpixnmf.joblib"},
            "a pixel-fpix-nmf model of Ring 1 and Ring 2, which takes [Ring1 [-1, 92, 56]",
        ),
        (
            "template_fpix.yaml",
            {"InputSignature": "Ring2 only"},
            "the InputSignature [Ring2 [-1, 140, 56] of PixelPhase1/",
        ),
        (
            "template_fpix.yaml",
            {"InputSignature": "Ring 1 ME twice"},
            f"PXRing_1, Ring2 [-1, 140, 56] of {RING1_ME}] does not fit",
        ),
    ],
)
def test_build_refuses_a_template_that_does_not_fit_its_model(
    in_repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    template_file: str,
    change: dict,
    message: str,
) -> None:
    key = RING_TEMPLATES.get(template_file, (KEY,))[0]
    content = yaml.safe_load((REPO / template_file).read_text())
    properties = content["Resources"][key]["Properties"]
    for field, value in change.items():
        if value == "Ring2 only":
            properties[field] = properties[field][1:]
        elif value == "Ring 1 ME twice":
            properties[field][1]["MonitoringElement"] = properties[field][0]["MonitoringElement"]
        else:
            properties[field] = value
    assert cli_main(["build", "-f", str(write_template(tmp_path, content))]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (in_repo / key).exists()
