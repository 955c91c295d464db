"""What replay works on: one payload to send again (``ReplayItem``) and the filters that pick them.

Every source (recording lines, quarantine records, plain payload files, Kafka records) becomes
the same ``ReplayItem``, so the filters, the targets and the checkpoint never care where an item
came from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Final

import orjson

from receiver.errors import InvalidMessage
from receiver.event import Connection
from receiver.ids import normalize_org_id
from receiver.processing import ENDPOINT_KINDS, OUTBOUND

#: ``--kind`` values: the endpoint kinds, and the two kinds of JSON event.
PLATFORM_EVENT: Final = "platform_event"
CHANGE_EVENT: Final = "change_event"
KIND_CHOICES: Final = (*ENDPOINT_KINDS, PLATFORM_EVENT, CHANGE_EVENT)

_OM_ORG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?OrganizationId>\s*([A-Za-z0-9]{15,18})\s*<")
_JSON_ORG = re.compile(rb'"organizationId"\s*:\s*"([A-Za-z0-9]{15,18})"')


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One payload to send again, whatever its source.

    ``item_id`` is a digest of the item as stored (the recording line, the quarantine record,
    the file's bytes): it survives the rotation, compression and renaming of recording files
    between an interrupted run and its resume, which a file name and line number would not.
    ``headers`` are the allow-listed headers worth sending again (``webhook-id``,
    ``X-Salesforce-Org-Id``); signatures and tokens are made fresh by the target.
    """

    item_id: str
    origin: str
    kind: str
    integration: str
    body: bytes
    organization_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    received_at: datetime | None = None
    original_status: int | None = None
    original_reason: str | None = None

    @property
    def content_type(self) -> str:
        return "text/xml; charset=utf-8" if self.kind == OUTBOUND else "application/json"

    @property
    def event_kinds(self) -> frozenset[str]:
        """The kinds of event the body holds, judged from its bytes (for ``--kind``)."""
        if self.kind == OUTBOUND:
            return frozenset({OUTBOUND})
        kinds = {self.kind}
        if b"ChangeEventHeader" in self.body:
            kinds.add(CHANGE_EVENT)
        if b'"/event/' in self.body:
            kinds.add(PLATFORM_EVENT)
        return frozenset(kinds)


@dataclass(frozen=True, slots=True)
class SkippedItem:
    """Something a source found but cannot replay: a request recorded without its body, a line
    that is not a recording. Counted in the summary, never sent.

    A recording without a body still has its time and outcome: one the filter leaves out (a
    401 by default) is counted as filtered out, as it would be with its body.
    """

    origin: str
    reason: str
    received_at: datetime | None = None
    original_status: int | None = None
    original_reason: str | None = None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def org_of(kind: str, body: bytes, headers: Mapping[str, str]) -> str | None:
    """The 18-character org a payload names, for filtering; None when it names none (or a bad one)."""
    candidate: bytes | str | None = headers.get("x-salesforce-org-id")
    if candidate is None:
        match = (_OM_ORG if kind == OUTBOUND else _JSON_ORG).search(body)
        candidate = match.group(1) if match else None
    if candidate is None:
        return None
    try:
        return normalize_org_id(candidate.decode("ascii") if isinstance(candidate, bytes) else candidate)
    except InvalidMessage:
        return None


def forwarding_connection(body: bytes) -> Connection | None:
    """The terapi connection a forward names (``connectionId``, ``providerConfigKey``), or None."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    connection_id, integration = document.get("connectionId"), document.get("providerConfigKey")
    if not (isinstance(connection_id, str) and isinstance(integration, str)):
        return None
    return Connection(connection_id, integration)


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) or a date (its midnight UTC).

    Raises ``ValueError`` for anything else.
    """
    text = value.strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which items to replay. Empty collections select everything.

    ``outcomes`` match the original answer by status (``403``), status class (``4xx``) or
    reason (``unknown_org``, ``ok``). Without ``outcomes``, requests first refused as
    unauthenticated (401) are left out: re-signing them would make a forged request genuine.
    Items without a time (plain files) pass the time window.
    """

    orgs: Collection[str] = ()
    integrations: Collection[str] = ()
    kinds: Collection[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    outcomes: Collection[str] = ()

    def matches(self, item: ReplayItem) -> bool:
        return self._matches_origin(item) and self._matches_time(item) and self._matches_outcome(item)

    def rules_out(self, item: SkippedItem) -> bool:
        """True when what is known of a skipped item (its time and outcome) fails the filter.

        Never for an item without an outcome (an unreadable line): it stays reported as skipped.
        """
        if item.original_status is None:
            return False
        return not (self._matches_time(item) and self._matches_outcome(item))

    def _matches_origin(self, item: ReplayItem) -> bool:
        if self.orgs and item.organization_id not in self.orgs:
            return False
        if self.integrations and item.integration not in self.integrations:
            return False
        return not self.kinds or bool(item.event_kinds & set(self.kinds))

    def _matches_time(self, item: ReplayItem | SkippedItem) -> bool:
        if item.received_at is None:
            return True
        if self.since is not None and item.received_at < self.since:
            return False
        return self.until is None or item.received_at < self.until

    def _matches_outcome(self, item: ReplayItem | SkippedItem) -> bool:
        if not self.outcomes:
            return item.original_status != 401
        return any(_outcome_matches(pattern, item) for pattern in self.outcomes)


def _outcome_matches(pattern: str, item: ReplayItem | SkippedItem) -> bool:
    status = item.original_status
    if pattern.isdigit():
        return status == int(pattern)
    if len(pattern) == 3 and pattern[0].isdigit() and pattern[1:].lower() == "xx":
        return status is not None and status // 100 == int(pattern[0])
    return item.original_reason == pattern
