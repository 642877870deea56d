"""How much request memory may be in flight at once: a budget that requests reserve and release.

MLServer parses every request it has received at once and nothing in it limits how many are in
flight, so a burst from DIALS could hold several parsed 5,000-LS bodies and exceed the pod's
memory limit (measured: two at once 4.5 GB, three 6.3 GB, against a 3 Gi limit). The serving
guard therefore estimates, from its Content-Length, what a request will cost before reading its
body, and reserves that much of a fixed budget here. A request that does not fit waits, first in
first out and with its body unread (so it holds a socket, not memory), until enough is released
or its wait ends; a request alone is always admitted, so that every valid request can be served
on an idle server whatever its size (the guard caps the size itself).

Pure asyncio, no MLServer: one instance per server process, used from its event loop only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Waiter:
    cost: int
    future: asyncio.Future = field(repr=False)


class MemoryBudget:
    """Bytes of estimated request memory in flight, against `budget_bytes`.

    `reserve` admits or queues a request, `grow` adds to an admitted request's reservation
    without waiting (two requests that each wait for the other to finish would deadlock), and
    `release` returns a reservation and admits whoever now fits, in arrival order.
    """

    def __init__(self, budget_bytes: int, max_waiting: int) -> None:
        self.budget_bytes = budget_bytes
        self.max_waiting = max_waiting
        self.reserved_bytes = 0
        self.in_flight = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, cost: int, already_in_flight: int = 0) -> bool:
        alone = self.in_flight == already_in_flight
        return alone or self.reserved_bytes + cost <= self.budget_bytes

    def _take(self, cost: int) -> None:
        self.reserved_bytes += cost
        self.in_flight += 1

    async def reserve(self, cost: int, wait_s: float) -> bool:
        """Admit a request of estimated `cost` bytes, waiting up to `wait_s`; False if refused.

        Nobody overtakes a request already waiting, so a large request is not starved by a
        stream of small ones. A full queue refuses at once.
        """
        if not self._waiting and self._fits(cost):
            self._take(cost)
            return True
        if wait_s <= 0 or len(self._waiting) >= self.max_waiting:
            return False
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), wait_s)
        except asyncio.TimeoutError:
            return self._withdraw(waiter)  # admitted in the same instant: keep it
        except asyncio.CancelledError:
            if self._withdraw(waiter):
                self.release(cost)
            raise
        return True

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Take a waiter out of the queue; True if it had been admitted meanwhile."""
        if waiter.future.done():
            return True
        waiter.future.cancel()
        self._waiting.remove(waiter)
        self._admit_waiting()  # it may have been the head that held the others back
        return False

    def grow(self, extra: int) -> bool:
        """Add `extra` bytes to the reservation of a request already admitted, or refuse."""
        if not self._fits(extra, already_in_flight=1):
            return False
        self.reserved_bytes += extra
        return True

    def release(self, cost: int) -> None:
        """Give back an admitted request's reservation (its whole cost, grown or not)."""
        self.reserved_bytes -= cost
        self.in_flight -= 1
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._waiting and self._fits(self._waiting[0].cost):
            waiter = self._waiting.popleft()
            if not waiter.future.done():
                self._take(waiter.cost)
                waiter.future.set_result(True)
