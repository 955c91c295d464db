"""Where replay items come from: recording files and directories of them (``.jsonl``,
``.jsonl.gz``), the quarantine (``quarantine.jsonl`` or its Kafka topic), the ``salesforce.raw``
topic between two times, and plain ``.xml`` / ``.json`` payload files.

A source is a path or ``kafka:TOPIC``. Lines of ``.jsonl`` files and Kafka records are recognized
by their keys: a recording has ``outcome`` and ``path``, a quarantine record ``quarantined_at``.

A growing ``.jsonl`` file (today's recordings, the quarantine) is read only up to the size it had
when the replay started (``items_from`` opens them all before sending anything): a receiver
writing to the same data directory records (or quarantines again) what replay sends, and reading
those new lines would replay them too, or forever.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import itertools
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import orjson

from receiver.errors import ReceiverError
from receiver.processing import ENDPOINT_KINDS, EVENTS, OUTBOUND, TERAPI, endpoint_of
from receiver.recording_files import RecordingFileName
from receiver.redaction import UNREDACTABLE
from receiver.replay_items import ReplayItem, SkippedItem, digest, org_of, parse_time
from receiver.settings import Settings

KAFKA_PREFIX: Final = "kafka:"
PAYLOAD_SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".xml", ".json")
#: The recorded headers a replay sends again; the rest is made fresh or fixed by the target.
_RESENT_HEADERS: Final = ("webhook-id", "x-salesforce-org-id")

SourceItem = ReplayItem | SkippedItem


class ReplaySourceError(ReceiverError):
    """A source that cannot be read at all: a missing path, an unknown suffix, a missing topic."""

    reason = "replay_source"
    retryable = False


@dataclass(frozen=True, slots=True)
class PayloadDefaults:
    """What plain payload files do not say themselves (``--integration``, ``--org``)."""

    integration: str = "salesforce"
    organization_id: str | None = None


def check_sources(sources: Sequence[str]) -> None:
    """Raises ``ReplaySourceError`` for a path that does not exist or is not a payload file."""
    for source in sources:
        if source.startswith(KAFKA_PREFIX):
            if not source.removeprefix(KAFKA_PREFIX):
                raise ReplaySourceError(f"{source!r}: name the topic, as in kafka:salesforce.raw")
            continue
        path = Path(source)
        if not path.exists():
            raise ReplaySourceError(f"{source!r} does not exist")
        if path.is_file() and not path.name.endswith(PAYLOAD_SUFFIXES):
            raise ReplaySourceError(f"{source!r} is not a .jsonl, .jsonl.gz, .xml or .json file")


async def items_from(
    sources: Sequence[str],
    settings: Settings,
    defaults: PayloadDefaults,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[SourceItem]:
    """Every item of every source, in the order given (files of a directory oldest first).

    The path sources are taken as they are when the replay starts (``_open_growing``).

    Raises ``ReplaySourceError`` for a Kafka topic that does not exist; ``OSError`` from reading.
    """
    files = {source: _payload_files(Path(source)) for source in sources if not source.startswith(KAFKA_PREFIX)}
    with ExitStack() as open_files:
        growing = _open_growing(itertools.chain.from_iterable(files.values()), open_files)
        for source in sources:
            if source.startswith(KAFKA_PREFIX):
                from receiver.replay_kafka import kafka_lines

                topic = source.removeprefix(KAFKA_PREFIX)
                async for line, origin in kafka_lines(settings, topic, since=since, until=until):
                    item = line_item(line, origin)
                    if item is not None:
                        yield item
            else:
                for file in files[source]:
                    for item in file_items(file, defaults, growing):
                        yield item


def _payload_files(path: Path) -> list[Path]:
    return _files_of(path) if path.is_dir() else [path]


Growing = Mapping[Path, tuple[BinaryIO, int]]


def _open_growing(files: Iterable[Path], open_files: ExitStack) -> Growing:
    """The ``.jsonl`` files among ``files``, opened and measured before the first item is sent.

    Today's recordings, rotated ones not yet compressed and the quarantine grow while a replay
    runs. Read through these handles up to these sizes, lines the replay itself makes a
    receiver record there are not replayed, and a rotation meanwhile (a rename, then
    compression and deletion of the name) loses none of the lines that were there.
    """
    growing: dict[Path, tuple[BinaryIO, int]] = {}
    for file in files:
        if file.name.endswith(".jsonl") and file not in growing:
            handle = open_files.enter_context(file.open("rb"))
            growing[file] = handle, os.fstat(handle.fileno()).st_size
    return growing


def _files_of(directory: Path) -> list[Path]:
    def order(path: Path) -> tuple[str, tuple[Any, ...]]:
        name = RecordingFileName.parse(path.name)
        # Recording files by day and rotation number; anything else by name, after them.
        key = (0, *name.sort_key) if name is not None else (1, path.name)
        return (str(path.parent), key)

    files = [p for p in directory.rglob("*") if p.is_file() and p.name.endswith(PAYLOAD_SUFFIXES)]
    return sorted(files, key=order)


def file_items(path: Path, defaults: PayloadDefaults, growing: Growing) -> Iterator[SourceItem]:
    """The items of one file; a ``.jsonl`` file is read through its handle in ``growing``."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "rb") as lines:
            yield from _lines_items(lines, path)
    elif name.endswith(".jsonl"):
        handle, size = growing[path]
        handle.seek(0)  # a file given twice is read twice
        yield from _lines_items(_lines_up_to(handle, size), path)
    elif name.endswith(".xml"):
        yield payload_item(path.read_bytes(), str(path), OUTBOUND, defaults)
    elif name.endswith(".json"):
        body = path.read_bytes()
        yield payload_item(body, str(path), TERAPI if _is_terapi_forward(body) else EVENTS, defaults)
    else:
        raise ReplaySourceError(f"{str(path)!r} is not a .jsonl, .jsonl.gz, .xml or .json file")


def _lines_up_to(file: Iterable[bytes], size: int) -> Iterator[bytes]:
    read = 0
    for line in file:
        read += len(line)
        if read > size:
            return
        yield line


def _lines_items(lines: Any, path: Path) -> Iterator[SourceItem]:
    for number, line in enumerate(lines, start=1):
        item = line_item(line, f"{path}:{number}")
        if item is not None:
            yield item


def line_item(line: bytes, origin: str) -> SourceItem | None:
    """The item of one recording line or quarantine record; None for a blank line."""
    if not line.strip():
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return SkippedItem(origin, "unreadable_line")
    if isinstance(record, dict) and "quarantined_at" in record:
        read = _quarantine_item
    elif isinstance(record, dict) and "outcome" in record and "path" in record:
        read = _recording_item
    else:
        return SkippedItem(origin, "not_a_recording")
    try:
        return read(record, line, origin)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return SkippedItem(origin, "unreadable_line")


def _body(record: Mapping[str, Any]) -> bytes | None:
    if isinstance(record.get("body"), str):
        return str(record["body"]).encode("utf-8")
    if isinstance(record.get("body_base64"), str):
        return base64.b64decode(record["body_base64"], validate=True)
    return None


def _resent_headers(record: Mapping[str, Any]) -> dict[str, str]:
    headers = record.get("headers") or {}
    return {name: str(headers[name]) for name in _RESENT_HEADERS if name in headers}


def _kind(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind in ENDPOINT_KINDS:
        return str(kind)
    endpoint = endpoint_of(str(record.get("path", "")))
    return endpoint[0] if endpoint is not None else EVENTS


def _stored_body(record: Mapping[str, Any], origin: str) -> bytes | SkippedItem:
    """The body to send again, or why there is none: it was not read, or it was withheld from
    the recording because its SessionId could not be redacted (the placeholder is no request)."""
    body = _body(record)
    if body is None:
        return SkippedItem(origin, "recorded_without_body")
    if body == UNREDACTABLE:
        return SkippedItem(origin, "body_withheld")
    return body


def _recording_item(record: dict[str, Any], line: bytes, origin: str) -> SourceItem:
    body = _stored_body(record, origin)
    outcome = record["outcome"]
    if isinstance(body, SkippedItem):
        # What the filter needs to count it as filtered out rather than skipped (a 401).
        return replace(
            body,
            received_at=parse_time(record["received_at"]),
            original_status=int(outcome["status"]),
            original_reason=str(outcome["reason"]),
        )
    kind = _kind(record)
    headers = _resent_headers(record)
    return ReplayItem(
        item_id=digest(line.rstrip(b"\n")),
        origin=origin,
        kind=kind,
        integration=_integration(kind, body, str(record["integration"])),
        body=body,
        organization_id=org_of(kind, body, headers),
        headers=headers,
        received_at=parse_time(record["received_at"]),
        original_status=int(outcome["status"]),
        original_reason=str(outcome["reason"]),
    )


def _quarantine_item(record: dict[str, Any], line: bytes, origin: str) -> SourceItem:
    body = _stored_body(record, origin)
    if isinstance(body, SkippedItem):
        return body
    kind = _kind(record)
    headers = _resent_headers(record)
    reason = str(record.get("reason"))
    org = record.get("organization_id")
    return ReplayItem(
        item_id=digest(line.rstrip(b"\n")),
        origin=origin,
        kind=kind,
        integration=str(record["integration"]),
        body=body,
        organization_id=str(org) if org else org_of(kind, body, headers),
        headers=headers,
        received_at=parse_time(record["quarantined_at"]),
        # Quarantine keeps authenticated payloads refused for their org: those were 403s.
        original_status=403 if reason == "unknown_org" else None,
        original_reason=reason,
    )


def payload_item(body: bytes, origin: str, kind: str, defaults: PayloadDefaults) -> ReplayItem:
    """A plain payload file: integration and org from the flags where the body does not say."""
    organization_id = org_of(kind, body, {})
    headers: dict[str, str] = {}
    if organization_id is None and defaults.organization_id is not None and kind != OUTBOUND:
        organization_id = defaults.organization_id
        headers["x-salesforce-org-id"] = organization_id
    return ReplayItem(
        item_id=digest(b"payload\0" + body),
        origin=origin,
        kind=kind,
        integration=_integration(kind, body, defaults.integration),
        body=body,
        organization_id=organization_id,
        headers=headers,
    )


def _is_terapi_forward(body: bytes) -> bool:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and document.get("type") == "forward" and "connectionId" in document


def _integration(kind: str, body: bytes, default: str) -> str:
    """A terapi forward names its integration (``providerConfigKey``); others take ``default``."""
    if kind != TERAPI:
        return default
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return default
    key = document.get("providerConfigKey") if isinstance(document, dict) else None
    return key if isinstance(key, str) else default
