"""MLServer handler of PixelRing2NMF: request -> PixelRing2NMF pipeline -> response.

Decoding turns the V2 tensors into maps and OMS columns; the pipeline does the physics; the
encoders build the outputs. Every problem of the request is an `InputError`, answered with a 400
that names it; any other exception is ours: a 500 whose body says only that, with the
traceback in the server log (DIALS shows the body to operators, and a traceback there helps
no one while it leaks code paths). The server log gets one INFO line per answered request and
one WARNING line per refused one, beside the original deployment's three [INFO] lines.

When MLServer creates the handler (in its server process), the handler puts the serving guard
in front of MLServer's REST app (serving_guard.py: requests in flight within the memory budget,
body timeouts, the maps parsed without blocking the server), and keeps itself out of MLServer's
worker processes: a worker would receive every request pickled (+1.2 GB for 5,000 LS, measured)
and the guard could not hand it the parsed maps. MLServer's defaults, which production runs,
start one worker; the model-level `parallel_workers = 0` is the way MLServer (1.5 and 1.7) lets
a model stay in the server process.
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
import re  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import TextIO  # noqa: E402

import numpy as np  # noqa: E402
from mlserver import MLModel  # noqa: E402
from mlserver.errors import InferenceError, MLServerError  # noqa: E402
from mlserver.types import (  # noqa: E402
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ResponseOutput,
)
from mlserver.utils import get_model_uri  # noqa: E402

_pipeline = importlib.import_module(f"{PACKAGE_NAME}.pixelring2nmf")
_datatype = importlib.import_module(f"{PACKAGE_NAME}.datatype")
_omstools = importlib.import_module(f"{PACKAGE_NAME}.omstools")
_errors = importlib.import_module(f"{PACKAGE_NAME}.errors")
_geometry = importlib.import_module(f"{PACKAGE_NAME}.geometry")
_nmf2d = importlib.import_module(f"{PACKAGE_NAME}.nmf2d")
_signature = importlib.import_module(f"{PACKAGE_NAME}.signature")
_guard = importlib.import_module(f"{PACKAGE_NAME}.serving_guard")
_joint = importlib.import_module(f"{PACKAGE_NAME}.joint")
InputError = _errors.InputError
PixelRing2NMF = _pipeline.PixelRing2NMF
PredictionResult = _pipeline.PredictionResult

RING2_INPUT = _signature.RING2.name
RING2_SHAPE = _geometry.MAP_SHAPE  # (rows, columns) of one LS, as DIALS sends it
RingGeometry = _geometry.RingGeometry
# A run rarely exceeds 3000 LS; 5000 LS are a 183-274 MB body, which the serving guard
# admits alone at any time (BENCHMARKS.md, memory).
DEFAULT_MAX_LUMISECTIONS = 5_000
MAX_LUMISECTIONS_PARAMETER = "max_lumisections"  # in model-settings parameters.extra
COUNTS = _datatype.Limits(0, _pipeline.MAX_COUNT, "occupancy counts")
# The request id comes back in the Ce-Id response header: a character HTTP headers cannot
# carry gave a bare 500 (non-Latin-1) or a dropped connection (CR, LF, NUL) after the
# inference had run, so ids are checked before anything else.
MAX_ID_LENGTH = 256
_VALID_ID = re.compile(rf"[\x20-\x7e]{{0,{MAX_ID_LENGTH}}}")
SHOWN_ID_LENGTH = 64  # of a refused id, in messages and log lines
SHOWN_NAMES = 10  # of a list of tensor names, in messages and log lines

RUNTIME_LOGGER = logging.getLogger("mlserver_model")  # the runtime's loggers, not the toolkit's
LOGGER = logging.getLogger("mlserver_model.app")
HANDLER_NAME = "mlserver_model-lines"  # ours, told apart from handlers configured by others
INTERNAL_ERROR_MESSAGE = (
    "Internal error of the PixelRing2NMF model while predicting; the request was valid as far "
    "as the model could check. The server log has the details."
)


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

    Every problem with a request is an InputError, answered as HTTP 400, whose message names it; the
    model itself is never changed by a request, so the server keeps answering afterwards.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # MLServer creates the model in its server process, also when it runs worker
        # processes (module docstring); this is the one moment the model is there for sure.
        show_logs(sys.stdout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the field's, in MLServer 1.7
            if self.settings.parallel_workers is None:
                self.settings.parallel_workers = 0  # stay in the server process
                _quiet_worker_opt_out()
        if _guard.install():
            settings = _guard.GuardSettings()
            LOGGER.info(
                "Serving guard in front of the REST server: at most %.0f MB of requests in "
                "flight (%d waiting, %.0f s each), bodies up to %.0f MB, %.0f s between parts",
                settings.budget_bytes / _guard.MB,
                settings.queue_length,
                settings.queue_wait_s,
                settings.max_body_bytes / _guard.MB,
                settings.body_idle_s,
            )

    async def load(self) -> bool:
        model_path = await get_model_uri(self.settings)
        # a Ring 2, a Ring 1 or a joint model: the file's geometry version says which
        self._model = _joint.load_model(model_path)
        self._geometries = self._model.geometries
        self._max_lumisections = _max_lumisections(self.settings.parameters)
        _nmf2d.single_blas_thread()
        show_logs(sys.stdout)
        self.inputs = [_metadata(spec) for spec in _signature.inputs(self._geometries)]
        self.outputs = [_metadata(spec) for spec in _signature.OUTPUTS]
        # predict runs where load runs: the guard may parse the maps for this process
        _guard.serve_in_process(
            self.name,
            *(
                _guard.LocalModel(g.input_name, self._max_lumisections * int(np.prod(g.map_shape)))
                for g in self._geometries
            ),
        )
        LOGGER.info(
            "Loaded %s (%s) from %s; at most %d lumisections per request",
            self.name,
            self._model.metadata.get("version", "unknown version"),
            model_path,
            self._max_lumisections,
        )
        # MLServer marks the model ready with this value: None would leave it never ready.
        return True

    async def unload(self) -> bool:
        _guard.stop_serving_in_process(self.name)
        return await super().unload()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        # Decoding and the pipeline run off the event loop, so health probes and the
        # parsing of other requests go on meanwhile; the model is read-only, hence thread-safe.
        try:
            check_request_id(payload.id)
            outputs, result = await asyncio.to_thread(self._predict_outputs, payload)
        except InputError as error:
            LOGGER.warning("Refused request id=%s (400): %s", shown_id(payload.id), error)
            raise InferenceError(str(error)) from None
        except MLServerError:
            raise
        except Exception as error:
            LOGGER.exception("Internal error on request id=%s", shown_id(payload.id))
            raise MLServerError(INTERNAL_ERROR_MESSAGE, status_code=500) from error
        log_request(payload.id, result, started)
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs
        )

    def _predict_outputs(
        self, payload: InferenceRequest
    ) -> tuple[list[ResponseOutput], PredictionResult]:
        wanted = _wanted_outputs(payload)
        maps, oms = decode_ring_request(payload, self._geometries, self._max_lumisections)
        if isinstance(self._model, _joint.JointNMF):
            result = self._model.predict({g.ring: maps[g.ring] for g in self._geometries}, oms)
        else:
            result = self._model.predict(maps[self._geometries[0].ring], oms)
        for line in result.flagging_lines():
            LOGGER.info(line)
        return [OUTPUT_ENCODERS[name](result) for name in wanted], result


def _metadata(spec) -> MetadataTensor:
    return MetadataTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


class _WorkerOptOutNotice(logging.Filter):
    """Drops MLServer's "DEPRECATED!!" warning about the model-level `parallel_workers`, which
    the handler sets on purpose (module docstring): in a normal start it read as trouble."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("DEPRECATED!! The `parallel_workers` setting")


def _quiet_worker_opt_out() -> None:
    parallel_logger = logging.getLogger("mlserver.parallel")
    if not any(isinstance(f, _WorkerOptOutNotice) for f in parallel_logger.filters):
        parallel_logger.addFilter(_WorkerOptOutNotice())


def check_request_id(request_id: str | None) -> None:
    """Refuse an id that the Ce-Id response header could not carry (module constants)."""
    if request_id is not None and not _VALID_ID.fullmatch(request_id):
        raise InputError(
            f"The request id must be at most {MAX_ID_LENGTH} printable ASCII characters (it "
            f"is sent back in the Ce-Id response header); got {shown_id(request_id)}"
        )


def shown_id(request_id: str | None) -> str:
    """The id as log lines and messages show it: quoted, escaped, at most SHOWN_ID_LENGTH."""
    if request_id is None:
        return "none"
    if len(request_id) <= SHOWN_ID_LENGTH:
        return ascii(request_id)
    return f"{request_id[:SHOWN_ID_LENGTH]!a}... ({len(request_id)} characters)"


def log_request(request_id: str | None, result: PredictionResult, started: float) -> None:
    """The one INFO line of an answered request, for operators: who, how many LS, what was
    flagged, and how long it took since the server received it (the guard notes that moment;
    without the guard, since the handler got the parsed request)."""
    finished = time.perf_counter()
    arrived = _guard.request_arrival() or started
    LOGGER.info(
        "Request id=%s: %d LS, flagged %d before and %d after the DCS filter; %.0f ms "
        "(%.0f ms in the model)",
        shown_id(request_id),
        len(result.flag),
        result.n_flagged_before_dcs,
        int(result.flag.sum()),
        (finished - arrived) * 1e3,
        (finished - started) * 1e3,
    )


def shown_names(names: Sequence[str]) -> str:
    """A list of tensor names for a message, at most SHOWN_NAMES of them."""
    shown = [str(name) for name in names[:SHOWN_NAMES]]
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return f"{shown}{more}"


def decode_request(
    payload: InferenceRequest, max_lumisections: int = DEFAULT_MAX_LUMISECTIONS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ring 2 maps (N, 140, 56) and OMS columns {attribute: (N,)} of a V2 request."""
    maps, oms = decode_ring_request(payload, (_geometry.RING2,), max_lumisections)
    return maps[_geometry.RING2.ring], oms


def decode_ring_request(
    payload: InferenceRequest,
    geometries: Sequence[RingGeometry],
    max_lumisections: int = DEFAULT_MAX_LUMISECTIONS,
) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """The maps of each ring {ring: (N, rows, 56)} and the OMS columns {attribute: (N,)} of a
    V2 request to a model of these rings (every one of them must be there, with the same N).

    Cheap checks (names, shapes, lengths, the LS limit) run before the one expensive step,
    converting the ~5.9 M map values of 750 Ring 2 LS. When the serving guard parsed the maps
    already (it hands MLServer the request with an empty `data` in their place), the parsed
    array goes through the same checks as a list would.
    """
    tensors = _inputs_by_name(payload)
    maps_tensors = {}
    for geometry in geometries:
        tensor = tensors.pop(geometry.input_name, None)
        if tensor is None:
            rows, columns = geometry.map_shape
            raise InputError(
                f"Missing input tensor {geometry.input_name!r} ({geometry.name} maps, shape "
                f"[N, {rows}, {columns}]); received inputs "
                f"{shown_names(sorted([*tensors, *(t for t in maps_tensors)]))}"
            )
        maps_tensors[geometry.input_name] = tensor
    counts = {
        g.input_name: _n_lumisections(list(maps_tensors[g.input_name].shape), max_lumisections, g)
        for g in geometries
    }
    if len(set(counts.values())) > 1:
        raise InputError(
            "The maps of both rings must hold the same lumisections in the same order; got "
            + " and ".join(f"{n} in {name!r}" for name, n in counts.items())
        )
    n_ls = next(iter(counts.values()))
    oms = _omstools.oms_columns(tensors, n_ls, _decode_column)
    maps = {g.ring: _decode_maps(maps_tensors[g.input_name], g.input_name) for g in geometries}
    return maps, oms


def _decode_maps(tensor, name: str) -> np.ndarray:
    values = _datatype.tensor_values(tensor.data)
    empty = isinstance(values, list) and not values  # the guard may have parsed the maps
    parsed = _guard.parsed_values(name) if empty else None
    try:
        if parsed is not None:
            return _datatype.decode_parsed_integers(
                parsed, _datatype_name(tensor), list(tensor.shape), limits=COUNTS
            )
        return _datatype.decode_numeric(
            values, _datatype_name(tensor), list(tensor.shape), limits=COUNTS
        )
    except ValueError as error:
        raise InputError(f"Input {name!r}: {error}") from error


def _decode_column(tensor) -> np.ndarray:
    return _datatype.decode_nullable(
        _datatype.tensor_values(tensor.data), _datatype_name(tensor), list(tensor.shape)
    )


def _datatype_name(tensor) -> str:
    # MLServer's models use enum values, so this is already "INT32"; the getattr is a safeguard.
    return str(getattr(tensor.datatype, "value", tensor.datatype))


def _inputs_by_name(payload: InferenceRequest) -> dict:
    tensors = {}
    for tensor in payload.inputs:
        if tensor.name in tensors:
            raise InputError(f"Input tensor {tensor.name!r} is given more than once")
        tensors[tensor.name] = tensor
    return tensors


def _n_lumisections(
    shape: list[int], max_lumisections: int, geometry: RingGeometry = _geometry.RING2
) -> int:
    name, map_shape = geometry.input_name, geometry.map_shape
    if (
        len(shape) != 3
        or tuple(shape[1:]) != map_shape
        or not isinstance(shape[0], int)
        or shape[0] < 0
    ):
        raise InputError(
            f"Input {name!r} must have shape [N, {map_shape[0]}, {map_shape[1]}] "
            f"(N lumisections), got {shape}"
        )
    n_ls = shape[0]
    if n_ls > max_lumisections:
        raise InputError(
            f"Input {name!r} has {n_ls} lumisections, more than this server accepts per "
            f"request ({max_lumisections}, parameters.extra.{MAX_LUMISECTIONS_PARAMETER}); "
            "split the request"
        )
    return n_ls


def _wanted_outputs(payload: InferenceRequest) -> list[str]:
    if not payload.outputs:
        return list(DEFAULT_OUTPUTS)
    wanted = [output.name for output in payload.outputs]
    unknown = [name for name in wanted if name not in OUTPUT_ENCODERS]
    if unknown:
        raise InputError(
            f"Unknown output(s) {unknown} requested; this model returns {list(OUTPUT_ENCODERS)}"
        )
    repeated = sorted({name for name in wanted if wanted.count(name) > 1})
    if repeated:
        raise InputError(f"Output(s) {repeated} requested more than once; ask for each once")
    return wanted


def _max_lumisections(parameters) -> int:
    extra = (getattr(parameters, "extra", None) or {}) if parameters is not None else {}
    value = extra.get(MAX_LUMISECTIONS_PARAMETER, DEFAULT_MAX_LUMISECTIONS)
    return _errors.checked_integer(
        value, f"model-settings parameters.extra.{MAX_LUMISECTIONS_PARAMETER}", minimum=1
    )


class OnePrefixFormatter(logging.Formatter):
    """'[LEVEL]: message', unless the message already starts with its own '[...]' prefix.

    The three flagging lines carry the original deployment's '[INFO]: ' in their text (tools
    grep them), so a second prefix would only double it.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        return message if message.startswith("[") else f"[{record.levelname}]: {message}"


def show_logs(stream: TextIO) -> None:
    """Make the runtime's log lines (the handler's, omstools') reach `stream`, once.

    MLServer configures only its own "mlserver" logger, so without a handler here Python would
    drop the INFO lines of "mlserver_model". A logger that someone else configured (a
    logging_settings file) is left alone; our own handler is pointed at the new stream.
    """
    if RUNTIME_LOGGER.level == logging.NOTSET:
        RUNTIME_LOGGER.setLevel(logging.INFO)
    for handler in [h for h in RUNTIME_LOGGER.handlers if h.get_name() == HANDLER_NAME]:
        RUNTIME_LOGGER.removeHandler(handler)  # not setStream: it may flush a closed stream
    if not RUNTIME_LOGGER.handlers:
        handler = logging.StreamHandler(stream)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(OnePrefixFormatter())
        RUNTIME_LOGGER.addHandler(handler)
        RUNTIME_LOGGER.propagate = False
