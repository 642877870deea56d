"""The serving guard: an ASGI layer the model puts in front of MLServer's own REST app.

MLServer (1.5 and 1.7) has no setting that bounds the requests in flight, their size, or how
long a client may take to send one (docs: BENCHMARKS.md, memory; README, serving). What it does
is parse every received body into Python objects in its event loop: ~13 bytes of memory per
byte of JSON, with the server deaf to health probes meanwhile. So the model, which MLServer
creates inside the server process, wraps the server's Starlette app (found through `gc`:
MLServer keeps it in `RESTServer._app`, and Starlette runs whatever `middleware_stack` holds)
with this guard, which for every inference request:

1. refuses at once, before reading the body, what can never be served: a compressed body
   (415: MLServer inflates it without bound) or one above MAX_BODY_BYTES (413);
2. admits it against a memory budget (admission.py) by its estimated cost, Content-Length times
   the memory per byte of its path; what does not fit waits, body unread, up to QUEUE_WAIT_S,
   then gets 503 with Retry-After (so does a request that finds QUEUE_LENGTH others waiting);
3. reads the body with an idle and a total timeout (408 and a closed connection for a client
   that stalls: uvicorn has no such timeout, so a stalled upload held its memory for ever);
4. for a model that runs in this process, cuts its flat integer maps out of the body (each
   maps tensor of the model: Ring2, Ring1, or both for the joint model) and
   parses them with numpy in a thread (tensor_text.py): ~4 bytes of memory per byte of JSON,
   and the event loop stays free, so probes answer. One body is parsed at a time: a parse
   keeps a core busy for ~1 s per 5,000 LS, and on the deployment's 2 cores the event loop
   needs the other (three at once delayed a probe by 1.3 s). The handler takes the parsed array
   (`parsed_values`); MLServer parses only the small rest. A body the cut declines goes to
   MLServer as received, its reservation grown to MLServer's cost (or 503 if that does not
   fit, or 413 above MAX_MLSERVER_PATH_BYTES); a joint request is cut only if both its
   maps tensors can be;
5. when no request is in flight any more, collects garbage and hands freed memory back to the
   OS (glibc keeps it otherwise: after a burst the server stayed 1 GB above idle).

Everything else (health probes, metadata) passes straight through. The guard answers its own
refusals with MLServer's error body, `{"error": "..."}`, and logs each one on a WARNING line.
The costs and limits below were measured with bench/memory.py on both MLServer versions and fit
template.yaml's 3 Gi limit; README says what DIALS may send at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import gc
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .admission import MemoryBudget
from .tensor_text import cut_flat_integer_tensors

LOGGER = logging.getLogger("mlserver_model.serving_guard")
MB = 1_000_000

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class GuardSettings:
    """The guard's limits (defaults: the deployment's, from template.yaml's 3 Gi limit).

    The costs are bytes of server memory per byte of request body, measured as peak over idle
    for DIALS's bodies (bench/memory.py): 3.2-3.6 on the fast path, 11.9-13.1 on MLServer's.
    """

    budget_bytes: int = 2_700 * MB  # estimated memory of the requests in flight
    fast_path_cost: float = 4.0
    mlserver_path_cost: float = 13.0
    # 5,000 LS of 5-digit counts as json.dumps writes them ("12345, ") are 274 MB
    max_body_bytes: int = 320 * MB
    # a body MLServer parses itself costs 13x: 200 MB alone reaches the budget
    max_mlserver_path_bytes: int = 200 * MB
    queue_wait_s: float = 60.0
    queue_length: int = 64
    retry_after_s: int = 10
    body_idle_s: float = 30.0  # longest pause between two parts of a body
    body_total_s: float = 300.0  # longest time to receive a whole body
    trim_after_bytes: int = 64 * MB  # give memory back once this much was released


@dataclass(frozen=True)
class LocalModel:
    """A model whose `predict` runs in this process: the guard may parse its tensor."""

    tensor: str  # the input whose flat integer data the guard parses
    max_values: int  # more than this is refused by the model: cut, not parsed


@dataclass(frozen=True)
class _Parsed:
    values: dict[str, np.ndarray]  # by tensor name


_LOCAL_MODELS: dict[str, tuple[LocalModel, ...]] = {}
_PARSED: contextvars.ContextVar[_Parsed | None] = contextvars.ContextVar(
    "pixelring2nmf_parsed", default=None
)
_ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pixelring2nmf_arrived", default=None
)
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/(?:infer|generate)$")
_GUARDED = "_pixelring2nmf_guard"


# --------------------------------------------------------------------------- the model's side


def serve_in_process(model_name: str, *tensors: LocalModel) -> None:
    """Called by a model's `load()`: its `predict` runs in this process, so the guard may hand
    it its parsed tensors, one LocalModel each (with MLServer's worker processes, `load` runs
    in the worker instead, and the guard of the server process never parses for that model)."""
    _LOCAL_MODELS[model_name] = tensors


def stop_serving_in_process(model_name: str) -> None:
    _LOCAL_MODELS.pop(model_name, None)


def parsed_values(tensor: str) -> np.ndarray | None:
    """The int64 values of `tensor` the guard parsed for the request being handled, if any."""
    parsed = _PARSED.get()
    return parsed.values.get(tensor) if parsed is not None else None


def request_arrival() -> float | None:
    """`time.perf_counter()` when the guard received the request being handled, if it did."""
    return _ARRIVED.get()


def install(settings: GuardSettings | None = None) -> int:
    """Put a guard in front of every MLServer REST app of this process; how many were new.

    MLServer creates its REST server before it loads the models, and Starlette builds its
    middleware stack on the first request: the guard wraps whichever exists. No REST server
    (a worker process, a test, the command line): nothing to do.
    """
    try:
        from mlserver.rest.server import RESTServer
    except ImportError:
        return 0
    installed = 0
    for server in [o for o in gc.get_objects() if isinstance(o, RESTServer)]:
        app = getattr(server, "_app", None)
        if app is None or getattr(app, _GUARDED, False):
            continue
        inner = app.middleware_stack or app.build_middleware_stack()
        app.middleware_stack = ServingGuard(inner, settings or GuardSettings())
        setattr(app, _GUARDED, True)
        installed += 1
    return installed


# --------------------------------------------------------------------------- the guard


@dataclass
class _Refusal:
    status: int
    reason: str
    message: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class ServingGuard:
    """The ASGI app in front of MLServer's (module docstring)."""

    def __init__(self, app: ASGIApp, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self.budget = MemoryBudget(settings.budget_bytes, settings.queue_length)
        self._parsing = asyncio.Semaphore(1)  # module docstring, step 4
        self._released_since_trim = 0
        self._malloc_trim = _malloc_trim()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        responder = _Responder(send)
        try:
            await self._infer(scope, receive, responder, match.group(1))
        except Exception:
            # outside Starlette's error handling: a fault of ours must still answer, once
            LOGGER.exception("Serving guard: internal error on %s", scope["path"])
            if not responder.started:
                await responder.refuse(
                    _Refusal(500, "internal error", "Internal error of the serving guard")
                )

    async def _infer(self, scope: Scope, receive: Receive, send: _Responder, model: str) -> None:
        s = self.settings
        headers = dict(scope.get("headers") or [])
        size = _content_length(headers)
        refusal = _refuse_before_reading(headers, size, s)
        if refusal is not None:
            await self._refuse(send, scope, size, refusal)
            return
        local = _LOCAL_MODELS.get(model) if size is not None else None
        cost = s.budget_bytes if size is None else int(size * _cost_per_byte(local, s))
        started = time.perf_counter()
        if not await self.budget.reserve(cost, s.queue_wait_s):
            waited = time.perf_counter() - started
            await self._refuse(send, scope, size, self._busy(cost, waited))
            return
        arrived = _ARRIVED.set(started)
        body = _Body(receive, s)
        held = [cost]  # grows when the fast path hands the body to MLServer after all
        try:
            if local is None:
                await self.app(scope, body.receive, body.guarded(send))
            else:
                await self._fast_path(scope, body, send, local, held)
        finally:
            _ARRIVED.reset(arrived)
            self.budget.release(held[0])
            self._released_since_trim += held[0]
        if body.refusal is not None:
            self._log(scope, size, body.refusal)
        if self.budget.in_flight == 0 and self._released_since_trim >= s.trim_after_bytes:
            self._released_since_trim = 0
            await asyncio.to_thread(self._give_memory_back)

    async def _fast_path(
        self,
        scope: Scope,
        body: _Body,
        send: _Responder,
        local: tuple[LocalModel, ...],
        held: list[int],
    ) -> None:
        """Read, cut and parse the body, then run MLServer on the rest; `held[0]` is the cost
        reserved for the request, grown here when MLServer must parse the body itself."""
        chunks = await body.read_all()
        if chunks is None:  # the client left, or stalled (408, answered below)
            if body.refusal is not None:
                await send.refuse(body.refusal)
            return
        async with self._parsing:
            received, parsed, complete = await asyncio.to_thread(_cut, chunks, local)
        size = len(received)
        if not complete:  # MLServer's path, on the body as received
            refusal = None
            extra = int(size * (self.settings.mlserver_path_cost - self.settings.fast_path_cost))
            if size > self.settings.max_mlserver_path_bytes:
                refusal = _too_large_for_mlserver(size, self.settings)
            elif not self.budget.grow(extra):
                refusal = self._busy(extra, 0.0)
            if refusal is not None:
                await self._refuse(send, scope, size, refusal)
                return
            held[0] += extra
            await self.app(_with_length(scope, size), _replay(received, body), send)
            return
        rest = received
        del received  # from here on only the parsed values and the small rest are held
        token = _PARSED.set(_Parsed(parsed) if parsed else None)
        try:
            await self.app(_with_length(scope, len(rest)), _replay(rest, body), send)
        finally:
            _PARSED.reset(token)

    def _busy(self, cost: int, waited_s: float) -> _Refusal:
        s = self.settings
        return _Refusal(
            503,
            f"~{cost / MB:.0f} MB more would exceed the {s.budget_bytes / MB:.0f} MB budget of "
            f"requests in flight ({self.budget.in_flight} in flight, {self.budget.waiting} "
            f"waiting; waited {waited_s:.1f} s)",
            "The server is busy with other requests; retry later",
            [(b"retry-after", str(s.retry_after_s).encode())],
        )

    async def _refuse(self, send: _Responder, scope: Scope, size: int | None, r: _Refusal) -> None:
        self._log(scope, size, r)
        await send.refuse(r)

    def _log(self, scope: Scope, size: int | None, refusal: _Refusal) -> None:
        body = "unknown size" if size is None else f"{size / MB:.1f} MB"
        LOGGER.warning(
            "%d for POST %s (%s): %s", refusal.status, scope["path"], body, refusal.reason
        )

    def _give_memory_back(self) -> None:
        """Bodies of failed requests wait in reference cycles (exception frames); glibc keeps
        freed memory for reuse: collect, then return it to the OS."""
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)


# --------------------------------------------------------------------------- request parts


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _cost_per_byte(local: tuple[LocalModel, ...] | None, s: GuardSettings) -> float:
    return s.fast_path_cost if local is not None else s.mlserver_path_cost


def _refuse_before_reading(
    headers: dict[bytes, bytes], size: int | None, s: GuardSettings
) -> _Refusal | None:
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):
        return _Refusal(
            415,
            f"Content-Encoding {encoding.decode(errors='replace')!r}",
            f"Content-Encoding {encoding.decode(errors='replace')!r} is not accepted: send "
            "the request uncompressed",
        )
    if size is not None and size > s.max_body_bytes:
        return _too_large(size, s.max_body_bytes)
    return None


def _too_large(size: int, limit: int) -> _Refusal:
    return _Refusal(
        413,
        f"body of {size / MB:.0f} MB, above {limit / MB:.0f} MB",
        f"The request body ({size / MB:.0f} MB) is larger than this server accepts "
        f"({limit / MB:.0f} MB); split the request",
    )


def _too_large_for_mlserver(size: int, s: GuardSettings) -> _Refusal:
    refusal = _too_large(size, s.max_mlserver_path_bytes)
    refusal.message += (
        " or send the maps as one flat list of integers (larger bodies are accepted that way)"
    )
    return refusal


def _cut(
    chunks: list[bytes], local: tuple[LocalModel, ...]
) -> tuple[bytes, dict[str, np.ndarray], bool]:
    """(the body or its rest, the parsed values by tensor, whether the model's maps tensors
    were cut), in a thread: joining 180 MB holds the GIL ~0.1 s too. The parts are dropped
    once joined, so that the body is held once while its lists are parsed. A tensor cut but
    not parsed (too many values) is refused by the model from the rest alone."""
    body = b"".join(chunks)
    chunks.clear()
    cuts = cut_flat_integer_tensors(body, {m.tensor: m.max_values for m in local})
    if cuts is None:
        return body, {}, False
    rest, values = cuts
    return rest, {name: v for name, v in values.items() if v is not None}, True


def _with_length(scope: Scope, size: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(size).encode())]}


def _replay(body: bytes, source: _Body) -> Receive:
    """A receive() that gives the app `body` at once, then waits for the client to leave."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await source.receive()

    return receive


class _Body:
    """The client's body through receive(), with the idle and total timeouts and the size cap.

    On a stall or an oversized body (sent without Content-Length) the app is told the client
    left, and whatever it answers is replaced by the refusal (408 and a closed connection, or
    413), through `guarded(send)`.
    """

    def __init__(self, receive: Receive, settings: GuardSettings) -> None:
        self._receive = receive
        self._settings = settings
        self._deadline = time.monotonic() + settings.body_total_s
        self._received = 0
        self._done = False
        self.refusal: _Refusal | None = None

    async def receive(self) -> Message:
        if self._done:
            return await self._receive()
        timeout = min(self._settings.body_idle_s, self._deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            self._done = True
            self.refusal = _Refusal(
                408,
                f"body not received in time ({self._received / MB:.1f} MB received)",
                "The request body was not received in time",
                [(b"connection", b"close")],
            )
            return {"type": "http.disconnect"}
        if message["type"] != "http.request" or not message.get("more_body"):
            self._done = True
        self._received += len(message.get("body", b""))
        if self._received > self._settings.max_body_bytes:
            self._done = True
            self.refusal = _too_large(self._received, self._settings.max_body_bytes)
            return {"type": "http.disconnect"}
        return message

    async def read_all(self) -> list[bytes] | None:
        """Every part of the body, or None if the client left or was refused."""
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return chunks

    def guarded(self, send: _Responder) -> Send:
        async def guarded_send(message: Message) -> None:
            if self.refusal is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await send.refuse(self.refusal)

        return guarded_send


class _Responder:
    """send(), remembering whether a response has started (an ASGI app may answer only once)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def refuse(self, refusal: _Refusal) -> None:
        if self.started:
            return
        content = json.dumps({"error": refusal.message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *refusal.headers,
        ]
        await self({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await self({"type": "http.response.body", "body": content})


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None
