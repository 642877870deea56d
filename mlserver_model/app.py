"""MLServer handler of PixelRing2NMF: request -> PixelRing2NMF pipeline -> response.

(The serving issue fills in decoding, validation and encoding; the import mechanism below is
the package's one and only way of working both as `mlserver_model` and as a bare folder.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# How this folder works both as the package `mlserver_model` and as a bare folder.
# Every module of the folder imports its siblings relatively (`from .geometry import ...`), so
# the folder is a normal package when imported as `mlserver_model` (tests, CLI). MLServer
# (and `dismcli start-api`) instead puts the folder itself on sys.path and imports `app` as a
# top-level module, where relative imports have no parent package. In that case only, app.py
# registers its own folder under the package name `mlserver_model` (whatever the folder is
# called on disk) and imports the pipeline from it. This is the only place that knows about it.
if __package__:
    _PACKAGE = sys.modules[__package__]
else:
    _folder = Path(__file__).resolve().parent
    _PACKAGE = sys.modules.get("mlserver_model")
    if _PACKAGE is None or Path(_PACKAGE.__file__).resolve().parent != _folder:
        _spec = importlib.util.spec_from_file_location(
            "mlserver_model", _folder / "__init__.py", submodule_search_locations=[str(_folder)]
        )
        _PACKAGE = importlib.util.module_from_spec(_spec)
        sys.modules["mlserver_model"] = _PACKAGE
        _spec.loader.exec_module(_PACKAGE)

PACKAGE_NAME = _PACKAGE.__name__

import asyncio  # noqa: E402
import logging  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from mlserver import MLModel  # noqa: E402
from mlserver.errors import InferenceError  # noqa: E402
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput  # noqa: E402
from mlserver.utils import get_model_uri  # noqa: E402

_pipeline = importlib.import_module(f"{PACKAGE_NAME}.pixelring2nmf")
_datatype = importlib.import_module(f"{PACKAGE_NAME}.datatype")
PixelRing2NMF = _pipeline.PixelRing2NMF
PredictionResult = _pipeline.PredictionResult

RING2_INPUT = "Ring2"
RING2_SHAPE = (140, 56)  # (rows, columns) of one LS, as DIALS sends it
OMS_SEPARATOR = "__"  # OMS tensors are named <prefix>__<attribute>
DEFAULT_MAX_LUMISECTIONS = 10_000  # a run rarely exceeds 3000 LS; 10k maps is ~400 MB of JSON
MAX_LUMISECTIONS_PARAMETER = "max_lumisections"  # in model-settings parameters.extra

LOGGER = logging.getLogger("pixelring2nmf.app")
_LOG_FORMAT = "%(asctime)s [%(name)s] %(levelname)s - %(message)s"  # as MLServer's own lines


def _flag(result: PredictionResult) -> ResponseOutput:
    return _output("Flag", "BOOL", result.flag.tolist())


def _metric(result: PredictionResult) -> ResponseOutput:
    return _output("Metric", "FP32", result.metric.astype(np.float32).tolist())


def _anomaly_type(result: PredictionResult) -> ResponseOutput:
    return _output("AnomalyType", "BYTES", [str(t) for t in result.anomaly_type])


def _groups(result: PredictionResult) -> ResponseOutput:
    return _output("Groups", "BYTES", result.groups())


def _output(name: str, datatype: str, values: list) -> ResponseOutput:
    # Built by hand: NumpyCodec would declare a 1-D array as [N, 1].
    return ResponseOutput(name=name, shape=[len(values)], datatype=datatype, data=values)


OUTPUT_ENCODERS: dict[str, Callable[[PredictionResult], ResponseOutput]] = {
    "Flag": _flag,
    "Metric": _metric,
    "AnomalyType": _anomaly_type,
    "Groups": _groups,
}
DEFAULT_OUTPUTS = ("Flag", "Metric")


class Handler(MLModel):
    """MLServer model: decode the V2 request -> PixelRing2NMF.predict -> encode the outputs.

    Every problem with a request is an InferenceError (HTTP 400) whose message names it; the
    model itself is never changed by a request, so the server keeps answering afterwards.
    """

    async def load(self) -> bool:
        model_path = await get_model_uri(self.settings)
        self._model = PixelRing2NMF.load(model_path)
        self._max_lumisections = _max_lumisections(self.settings.parameters)
        _one_blas_thread()
        _show_pipeline_logs()
        LOGGER.info(
            "Loaded %s (%s) from %s; at most %d lumisections per request",
            self.name,
            self._model.metadata.get("version", "unknown version"),
            model_path,
            self._max_lumisections,
        )
        # MLServer marks the model ready with this value: None would leave it never ready.
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # Decoding (~50 ms) and the pipeline run off the event loop, so health probes and the
        # parsing of other requests go on meanwhile; the model is read-only, hence thread-safe.
        outputs = await asyncio.to_thread(self._predict_outputs, payload)
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs
        )

    def _predict_outputs(self, payload: InferenceRequest) -> list[ResponseOutput]:
        wanted = _wanted_outputs(payload)
        maps_nyx, oms = decode_request(payload, self._max_lumisections)
        try:
            result = self._model.predict(maps_nyx, oms)
        except ValueError as error:  # the pipeline's InputError and the DCS filter's checks
            raise InferenceError(str(error)) from error
        return [OUTPUT_ENCODERS[name](result) for name in wanted]


def decode_request(
    payload: InferenceRequest, max_lumisections: int = DEFAULT_MAX_LUMISECTIONS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ring 2 maps (N, 140, 56) and OMS columns {attribute: (N,)} of a V2 request.

    Cheap checks (names, shapes, lengths, the LS limit) run before the one expensive step,
    converting the ~5.9 M map values.
    """
    tensors = _inputs_by_name(payload)
    ring2 = tensors.pop(RING2_INPUT, None)
    if ring2 is None:
        raise InferenceError(
            f"Missing input tensor {RING2_INPUT!r} (Ring 2 maps, shape [N, 140, 56]); "
            f"received inputs {sorted(tensors)}"
        )
    n_ls = _n_lumisections(list(ring2.shape), max_lumisections)
    oms = _decode_oms(tensors, n_ls)
    try:
        maps_nyx = _datatype.decode_numeric(
            _datatype.tensor_values(ring2.data), _datatype_name(ring2), list(ring2.shape)
        )
    except ValueError as error:
        raise InferenceError(f"Input {RING2_INPUT!r}: {error}") from error
    return maps_nyx, oms


def _datatype_name(tensor) -> str:
    # MLServer's models use enum values, so this is already "INT32"; the getattr is a safeguard.
    return str(getattr(tensor.datatype, "value", tensor.datatype))


def _inputs_by_name(payload: InferenceRequest) -> dict:
    tensors = {}
    for tensor in payload.inputs:
        if tensor.name in tensors:
            raise InferenceError(f"Input tensor {tensor.name!r} is given more than once")
        tensors[tensor.name] = tensor
    return tensors


def _n_lumisections(shape: list[int], max_lumisections: int) -> int:
    if (
        len(shape) != 3
        or tuple(shape[1:]) != RING2_SHAPE
        or not isinstance(shape[0], int)
        or shape[0] < 0
    ):
        raise InferenceError(
            f"Input {RING2_INPUT!r} must have shape [N, {RING2_SHAPE[0]}, {RING2_SHAPE[1]}] "
            f"(N lumisections), got {shape}"
        )
    n_ls = shape[0]
    if n_ls > max_lumisections:
        raise InferenceError(
            f"Input {RING2_INPUT!r} has {n_ls} lumisections, more than this server accepts per "
            f"request ({max_lumisections}, parameters.extra.{MAX_LUMISECTIONS_PARAMETER}); "
            "split the request"
        )
    return n_ls


def _decode_oms(tensors: dict, n_ls: int) -> dict[str, np.ndarray]:
    """OMS columns by attribute (text after the last '__'); other tensors are logged, ignored."""
    oms: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    ignored = []
    for name, tensor in tensors.items():
        prefix, separator, attribute = name.rpartition(OMS_SEPARATOR)
        if not separator or not prefix or not attribute:
            ignored.append(name)
            continue
        if attribute in oms:
            raise InferenceError(
                f"OMS attribute {attribute!r} is given twice ({source[attribute]!r} and {name!r})"
            )
        shape = list(tensor.shape)
        try:
            column = _datatype.decode_nullable(
                _datatype.tensor_values(tensor.data), _datatype_name(tensor), shape
            )
        except ValueError as error:
            raise InferenceError(f"OMS input {name!r}: {error}") from error
        if len(column) != n_ls:
            raise InferenceError(
                f"OMS input {name!r} has {len(column)} values but {RING2_INPUT!r} has "
                f"{n_ls} lumisections (one value per lumisection expected)"
            )
        oms[attribute] = column
        source[attribute] = name
    if ignored:
        LOGGER.warning(
            "Ignoring input(s) %s: neither %r nor an OMS tensor named <prefix>__<attribute>",
            ignored,
            RING2_INPUT,
        )
    return oms


def _wanted_outputs(payload: InferenceRequest) -> list[str]:
    if not payload.outputs:
        return list(DEFAULT_OUTPUTS)
    wanted = [output.name for output in payload.outputs]
    unknown = [name for name in wanted if name not in OUTPUT_ENCODERS]
    if unknown:
        raise InferenceError(
            f"Unknown output(s) {unknown} requested; this model returns {list(OUTPUT_ENCODERS)}"
        )
    return wanted


def _max_lumisections(parameters) -> int:
    extra = (getattr(parameters, "extra", None) or {}) if parameters is not None else {}
    value = extra.get(MAX_LUMISECTIONS_PARAMETER, DEFAULT_MAX_LUMISECTIONS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"model-settings parameters.extra.{MAX_LUMISECTIONS_PARAMETER} must be a positive "
            f"integer, got {value!r}"
        )
    return value


def _one_blas_thread() -> None:
    """Run BLAS on one thread in this server process.

    The pipeline's products are skinny (750 x 7840 times 7840 x 53): a second BLAS thread saves
    ~1 ms when the machine is idle, but when the cores are busy (other requests' JSON parsing,
    other containers) its spin-waiting took predict from ~20 ms to ~110 ms. threadpoolctl comes
    with scikit-learn, so it is in every environment the model runs in.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _show_pipeline_logs() -> None:
    """Make the pipeline's [INFO] lines reach the server log.

    MLServer configures only its own "mlserver" logger; without a handler on the way to the
    root logger, Python would drop INFO records of "pixelring2nmf". Where logging is already
    configured (a logging_settings file, pytest), that configuration is left alone.
    """
    pipeline_logger = logging.getLogger("pixelring2nmf")
    if pipeline_logger.level == logging.NOTSET:
        pipeline_logger.setLevel(logging.INFO)
    if not pipeline_logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        pipeline_logger.addHandler(handler)
