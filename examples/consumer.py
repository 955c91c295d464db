"""A downstream consumer of the receiver's Kafka topics, to copy from (see docs/events.md).

It reads with aiokafka, decodes each record with the CloudEvents Python SDK (Kafka binary
content mode: ``ce_`` headers, JSON value), drops redeliveries by (``ce_source``, ``ce_id``),
and prints one line per event:

    python examples/consumer.py --bootstrap 127.0.0.1:9092 --topic salesforce.events --max 10

Without ``--group`` it reads every partition from the beginning and commits nothing (handy
to look); with ``--group`` it is a real consumer: it joins the group, starts where the group
left off and commits after each batch it has handled, so a restart neither skips nor (beyond
the at-least-once overlap the dedupe absorbs) repeats events.

Requirements: ``pip install aiokafka cloudevents`` (and ``jsonschema`` for ``--schemas``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

KINDS = {
    "com.salesforce.outbound_message": "outbound_message",
    "com.salesforce.platform_event": "platform_event",
    "com.salesforce.change_event": "change_event",
}


class Deduplicator:
    """Remembers the last ``size`` event keys. The receiver publishes at least once, and
    Salesforce redelivers; a production consumer keeps these keys for at least 25 hours, in a
    store that survives restarts (or makes its writes idempotent on the same key)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def is_new(self, source: str, event_id: str) -> bool:
        key = (source, event_id)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


class SchemaCheck:
    """Validates ``data`` against ``schemas/<kind>.data.schema.json`` (optional)."""

    def __init__(self, directory: Path) -> None:
        from jsonschema import Draft202012Validator

        self._validators = {
            ce_type: Draft202012Validator(json.loads((directory / f"{kind}.data.schema.json").read_text()))
            for ce_type, kind in KINDS.items()
        }

    def problems(self, ce_type: str, data: Any) -> list[str]:
        validator = self._validators.get(ce_type)
        if validator is None:
            return [f"unknown type {ce_type}"]
        return [error.message for error in validator.iter_errors(data)]


def describe(event: Any, where: str) -> str:
    """One line: kind, object, record, id, org, and where the record was read."""
    kind = KINDS.get(event.get_type(), event.get_type())
    org = event.get_extension("sforgid")
    object_name = event.get_extension("sfobject") or "-"
    return f"{kind} {object_name} {event.get_subject() or '-'} id={event.get_id()} org={org} at={where}"


async def consume(arguments: argparse.Namespace) -> int:
    consumer = AIOKafkaConsumer(
        *arguments.topic,
        bootstrap_servers=arguments.bootstrap,
        group_id=arguments.group,
        client_id="salesforce-events-example-consumer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    deduplicator = Deduplicator(arguments.dedupe_size)
    schemas = SchemaCheck(arguments.schemas) if arguments.schemas else None
    json_format = JSONFormat()
    printed = duplicates = invalid = 0
    await consumer.start()
    try:
        idle_since = asyncio.get_running_loop().time()
        while arguments.max is None or printed < arguments.max:
            batch = await consumer.getmany(timeout_ms=500)
            now = asyncio.get_running_loop().time()
            if not batch:
                if arguments.timeout is not None and now - idle_since >= arguments.timeout:
                    break
                continue
            idle_since = now
            for records in batch.values():
                for record in records:
                    message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
                    event = from_binary(message, json_format)
                    if not deduplicator.is_new(event.get_source(), event.get_id()):
                        duplicates += 1
                        continue
                    if schemas is not None:
                        problems = schemas.problems(event.get_type(), event.get_data())
                        if problems:
                            invalid += 1
                            print(f"INVALID {event.get_id()}: {'; '.join(problems)}", file=sys.stderr)
                    print(describe(event, f"{record.topic}/{record.partition}@{record.offset}"), flush=True)
                    printed += 1
                    if arguments.max is not None and printed >= arguments.max:
                        break
            if arguments.group is not None:
                # After handling: a crash before this line redelivers the batch, which dedupe absorbs.
                await consumer.commit()
    finally:
        await consumer.stop()
    print(f"{printed} events, {duplicates} duplicates skipped, {invalid} invalid", file=sys.stderr)
    return 1 if invalid else 0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("RECEIVER_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (default $RECEIVER_KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--topic", action="append", help="topic to read; repeatable (default salesforce.events)", default=None
    )
    parser.add_argument("--group", default=None, help="consumer group: resume from and commit its offsets")
    parser.add_argument("--max", type=int, default=None, help="stop after this many (new) events")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without a record")
    parser.add_argument("--dedupe-size", type=int, default=100_000, help="event keys remembered for dedupe")
    parser.add_argument("--schemas", type=Path, default=None, help="validate data against the JSON Schemas here")
    arguments = parser.parse_args(argv)
    arguments.topic = arguments.topic or ["salesforce.events"]
    return arguments


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(consume(parse_arguments(argv)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
