"""The model file is a declared schema: round trip, and a table of hostile or broken files.

Each crafted file is loaded in its own interpreter, because the failures guarded against here
are the ones a try/except cannot catch (a segmentation fault from a crafted numpy dtype, a hang
on shared references, a RecursionError): the loader must refuse it with a message that names
the problem, exit normally and not hang.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from mlserver_model.artifact import (
    FORMAT_VERSION,
    GEOMETRY_VERSION,
    ArtifactError,
    encode_array,
    load_artifact,
)
from mlserver_model.bad_ROC import Thresholds
from mlserver_model.pixelring2nmf import DEFAULT_MODEL_PATH, PixelRing2NMF

REFUSED_EXIT = 3
LOAD_TIMEOUT_S = 10.0
_LOAD_IN_A_FRESH_INTERPRETER = f"""
import sys
from mlserver_model.artifact import ArtifactError
from mlserver_model.pixelring2nmf import PixelRing2NMF
try:
    PixelRing2NMF.load(sys.argv[1])
except ArtifactError as error:
    print(error)
    sys.exit({REFUSED_EXIT})
print("loaded")
"""


def _components(k: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.5, 1.5, (k, 136, 48)).astype(np.float32)
    return raw / raw.mean(axis=(1, 2), keepdims=True)


def _payload(**changes: Any) -> dict[str, Any]:
    """A valid raw file payload (as written to disk), with some fields replaced."""
    payload = {
        "format_version": FORMAT_VERSION,
        "name": "pixel-ring2-nmf",
        "version": "test",
        "geometry_version": GEOMETRY_VERSION,
        "components": encode_array(_components()),
        "model_error": encode_array(np.full((136, 48), 0.05, np.float32)),
        "thresholds": asdict(Thresholds()),
        "training": {"runs": [1, 2], "data_files": ["x.parquet"]},
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not _DROP}


_DROP = object()


class _Reduce:
    """Pickles as `callable(*args)` (then `__setstate__(state)`): how a pickle smuggles objects."""

    def __init__(self, callable_: Any, args: tuple, state: Any = None) -> None:
        self.reduced = (callable_, args) if state is None else (callable_, args, state)

    def __reduce__(self) -> tuple:
        return self.reduced


class _Nested:
    """Stands for [[[...]]] `depth` deep: too deep for pickle.dumps, so `_write` splices the
    opcodes in by hand (EMPTY_LIST x depth, then APPEND x (depth - 1))."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


_PLACEHOLDER = "nested-list-placeholder"


def _pickle(content: Any) -> bytes:
    nested = [v for v in _values(content) if isinstance(v, _Nested)]
    if not nested:
        return pickle.dumps(content, protocol=4)
    # protocol 3: no frames, so a spliced run of opcodes needs no length fix-up
    raw = pickle.dumps(_replace(content, nested[0], _PLACEHOLDER), protocol=3)
    text = _PLACEHOLDER.encode()
    serialized = b"X" + len(text).to_bytes(4, "little") + text
    opcodes = b"]" * nested[0].depth + b"a" * (nested[0].depth - 1)
    return raw.replace(serialized, opcodes, 1)


def _values(content: Any):
    yield content
    if isinstance(content, dict):
        for value in content.values():
            yield from _values(value)


def _replace(content: Any, old: Any, new: Any) -> Any:
    if content is old:
        return new
    if isinstance(content, dict):
        return {k: _replace(v, old, new) for k, v in content.items()}
    return content


def _shared(depth: int) -> list:
    """2^depth paths through `depth` lists: ~depth * 10 bytes of pickle, exponential to walk."""
    value: list = []
    for _ in range(depth):
        value = [value, value]
    return value


def _thresholds(**changes: Any) -> dict[str, Any]:
    return {**asdict(Thresholds()), **changes}


def _raw_array(dtype: str, shape: list, data: bytes) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": data}


_HIDDEN_OBJECT_DTYPE_STATE = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)

# (case, file bytes, what the refusal must say)
HOSTILE_FILES: list[tuple[str, Any, str]] = [
    ("runs a shell command", _Reduce(os.system, ("touch /tmp/pixelring2nmf-pwned",)), "refusing"),
    (
        "numpy array pickled the numpy way",
        _payload(components=_components()),
        r"refusing numpy.*_reconstruct",
    ),
    (
        "dtype whose object field is hidden",
        _payload(components=_Reduce(np.dtype, ("V8", False, True), _HIDDEN_OBJECT_DTYPE_STATE)),
        r"refusing numpy\.dtype",
    ),
    (
        "dtype field offset past its itemsize (as metadata)",
        _payload(
            training={
                "x": _Reduce(
                    np.dtype,
                    ("V4", False, True),
                    (3, "|", None, ("a",), {"a": (np.dtype("<f8"), 1 << 20)}, 4, 1, 0),
                )
            }
        ),
        r"refusing numpy\.dtype",
    ),
    (
        "object dtype array",
        _payload(components=_raw_array("|O", [2, 136, 48], b"")),
        "not a plain number",
    ),
    (
        "structured dtype array",
        _payload(components=_raw_array("|V8", [2, 136, 48], b"")),
        "not a plain number",
    ),
    (
        "subarray dtype",
        _payload(components=_raw_array("(2,)<f4", [2, 136, 48], b"")),
        "not a plain number",
    ),
    (
        "huge declared shape, few bytes",
        _payload(components=_raw_array("<f4", [2**40, 136, 48], b"\0" * 64)),
        r"shape must be \(K, 136, 48\)|bytes do not hold",
    ),
    (
        "bytes do not match the shape",
        _payload(components=_raw_array("<f4", [2, 136, 48], b"\0" * 64)),
        "bytes do not hold",
    ),
    (
        "wrong map shape",
        _payload(components=encode_array(np.ones((2, 136, 47), np.float32))),
        r"shape must be \(K, 136, 48\)",
    ),
    (
        "NaN in components",
        _payload(components=encode_array(np.full((2, 136, 48), np.nan, np.float32))),
        "finite",
    ),
    (
        "components not of mean 1",
        _payload(components=encode_array(2 * _components())),
        r"mean 1.*\[0, 1\]",
    ),
    ("shared references (1 kB)", _payload(training={"bomb": _shared(40)}), "nested deeper"),
    ("100,000-deep nesting", _payload(training={"deep": _Nested(100_000)}), "nested deeper"),
    (
        "z_threshold as text",
        _payload(thresholds=_thresholds(z_threshold="4")),
        "'z_threshold' must be a number",
    ),
    (
        "metric_threshold NaN",
        _payload(thresholds=_thresholds(metric_threshold=math.nan)),
        "'metric_threshold' must be finite",
    ),
    (
        "min_live_rocs as float",
        _payload(thresholds=_thresholds(min_live_rocs=16.5)),
        "'min_live_rocs' must be an integer",
    ),
    (
        "a fraction above 1",
        _payload(thresholds=_thresholds(group_fraction=4.0)),
        r"'group_fraction' must be in \[0, 1\], got 4.0",
    ),
    ("unknown threshold", _payload(thresholds=_thresholds(eps=0.1)), r"unknown key\(s\) \['eps'\]"),
    (
        "missing threshold",
        _payload(thresholds={k: v for k, v in _thresholds().items() if k != "z_threshold"}),
        r"missing key\(s\) \['z_threshold'\]",
    ),
    ("unknown top-level key", _payload(extra=1), r"unknown key\(s\) \['extra'\]"),
    ("missing model error", _payload(model_error=_DROP), r"missing key\(s\) \['model_error'\]"),
    ("old format 1", _payload(format_version=1), "format version 1 is not supported"),
    ("not a dict", [1, 2], "expected a dict"),
]


def _write(tmp_path: Path, case: str, content: Any) -> Path:
    path = tmp_path / (case.replace(" ", "_").replace(",", "") + ".joblib")
    path.write_bytes(_pickle(content))
    return path


@pytest.mark.parametrize(
    ("case", "content", "message"), HOSTILE_FILES, ids=[c for c, _, _ in HOSTILE_FILES]
)
def test_a_crafted_model_file_is_refused_clearly_in_a_fresh_interpreter(
    case: str, content: Any, message: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, case, content)
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_FRESH_INTERPRETER, str(path)],
        capture_output=True,
        text=True,
        timeout=LOAD_TIMEOUT_S,
        check=False,
    )
    assert out.returncode == REFUSED_EXIT, (out.returncode, out.stdout, out.stderr[-2000:])
    assert str(path) in out.stdout
    assert __import__("re").search(message, out.stdout), out.stdout
    assert not Path("/tmp/pixelring2nmf-pwned").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("truncated", pickle.dumps(_payload(), protocol=4)[:200]),
        ("text", b"run,ls\n1,2\n"),
        ("empty", b""),
        ("parquet", b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00PAR1"),
    ],
)
def test_foreign_and_truncated_files_get_clear_errors(name: str, content: bytes, tmp_path: Path):
    path = tmp_path / f"{name}.joblib"
    path.write_bytes(content)
    with pytest.raises(ArtifactError, match="not a readable PixelRing2NMF model file"):
        load_artifact(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"not found: .*nope\.joblib"):
        PixelRing2NMF.load(tmp_path / "nope.joblib")


def test_round_trip_keeps_values_and_joblib_reads_the_file(model: PixelRing2NMF, tmp_path: Path):
    path = model.save(tmp_path / "again.joblib")
    again = PixelRing2NMF.load(path)
    np.testing.assert_array_equal(again.components, model.components)
    np.testing.assert_array_equal(again.model_error, model.model_error)
    assert again.thresholds == model.thresholds
    assert again.metadata["training"] == model.metadata["training"]
    raw = joblib.load(path)  # a plain dict: readable without this code
    assert raw["format_version"] == FORMAT_VERSION and raw["components"]["dtype"] == "<f4"


def test_a_valid_crafted_payload_loads(tmp_path: Path) -> None:
    """The table's files differ from this one in one field each."""
    model = PixelRing2NMF.load(_write(tmp_path, "valid", _payload()))
    assert model.components.shape == (2, 6528)
    assert model.metadata["training"]["runs"] == [1, 2]


def test_saving_refuses_what_could_not_be_loaded(model: PixelRing2NMF, tmp_path: Path) -> None:
    broken = PixelRing2NMF(2 * model.components, model.model_error, model.thresholds)
    with pytest.raises(ArtifactError, match="mean 1"):
        broken.save(tmp_path / "broken.joblib")
    assert not (tmp_path / "broken.joblib").exists()


def test_files_of_0_1_0_with_the_original_thresholds_still_load(tmp_path: Path) -> None:
    """The original rule left the served model: its two thresholds are no longer written, and
    a file that still carries them (every file before this change, the shipped one included)
    loads with them dropped, deciding exactly as before."""
    old = _thresholds(original_loss=1e5, original_group_fraction=0.40)
    path = tmp_path / "old.joblib"
    path.write_bytes(pickle.dumps(_payload(thresholds=old), protocol=4))
    model = PixelRing2NMF.load(path)
    assert asdict(model.thresholds) == asdict(Thresholds())
    resaved = model.save(tmp_path / "new.joblib")
    stored = pickle.loads(resaved.read_bytes())["thresholds"]
    assert "original_loss" not in stored and "original_group_fraction" not in stored
    shipped = pickle.loads(DEFAULT_MODEL_PATH.read_bytes())["thresholds"]
    assert PixelRing2NMF.load().thresholds == Thresholds.from_mapping(shipped)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"z_threshold": "4"}, r"'z_threshold' must be a number, got '4' \(str\)"),
        ({"min_live_rocs": 16.5}, r"'min_live_rocs' must be an integer, got 16.5"),
        ({"min_live_rocs": True}, r"'min_live_rocs' must be an integer, got True \(bool\)"),
        ({"live_fraction": 1.5}, r"'live_fraction' must be in \[0, 1\], got 1.5"),
        ({"min_relative_deficit": -0.1}, r"'min_relative_deficit' must be in \[0, 1\]"),
        ({"screen_deficit": -0.5}, None),  # negative: every group is judged (allowed)
        ({"metric_threshold": float("inf")}, r"'metric_threshold' must be finite"),
    ],
)
def test_each_threshold_is_checked_against_its_declared_kind_and_bounds(changes, message):
    if message is None:
        assert Thresholds(**changes).screen_deficit == -0.5
        return
    with pytest.raises(ValueError, match=message):
        Thresholds(**changes)
    assert set(Thresholds.CONSTRAINTS) == {spec.name for spec in fields(Thresholds)}
