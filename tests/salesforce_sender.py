"""A sender that delivers Outbound Messages the way Salesforce does, for the delivery-guarantee tests.

Salesforce treats anything but a SOAP ``Ack`` of ``true`` as a failed delivery (a 5xx, a
timeout, a dropped connection) and sends the message again later; it also sends again some
messages it already got an Ack for. The tests drive a receiver with this sender and then read
the topic back: every notification the sender saw acked must be there.

Unlike Salesforce, the back-off is short (tests have a minute, not 24 hours) and a second copy
of a message can be sent at the same time to another replica, the worst case for dedupe.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from lxml import etree

from tests.om_payloads import notification_ids, outbound_message

OM_PATH = "/webhooks/salesforce/outbound-messages"
SOAP_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
_ACK_XPATH = etree.XPath(
    "string(//om:notificationsResponse/om:Ack)", namespaces={"om": "http://soap.sforce.com/2005/09/outbound"}
)
_MAX_BACKOFF_S = 2.0
_NUMBERS_PER_PREFIX = 100_000


@dataclass(frozen=True, slots=True)
class Message:
    """One Outbound Message body and the notification ids it carries."""

    body: bytes
    notification_ids: frozenset[str]


def fresh_messages(count: int, notifications_per_message: int) -> list[Message]:
    """``count`` messages whose notification ids no other run used (dedupe marks live 25 h)."""
    # A 15-character id leaves 5 digits after the 10-character prefix: a new prefix every 10^5 ids.
    per_prefix = _NUMBERS_PER_PREFIX // notifications_per_message
    messages = []
    for index in range(count):
        if index % per_prefix == 0:
            prefix = "04l" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(7))
        start = index % per_prefix * notifications_per_message
        body = outbound_message(notifications_per_message, start=start, notification_prefix=prefix)
        ids = notification_ids(notifications_per_message, start, notification_prefix=prefix)
        messages.append(Message(body, frozenset(ids)))
    return messages


def all_ids(messages: Sequence[Message]) -> set[str]:
    return {notification_id for message in messages for notification_id in message.notification_ids}


def is_soap_ack(response: httpx.Response) -> bool:
    if response.status_code != 200 or not response.headers.get("content-type", "").startswith("text/xml"):
        return False
    return bool(_ACK_XPATH(etree.fromstring(response.content)) == "true")


@dataclass(frozen=True, slots=True)
class SenderOptions:
    concurrency: int = 8
    #: Salesforce gives up on an answer after 60 s; tests use less.
    request_timeout_s: float = 30.0
    backoff_s: float = 0.2
    #: Chance that an acked message is sent once more (Salesforce resends even after an Ack).
    resend_acked_ratio: float = 0.1
    #: Chance that a first delivery goes to two receivers at once (needs two URLs).
    parallel_copy_ratio: float = 0.0
    #: Requests started per second across all workers; None: as fast as the receiver answers.
    rate_per_s: float | None = None
    deadline_s: float = 60.0
    seed: int = 7


@dataclass(slots=True)
class _Delivery:
    index: int
    resend_of_acked: bool = False
    attempt: int = 0


@dataclass(slots=True)
class SenderReport:
    """What the sender saw; the tests compare it with what the topic holds."""

    acked: set[str] = field(default_factory=set)
    unacked: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)
    #: 429/5xx answers that did not say when to come back.
    without_retry_after: int = 0
    #: 200 answers that were not an Ack: never expected.
    not_acks: int = 0
    elapsed_s: float = 0.0


class SalesforceSender:
    """Posts each message to the receiver URLs until it is acked, or until the deadline."""

    def __init__(self, urls: Sequence[str], messages: Sequence[Message], options: SenderOptions | None = None) -> None:
        if not urls:
            raise ValueError("at least one receiver URL is needed")
        self.urls = list(urls)
        self.messages = list(messages)
        self.options = options or SenderOptions()
        self.report = SenderReport()
        self._random = random.Random(self.options.seed)
        self._acked_messages: set[int] = set()
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self._next_url = 0
        self._next_slot = 0.0
        self._timers: set[asyncio.Task[None]] = set()

    @property
    def acked(self) -> set[str]:
        """The notification ids acked so far (a live view while ``run`` goes on)."""
        return self.report.acked

    def stop(self) -> None:
        """Stop after the requests under way; what is not acked stays in ``unacked``."""
        self._stopping = True
        self._idle.set()

    @asynccontextmanager
    async def in_background(self) -> AsyncIterator[asyncio.Task[SenderReport]]:
        """``run`` as a task for the block; should the block fail, the sender stops with it."""
        task = asyncio.create_task(self.run())
        try:
            yield task
        finally:
            if not task.done():
                self.stop()
                await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> SenderReport:
        started = time.monotonic()
        self._next_slot = started
        for index in range(len(self.messages)):
            self._schedule(_Delivery(index), delay_s=0.0)
        limits = httpx.Limits(max_connections=self.options.concurrency * 2, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=self.options.request_timeout_s, limits=limits) as client:
            workers = [asyncio.create_task(self._work(client)) for _ in range(self.options.concurrency)]
            try:
                async with asyncio.timeout(self.options.deadline_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
            finally:
                self._stopping = True
                for task in [*workers, *self._timers]:
                    task.cancel()
                await asyncio.gather(*workers, *self._timers, return_exceptions=True)
        self.report.unacked = all_ids(self.messages) - self.report.acked
        self.report.elapsed_s = time.monotonic() - started
        return self.report

    def _schedule(self, delivery: _Delivery, delay_s: float) -> None:
        self._outstanding += 1
        if delay_s <= 0:
            self._queue.put_nowait(delivery)
            return

        async def later() -> None:
            await asyncio.sleep(delay_s)
            self._queue.put_nowait(delivery)

        timer = asyncio.create_task(later())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    def _finish(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def _work(self, client: httpx.AsyncClient) -> None:
        while not self._stopping:
            delivery = await self._queue.get()
            try:
                await self._deliver(client, delivery)
            finally:
                self._finish()

    async def _deliver(self, client: httpx.AsyncClient, delivery: _Delivery) -> None:
        await self._pace()
        message = self.messages[delivery.index]
        urls = [self._pick_url()]
        first_delivery = delivery.attempt == 0 and not delivery.resend_of_acked
        if first_delivery and len(self.urls) > 1 and self._random.random() < self.options.parallel_copy_ratio:
            urls.append(self._pick_url())
        outcomes = await asyncio.gather(*(self._post(client, url, message.body) for url in urls))
        if any(outcomes):
            self.report.acked |= message.notification_ids
            first_ack = delivery.index not in self._acked_messages
            self._acked_messages.add(delivery.index)
            if first_ack and self._random.random() < self.options.resend_acked_ratio:
                self._schedule(_Delivery(delivery.index, resend_of_acked=True), delay_s=self.options.backoff_s)
            return
        if delivery.resend_of_acked:
            # Salesforce keeps no state about a resend of an acked message; it is not retried.
            return
        backoff = min(self.options.backoff_s * 2**delivery.attempt, _MAX_BACKOFF_S)
        retry = _Delivery(delivery.index, attempt=delivery.attempt + 1)
        self._schedule(retry, delay_s=backoff * (0.5 + self._random.random()))

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes) -> bool:
        """True for an Ack; every other outcome is counted by its kind."""
        try:
            response = await client.post(url + OM_PATH, content=body, headers=SOAP_HEADERS)
        except httpx.TimeoutException:
            self.report.answers["timeout"] += 1
            return False
        except httpx.TransportError:
            self.report.answers["connection_error"] += 1
            return False
        self.report.answers[str(response.status_code)] += 1
        if response.status_code in (429, 503) and "retry-after" not in response.headers:
            self.report.without_retry_after += 1
        acked = is_soap_ack(response)
        if response.status_code == 200 and not acked:
            self.report.not_acks += 1
        return acked

    def _pick_url(self) -> str:
        url = self.urls[self._next_url % len(self.urls)]
        self._next_url += 1
        return url

    async def _pace(self) -> None:
        rate = self.options.rate_per_s
        if rate is None:
            return
        now = time.monotonic()
        slot = max(self._next_slot, now)
        self._next_slot = slot + 1 / rate
        if slot > now:
            await asyncio.sleep(slot - now)
