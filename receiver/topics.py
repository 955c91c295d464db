"""Kafka topics the routes name: reported when missing at start-up, created when asked to.

A topic that does not exist is where events silently pile up in a broker-default topic (auto
create on) or where every publish times out (auto create off), so the receiver looks at
start-up: the fixed topics (default, quarantine, rules' topics without placeholders) that are
missing are logged, and created when ``RECEIVER_KAFKA_CREATE_TOPICS=true``. Templated topics
(``salesforce.{object}``) are only known once an event renders them; with creation on they
are created the first time, before the event is produced to them.

Kafka being down never fails start-up or a publish here: the check is retried on the next
connection, and a topic whose creation failed is left to the produce request to judge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

logger = logging.getLogger("receiver.topics")

#: A topic whose creation failed is not tried again sooner than this (per topic).
CREATE_RETRY_S: Final = 60.0
#: Three copies where the cluster has three brokers; a single development broker gets one.
MAX_REPLICATION_FACTOR: Final = 3


class TopicManager:
    """Checks and creates topics with short-lived admin clients (this happens rarely)."""

    def __init__(
        self,
        client_options: dict[str, Any],
        static_topics: Sequence[str],
        *,
        create: bool,
        partitions: int,
        timeout_s: float,
    ) -> None:
        self._client_options = client_options
        self.static_topics = tuple(static_topics)
        #: True when missing topics are created, so publish must ``ensure`` its topics first.
        self.creates = create
        self._partitions = partitions
        self._timeout_s = timeout_s
        self._known: set[str] = set()
        self._creating: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self.checked = False
        #: The fixed topics found missing by the last check (and not created).
        self.missing: tuple[str, ...] = ()

    @asynccontextmanager
    async def _admin(self) -> AsyncIterator[AIOKafkaAdminClient]:
        admin = AIOKafkaAdminClient(**self._client_options, request_timeout_ms=int(self._timeout_s * 1000))
        try:
            await admin.start()
            yield admin
        finally:
            await admin.close()

    async def check(self) -> None:
        """List the cluster's topics, report the fixed ones missing, create them when enabled.

        Raises nothing: a failure is logged and the check runs again on the next call.
        """
        try:
            async with asyncio.timeout(self._timeout_s), self._admin() as admin:
                existing = set(await admin.list_topics())
                self._known |= existing
                missing = [topic for topic in self.static_topics if topic not in existing]
                if missing and self.creates:
                    await self._create(admin, missing)
                    missing = [topic for topic in missing if topic not in self._known]
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.warning("could not check the kafka topics; will retry", extra={"error": repr(exc)})
            return
        self.checked = True
        self.missing = tuple(missing)
        if missing:
            logger.warning(
                "kafka topics are missing",
                extra={
                    "topics": missing,
                    "hint": "create them, or set RECEIVER_KAFKA_CREATE_TOPICS=true to let the receiver do it",
                },
            )
        else:
            logger.info("kafka topics present", extra={"topics": list(self.static_topics)})

    async def ensure(self, topics: Iterable[str]) -> None:
        """Create the topics not known to exist (once per topic, single-flight). Raises nothing."""
        if not self.creates:
            return
        for topic in topics:
            if topic in self._known:
                continue
            task = self._creating.get(topic)
            if task is None:
                if time.monotonic() - self._failed_at.get(topic, -CREATE_RETRY_S) < CREATE_RETRY_S:
                    continue
                task = asyncio.create_task(self._create_alone(topic), name=f"create-topic-{topic}")
                self._creating[topic] = task
                task.add_done_callback(partial(self._forget, topic))
            # Shielded: a publish that times out must not cancel a creation others wait for.
            await asyncio.shield(task)

    def _forget(self, topic: str, task: asyncio.Task[None]) -> None:
        self._creating.pop(topic, None)

    async def _create_alone(self, topic: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s), self._admin() as admin:
                await self._create(admin, [topic])
        except (KafkaError, OSError, TimeoutError) as exc:
            self._failed_at[topic] = time.monotonic()
            logger.warning("could not create kafka topic", extra={"topic": topic, "error": repr(exc)})

    async def _create(self, admin: AIOKafkaAdminClient, topics: list[str]) -> None:
        cluster = await admin.describe_cluster()
        replication = max(1, min(MAX_REPLICATION_FACTOR, len(cluster.get("brokers") or ())))
        response = await admin.create_topics(
            [NewTopic(topic, self._partitions, replication) for topic in topics],
            timeout_ms=int(self._timeout_s * 1000),
        )
        for entry in response.topic_errors:
            topic, code = entry[0], entry[1]
            error = for_code(code)
            if code == 0 or error is TopicAlreadyExistsError:
                self._known.add(topic)
                if code == 0:
                    logger.info(
                        "kafka topic created",
                        extra={"topic": topic, "partitions": self._partitions, "replication_factor": replication},
                    )
                continue
            self._failed_at[topic] = time.monotonic()
            logger.warning("kafka refused to create topic", extra={"topic": topic, "error": error.__name__})

    async def close(self) -> None:
        """Wait for creations in flight (each is bounded by the timeout); idempotent."""
        if self._creating:
            await asyncio.gather(*self._creating.values(), return_exceptions=True)
