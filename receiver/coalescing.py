"""Concurrent calls of one keyed batch operation, joined into one round trip.

Every request makes two calls to the shared dedupe store (claim, then commit). Against Redis
each call is one round trip that costs redis-py about 70 µs of CPU whatever its size, so at
saturation those two calls were as much CPU as the rest of the request. Many requests are in
flight at once, and the Redis scripts take any number of keys, so their calls are joined:

- one call in flight per operation; calls made while it is out wait, and go out together as
  the next call when it returns. That is what aiokafka does with produce requests: an idle
  store sends at once (a lone request waits no longer than before), a busy one sends fewer,
  larger calls, their size following the load;
- keys keep their order within a call and calls keep their arrival order, so a batch answers
  as the same calls made one after another would: of two concurrent claims of one key, the
  first is ``NEW`` and the second ``IN_FLIGHT``;
- a joined call holds at most ``max_keys`` keys (a call larger than that goes alone), which
  bounds how long one script blocks Redis.

A failed round trip fails every call it carried, and the calls that waited behind it: they
would meet the same hung or missing Redis. A slow Redis that still answers makes calls wait for
the round trip ahead of theirs: each caller bounds its own wait (the store's deadline) rather
than rely on the round trips'. A sender cut off (cancelled) fails its calls with
``CoalescedCallInterrupted``, never with a cancellation their own task did not ask for.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Answer = TypeVar("Answer")

#: Runs the operation once for all the keys given; returns one answer per key, in their order.
BatchOperation = Callable[[list[str]], Awaitable[Sequence[Answer]]]
#: Told the keys and answers of a call whose caller gave up while its round trip was out.
Unheard = Callable[[Sequence[str], Sequence[Answer]], None]


class CoalescedCallInterrupted(Exception):
    """The round trip that was to carry the call was cancelled before it answered."""


@dataclass(frozen=True, slots=True)
class _Waiting(Generic[Answer]):
    keys: Sequence[str]
    answer: asyncio.Future[list[Answer]]


class CoalescedCalls(Generic[Answer]):
    """Joins the concurrent ``call``s of one operation; see the module docstring."""

    def __init__(
        self,
        operation: BatchOperation[Answer],
        *,
        max_keys: int,
        deadline_s: float | None = None,
        unheard: Unheard[Answer] | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._operation = operation
        #: What to do with answers nobody waits for any more (a claim to give back).
        self._unheard = unheard
        self._max_keys = max_keys
        self._deadline_s = deadline_s
        self._waiting: deque[_Waiting[Answer]] = deque()
        self._sender: asyncio.Task[None] | None = None
        #: Round trips made, for tests and the curious: fewer than calls once requests overlap.
        self.round_trips = 0

    async def call(self, keys: Sequence[str]) -> list[Answer]:
        """The answers for ``keys``; raises what the operation raised for the round trip that
        carried them (or for the one they waited behind), ``TimeoutError`` past ``deadline_s``
        from the call (whatever round trips it waited behind), ``CoalescedCallInterrupted``."""
        answer: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(keys, answer))
        if self._sender is None:
            # Started on the next turn of the loop: calls made in this turn join the first batch.
            self._sender = asyncio.create_task(self._send_waiting(), name="coalesced-calls")
            # Also when it is cancelled before its first step, where its own finally never runs.
            self._sender.add_done_callback(self._sender_done)
        try:
            async with asyncio.timeout(self._deadline_s):
                return await answer
        except BaseException:
            # Answered in the very turn the caller gave up (its deadline, a cancellation): the
            # answer was set, so the round trip did not hand it to ``unheard``; this does.
            if self._unheard is not None and answer.done() and not answer.cancelled() and answer.exception() is None:
                self._unheard(keys, answer.result())
            raise

    async def wait_idle(self) -> None:
        """Return once nothing is waiting or in flight (for ``stop``); never raises the sender's end."""
        while (sender := self._sender) is not None and not sender.done():
            await asyncio.wait([sender])

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._next_batch()
                if not batch:
                    continue
                keys = [key for waiting in batch for key in waiting.keys]
                self.round_trips += 1
                try:
                    answers = await self._operation(keys)
                except asyncio.CancelledError:
                    self._fail(batch, CoalescedCallInterrupted("the round trip was cancelled"))
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to the callers, who decide
                    self._fail(batch, exc)
                    self._fail(self._waiting, exc)
                    self._waiting.clear()
                    continue
                if len(answers) != len(keys):
                    self._fail(batch, RuntimeError(f"{len(answers)} answers for {len(keys)} keys"))
                    continue
                self._answer(batch, answers)
        finally:
            self._sender = None
            # Left only when the sender was cut off: nobody would send them now.
            self._fail_waiting()

    def _sender_done(self, sender: asyncio.Task[None]) -> None:
        # A sender cancelled before its first step never ran the finally above.
        if self._sender is sender:
            self._sender = None
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        if self._waiting:
            self._fail(self._waiting, CoalescedCallInterrupted("the sender of queued calls stopped"))
            self._waiting.clear()

    def _next_batch(self) -> list[_Waiting[Answer]]:
        """The calls of the next round trip, leaving out those whose caller gave up while they
        queued (past its deadline, or cancelled): sent anyway, a claim would be taken in Redis
        for nobody, and the event's resends refused as in flight until it expired."""
        batch: list[_Waiting[Answer]] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0].keys) <= self._max_keys):
            waiting = self._waiting.popleft()
            if waiting.answer.done():
                continue
            batch.append(waiting)
            size += len(waiting.keys)
        return batch

    def _answer(self, batch: list[_Waiting[Answer]], answers: Sequence[Answer]) -> None:
        start = 0
        for waiting in batch:
            end = start + len(waiting.keys)
            if not waiting.answer.done():
                waiting.answer.set_result(list(answers[start:end]))
            elif self._unheard is not None:
                # Its caller gave up (past its deadline, or cut off) while the round trip was out.
                self._unheard(waiting.keys, answers[start:end])
            start = end

    @staticmethod
    def _fail(batch: Sequence[_Waiting[Answer]], exc: Exception) -> None:
        for waiting in batch:
            if not waiting.answer.done():
                waiting.answer.set_exception(exc)
