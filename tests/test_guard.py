"""The serving guard in front of an ASGI app, in-process: admission, refusals, timeouts, the cut.

The app behind the guard reads the body as MLServer's would and holds each request until the
test releases it, so "in flight" is decided by the test, never by timing; the client is a
receive/send pair that records what the app read and what the guard answered. The limits are
small GuardSettings; the deployment's are measured by bench/memory.py against a real server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest

from mlserver_model import serving_guard
from mlserver_model.admission import MemoryBudget
from mlserver_model.serving_guard import GuardSettings, LocalModel, ServingGuard

MODEL = "m"
INFER = f"/v2/models/{MODEL}/infer"
SETTINGS = GuardSettings(
    budget_bytes=1_000,
    fast_path_cost=1.0,
    mlserver_path_cost=4.0,
    max_body_bytes=5_000,
    max_mlserver_path_bytes=2_000,
    queue_wait_s=60.0,  # never reached: requests held by a test are released by it
    queue_length=1,
    retry_after_s=7,
    body_idle_s=0.05,
    body_total_s=60.0,
    trim_after_bytes=10**12,
)


class Client:
    """One connection: sends `chunks` as the body (then stalls if `stall`), records answers."""

    def __init__(self, body: bytes | list[bytes], *, stall: bool = False) -> None:
        self.chunks = [body] if isinstance(body, bytes) else list(body)
        self.stall = stall
        self.read = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.chunks:
            self.read += 1
            chunk = self.chunks.pop(0)
            more = bool(self.chunks) or self.stall
            return {"type": "http.request", "body": chunk, "more_body": more}
        await asyncio.Event().wait()  # a stalled client, or one waiting for its answer
        raise AssertionError("not reached")

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1
        return starts[0]["status"] if starts else None

    def header(self, name: bytes) -> bytes | None:
        (start,) = [m for m in self.sent if m["type"] == "http.response.start"]
        return dict(start["headers"]).get(name)

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


class App:
    """MLServer's place: reads the whole body, then holds the request until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.bodies: list[bytes] = []
        self.parsed: list[np.ndarray | None] = []
        self.fail = False

    async def __call__(self, scope: dict, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # FastAPI answers, the guard replaces
                await send({"type": "http.response.start", "status": 400, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        self.parsed.append(serving_guard.parsed_values("Ring2"))
        if self.fail:
            raise RuntimeError("MLServer failed")
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


def scope(body_size: int | None, path: str = INFER, **headers: str) -> dict:
    pairs = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    if body_size is not None:
        pairs.append((b"content-length", str(body_size).encode()))
    return {"type": "http", "method": "POST", "path": path, "headers": pairs}


async def until(condition, timeout_s: float = 60.0) -> None:
    """Let the event loop, and the guard's worker threads (it cuts bodies in a thread), run
    until `condition()` holds. The condition is the synchronisation; the timeout only ends a
    test that would otherwise hang. (A bound in loop turns failed on a loaded machine: a
    turn of the loop does not wait for a thread.)"""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


def run(coroutine) -> Any:
    return asyncio.run(coroutine)


@pytest.fixture(autouse=True)
def no_local_model():
    yield
    serving_guard.stop_serving_in_process(MODEL)


def test_a_request_alone_is_admitted_whatever_its_cost_and_the_next_waits_or_gets_503():
    async def scenario():
        app = App()
        guard = ServingGuard(app, SETTINGS)
        big, second, third = Client(b"x" * 900), Client(b"y" * 10), Client(b"z" * 10)
        first = asyncio.create_task(guard(scope(900), big.receive, big.send))  # 3,600 bytes
        await until(lambda: app.bodies)
        waiting = asyncio.create_task(guard(scope(10), second.receive, second.send))
        await until(lambda: guard.budget.waiting == 1)
        await guard(scope(10), third.receive, third.send)  # the queue is full: 503 at once
        assert third.status == 503 and third.read == 0  # answered before its body was read
        assert third.header(b"retry-after") == b"7"
        assert "busy" in third.json()["error"]
        app.release.set()
        await first
        await waiting
        assert (big.status, second.status) == (200, 200)
        assert guard.budget.reserved_bytes == 0 and guard.budget.in_flight == 0

    run(scenario())


def test_too_large_compressed_and_unknown_length_bodies():
    async def scenario():
        app = App()
        app.release.set()
        guard = ServingGuard(app, SETTINGS)
        huge = Client(b"x")
        await guard(scope(5_001), huge.receive, huge.send)
        assert huge.status == 413 and huge.read == 0 and "split the request" in huge.json()["error"]
        gzip = Client(b"x")
        await guard(scope(1, content_encoding="gzip"), gzip.receive, gzip.send)
        assert gzip.status == 415 and gzip.read == 0
        # no Content-Length: admitted alone, cut off at the size cap while it arrives
        chunked = Client([b"x" * 3_000, b"x" * 3_000])
        await guard(scope(None), chunked.receive, chunked.send)
        assert chunked.status == 413 and app.bodies == []

    run(scenario())


def test_a_stalled_body_gets_408_and_its_connection_closed():
    async def scenario():
        app = App()
        guard = ServingGuard(app, SETTINGS)
        client = Client([b"x" * 100], stall=True)
        await guard(scope(500), client.receive, client.send)
        assert client.status == 408 and client.header(b"connection") == b"close"
        assert app.bodies == [] and guard.budget.in_flight == 0

    run(scenario())


def test_other_paths_pass_through_while_the_budget_is_full():
    async def scenario():
        app = App()
        guard = ServingGuard(app, SETTINGS)
        held = Client(b"x" * 900)
        task = asyncio.create_task(guard(scope(900), held.receive, held.send))
        await until(lambda: app.bodies)
        probe = Client(b"")
        probe_scope = {**scope(0, "/v2/health/live"), "method": "GET"}
        probe_task = asyncio.create_task(guard(probe_scope, probe.receive, probe.send))
        await until(lambda: len(app.bodies) == 2)  # reached the app at once
        app.release.set()
        await asyncio.gather(task, probe_task)
        assert probe.status == 200

    run(scenario())


def ring2_body(values: str, shape: list[int]) -> bytes:
    oms = '{"name": "oms__pileup", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}'
    ring2 = f'{{"name": "Ring2", "shape": {shape}, "datatype": "INT32", "data": [{values}]}}'
    return f'{{"id": "a", "inputs": [{oms}, {ring2}]}}'.encode()


def test_the_maps_of_a_model_in_this_process_are_cut_out_and_parsed():
    async def scenario():
        serving_guard.serve_in_process(MODEL, LocalModel("Ring2", max_values=100))
        app = App()
        app.release.set()
        guard = ServingGuard(app, SETTINGS)
        body = ring2_body("1, 2, 3, 4", [2, 2])
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 200
        (rest,) = app.bodies
        assert json.loads(rest)["inputs"][1]["data"] == []
        assert json.loads(rest)["inputs"][0] == json.loads(body)["inputs"][0]
        assert app.parsed[0].tolist() == [1, 2, 3, 4]
        assert serving_guard.parsed_values("Ring2") is None  # only inside the request

    run(scenario())


@pytest.mark.parametrize("values", ["1, -2, 3, 4", "1, 2.5, 3, 4", "1, true, 3, 4", "1, 2, 3,"])
def test_what_the_cut_declines_reaches_mlserver_as_sent(values):
    async def scenario():
        serving_guard.serve_in_process(MODEL, LocalModel("Ring2", max_values=100))
        app = App()
        app.release.set()
        guard = ServingGuard(app, SETTINGS)
        body = ring2_body(values, [2, 2])
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 200 and app.bodies == [body] and app.parsed == [None]

    run(scenario())


def test_a_declined_body_that_mlserver_would_parse_needs_its_cost_to_fit():
    async def scenario():
        serving_guard.serve_in_process(MODEL, LocalModel("Ring2", max_values=10**6))
        app = App()
        guard = ServingGuard(app, SETTINGS)
        held = Client(b"x" * 100)
        other = asyncio.create_task(
            guard(scope(100, "/v2/models/other/infer"), held.receive, held.send)
        )
        await until(lambda: app.bodies)  # 100 x 4 = 400 bytes in flight
        body = ring2_body(", ".join(["1.5"] * 50), [5, 10])  # not counts: declined
        assert 300 < len(body) < 600  # admitted at 1 byte per byte, but not at 4
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 503 and len(app.bodies) == 1  # refused after the cut
        too_big = ring2_body(", ".join(["1.5"] * 600), [60, 10])  # above 2,000 bytes
        app.release.set()
        await other
        client = Client(too_big)
        await guard(scope(len(too_big)), client.receive, client.send)
        assert client.status == 413 and "one flat list of integers" in client.json()["error"]
        # a declined body that MLServer parses, and MLServer fails: the grown cost comes back
        app.fail = True
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 500
        assert guard.budget.reserved_bytes == 0 and guard.budget.in_flight == 0

    run(scenario())


def test_a_fault_of_the_guard_answers_500_once():
    async def scenario():
        serving_guard.serve_in_process(MODEL, LocalModel("Ring2", max_values=100))
        guard = ServingGuard(App(), SETTINGS)
        guard._malloc_trim = None
        client = Client(b"{}")

        async def broken(*args):
            raise RuntimeError("a bug")

        guard._fast_path = broken
        await guard(scope(2), client.receive, client.send)
        assert client.status == 500 and "serving guard" in client.json()["error"]
        assert guard.budget.in_flight == 0

    run(scenario())


def test_the_budget_admits_in_arrival_order():
    async def scenario():
        budget = MemoryBudget(100, max_waiting=10)
        assert await budget.reserve(80, 1.0)
        big = asyncio.create_task(budget.reserve(90, 60.0))
        await until(lambda: budget.waiting == 1)
        small = asyncio.create_task(budget.reserve(20, 60.0))  # fits, but must not overtake
        await until(lambda: budget.waiting == 2)
        assert not big.done() and not small.done()
        budget.release(80)
        assert await big and budget.reserved_bytes == 90 and not small.done()
        assert budget.grow(500)  # alone: always
        budget.release(590)
        assert await small and budget.reserved_bytes == 20 and budget.in_flight == 1
        assert await budget.reserve(70, 0.0)
        assert budget.grow(10) and not budget.grow(1)  # beside another: into free room only

    run(scenario())


# --- the joint model (pixel-fpix-nmf): two maps tensors, Ring1 and Ring2 ------------------------


class JointApp(App):
    """App that also records what the guard parsed of Ring1, and the budget it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.parsed_ring1: list[np.ndarray | None] = []

    async def __call__(self, scope: dict, receive, send) -> None:
        self.parsed_ring1.append(serving_guard.parsed_values("Ring1"))
        await super().__call__(scope, receive, send)


def joint_body(ring1: str, ring2: str) -> bytes:
    oms = '{"name": "oms__pileup", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}'
    one = f'{{"name": "Ring1", "shape": [2, 2], "datatype": "INT32", "data": {ring1}}}'
    two = f'{{"name": "Ring2", "shape": [2, 3], "datatype": "INT32", "data": {ring2}}}'
    return f'{{"inputs": [{one}, {oms}, {two}]}}'.encode()


JOINT_MODEL = (LocalModel("Ring1", max_values=100), LocalModel("Ring2", max_values=100))


def test_both_maps_of_the_joint_model_are_cut_out_parsed_and_counted_in_its_cost():
    async def scenario():
        serving_guard.serve_in_process(MODEL, *JOINT_MODEL)
        app = JointApp()
        guard = ServingGuard(app, SETTINGS)
        body = joint_body("[1, 2, 3, 4]", "[5, 6, 7, 8, 9, 10]")
        client = Client(body)
        task = asyncio.create_task(guard(scope(len(body)), client.receive, client.send))
        await until(lambda: app.bodies)
        # the whole body, both rings' maps, is the request's estimated memory
        assert guard.budget.reserved_bytes == len(body) * SETTINGS.fast_path_cost
        app.release.set()
        await task
        assert client.status == 200
        (rest,) = app.bodies
        inputs = json.loads(rest)["inputs"]
        assert [t["data"] for t in inputs] == [[], [1.5, 2.5], []]
        assert [t["shape"] for t in inputs] == [[2, 2], [2], [2, 3]]
        assert app.parsed_ring1[0].tolist() == [1, 2, 3, 4]
        assert app.parsed[0].tolist() == [5, 6, 7, 8, 9, 10]
        assert guard.budget.reserved_bytes == 0

    run(scenario())


@pytest.mark.parametrize(
    "ring1, ring2",
    [
        ("[[1, 2], [3, 4]]", "[5, 6, 7, 8, 9, 10]"),  # one ring nested
        ("[1, 2, 3, 4]", "[5, -6, 7, 8, 9, 10]"),  # one ring not counts
        ("[]", "[5, 6, 7, 8, 9, 10]"),  # one ring empty: the OMS list is the next largest
    ],
)
def test_a_joint_body_is_cut_only_when_both_maps_can_be(ring1, ring2):
    async def scenario():
        serving_guard.serve_in_process(MODEL, *JOINT_MODEL)
        app = JointApp()
        app.release.set()
        guard = ServingGuard(app, SETTINGS)
        body = joint_body(ring1, ring2)
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 200 and app.bodies == [body]
        assert app.parsed == [None] and app.parsed_ring1 == [None]

    run(scenario())


def test_joint_maps_above_the_limit_are_cut_but_not_parsed():
    async def scenario():
        serving_guard.serve_in_process(
            MODEL, LocalModel("Ring1", max_values=3), LocalModel("Ring2", max_values=100)
        )
        app = JointApp()
        app.release.set()
        guard = ServingGuard(app, SETTINGS)
        body = joint_body("[1, 2, 3, 4]", "[5, 6, 7, 8, 9, 10]")
        client = Client(body)
        await guard(scope(len(body)), client.receive, client.send)
        assert client.status == 200
        assert [t["data"] for t in json.loads(app.bodies[0])["inputs"]] == [[], [1.5, 2.5], []]
        assert app.parsed_ring1 == [None] and app.parsed[0].tolist() == [5, 6, 7, 8, 9, 10]

    run(scenario())
