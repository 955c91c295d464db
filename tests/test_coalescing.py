"""CoalescedCalls: concurrent calls of one keyed operation joined into one round trip.

The operation here is a coroutine that records what each round trip carried and answers each
key with its own text; ``tests/test_dedupe.py`` runs the same joining against the real Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from receiver.coalescing import CoalescedCallInterrupted, CoalescedCalls


class Recorded:
    """An operation that notes each round trip's keys and can be held open or made to fail."""

    def __init__(self) -> None:
        self.round_trips: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: BaseException | None = None

    async def __call__(self, keys: list[str]) -> list[str]:
        self.round_trips.append(list(keys))
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return [f"answer {key}" for key in keys]


async def test_a_lone_call_goes_out_at_once_and_gets_its_answers() -> None:
    """One call, one round trip, answered key by key in order."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    assert await calls.call(["a", "b"]) == ["answer a", "answer b"]
    assert operation.round_trips == [["a", "b"]]


async def test_calls_made_together_share_one_round_trip() -> None:
    """Calls made in the same turn of the loop go out as one round trip, each answered its own keys."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    answers = await asyncio.gather(*(calls.call([f"k{i}", f"x{i}"]) for i in range(10)))
    assert answers == [[f"answer k{i}", f"answer x{i}"] for i in range(10)]
    assert len(operation.round_trips) == 1
    assert operation.round_trips[0] == [key for i in range(10) for key in (f"k{i}", f"x{i}")]


async def test_calls_made_while_one_is_out_wait_and_go_out_together() -> None:
    """While a round trip is out, later calls queue; they leave together, in arrival order, once it returns."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    operation.gate.clear()
    first = asyncio.create_task(calls.call(["first"]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert operation.round_trips == [["first"]]
    later = [asyncio.create_task(calls.call([f"later{i}"])) for i in range(5)]
    await asyncio.sleep(0.01)
    assert len(operation.round_trips) == 1, "nothing else may go out while the first is out"
    operation.gate.set()
    assert await first == ["answer first"]
    assert [await task for task in later] == [[f"answer later{i}"] for i in range(5)]
    assert operation.round_trips == [["first"], [f"later{i}" for i in range(5)]]
    assert calls.round_trips == 2


async def test_a_round_trip_carries_at_most_max_keys() -> None:
    """Joined calls stop at max_keys; the rest go in the next round trip, never splitting a call."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=5)
    answers = await asyncio.gather(
        calls.call(["a1", "a2"]), calls.call(["b1", "b2"]), calls.call(["c1", "c2"]), calls.call(list("lonely7"))
    )
    assert answers[2] == ["answer c1", "answer c2"]
    assert answers[3] == [f"answer {key}" for key in "lonely7"]
    assert operation.round_trips == [["a1", "a2", "b1", "b2"], ["c1", "c2"], list("lonely7")]


async def test_a_failed_round_trip_fails_its_calls_and_those_waiting_behind_it() -> None:
    """Every call carried by a failed round trip, and every call queued behind it, gets its error."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    operation.gate.clear()
    operation.failure = ConnectionError("store hung")
    carried = asyncio.create_task(calls.call(["carried"]))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(calls.call(["waiting"]))
    await asyncio.sleep(0.01)
    operation.gate.set()
    for task in (carried, waiting):
        with pytest.raises(ConnectionError, match="store hung"):
            await task
    assert operation.round_trips == [["carried"]], "the waiting call must not meet the same store again"
    operation.failure = None
    assert await calls.call(["after"]) == ["answer after"]


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    """A caller cut off while its round trip is out does not stop the others from getting answers;
    its keys and answers go to ``unheard`` (the dedupe store gives such claims back)."""
    operation = Recorded()
    unheard: list[tuple[list[str], list[str]]] = []
    calls = CoalescedCalls(
        operation, max_keys=100, unheard=lambda keys, answers: unheard.append((list(keys), list(answers)))
    )
    operation.gate.clear()
    cut_off = asyncio.create_task(calls.call(["cut"]))
    kept = asyncio.create_task(calls.call(["kept"]))
    await asyncio.sleep(0.01)
    cut_off.cancel()
    operation.gate.set()
    assert await kept == ["answer kept"]
    assert cut_off.cancelled()
    await calls.wait_idle()
    assert unheard == [(["cut"], ["answer cut"])]


async def test_an_operation_answering_the_wrong_count_is_an_error_not_a_shifted_answer() -> None:
    """Answers that do not match the keys one for one fail the calls instead of misattributing them."""

    async def short(keys: list[str]) -> list[str]:
        return keys[:-1]

    calls = CoalescedCalls(short, max_keys=100)
    with pytest.raises(RuntimeError, match="1 answers for 2 keys"):
        await calls.call(["a", "b"])


async def test_wait_idle_returns_once_the_round_trip_in_flight_is_done() -> None:
    """wait_idle (used by stop) waits for the round trip out, then returns."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    operation.gate.clear()
    call = asyncio.create_task(calls.call(["a"]))
    await asyncio.sleep(0)
    idle = asyncio.create_task(calls.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()
    operation.gate.set()
    await idle
    assert call.done()
    await calls.wait_idle()


def test_max_keys_below_one_is_refused() -> None:
    """A bound of zero keys could never send anything."""

    async def operation(keys: list[str]) -> list[str]:
        return keys

    with pytest.raises(ValueError, match="max_keys"):
        CoalescedCalls(operation, max_keys=0)


async def test_a_call_behind_a_slow_round_trip_gives_up_at_its_own_deadline() -> None:
    """A call queued behind a round trip that is slow (not failed) waits its own deadline, not two."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100, deadline_s=0.2)
    operation.gate.clear()
    first = asyncio.create_task(calls.call(["first"]))
    await asyncio.sleep(0.15)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await calls.call(["queued"])
    assert loop.time() - started < 1.0, "the queued call waits its own 0.2 s deadline, not the first trip's"
    with pytest.raises(TimeoutError):
        await first
    operation.gate.set()
    await calls.wait_idle()
    assert await calls.call(["after"]) == ["answer after"]


async def test_a_call_given_up_while_queued_is_never_sent() -> None:
    """Past its deadline behind a slow round trip, a call leaves the queue: sent later, a dedupe
    claim would be taken in Redis for nobody (and the event's resends refused until it expired)."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100, deadline_s=0.2)
    operation.gate.clear()
    first = asyncio.create_task(calls.call(["first"]))
    await asyncio.sleep(0.05)  # its round trip is out, and held
    with pytest.raises(TimeoutError):
        await calls.call(["given up"])
    later = asyncio.create_task(calls.call(["later"]))
    await asyncio.sleep(0)
    operation.gate.set()
    with pytest.raises(TimeoutError):
        await first
    assert await later == ["answer later"]
    await calls.wait_idle()
    assert operation.round_trips == [["first"], ["later"]]


async def test_an_answer_set_as_the_caller_gives_up_still_reaches_unheard() -> None:
    """The round trip answers in the loop turn where the caller's deadline fires: the caller gets
    TimeoutError, and ``unheard`` is told (a claim nobody uses would hold the event's resends)."""
    loop = asyncio.get_running_loop()
    told: list[tuple[list[str], list[str]]] = []
    answered = asyncio.Event()

    async def operation(keys: list[str]) -> list[str]:
        await answered.wait()
        return ["NEW"] * len(keys)

    calls = CoalescedCalls(
        operation, max_keys=10, deadline_s=0.5, unheard=lambda keys, answers: told.append((list(keys), list(answers)))
    )

    def answer_then_block() -> None:
        answered.set()
        time.sleep(0.05)  # the loop is busy past the caller's deadline before the answer is read

    loop.call_at(loop.time() + 0.49, answer_then_block)
    with pytest.raises(TimeoutError):
        await calls.call(["k"])
    assert told == [(["k"], ["NEW"])]


async def test_a_sender_cancelled_mid_trip_interrupts_its_calls_without_cancelling_them() -> None:
    """Callers of a cancelled round trip get CoalescedCallInterrupted (their own tasks were not
    cancelled), the calls queued behind it too, and the next call is sent afresh."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    operation.gate.clear()
    carried = asyncio.create_task(calls.call(["carried"]))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(calls.call(["queued"]))
    await asyncio.sleep(0.01)
    sender = calls._sender
    assert sender is not None
    sender.cancel()
    for task in (carried, queued):
        with pytest.raises(CoalescedCallInterrupted):
            await task
    await calls.wait_idle()
    operation.gate.set()
    assert await calls.call(["after"]) == ["answer after"]


async def test_a_sender_cancelled_before_it_ran_fails_its_calls_and_frees_the_way() -> None:
    """A sender cancelled before its first step still answers its calls, and later calls go out."""
    operation = Recorded()
    calls = CoalescedCalls(operation, max_keys=100)
    waiting = asyncio.create_task(calls.call(["never sent"]))
    await asyncio.sleep(0)  # the call is queued and its sender created, not yet run
    sender = calls._sender
    assert sender is not None
    sender.cancel()
    with pytest.raises(CoalescedCallInterrupted):
        await waiting
    await calls.wait_idle()
    assert await calls.call(["after"]) == ["answer after"]
    assert operation.round_trips == [["after"]]
