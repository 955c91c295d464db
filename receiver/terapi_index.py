"""What the terapi org index holds: which org each connection belongs to, and which connection wins an org.

No I/O here: ``receiver.terapi`` lists and reads connections and keeps the index fresh; this
module says what a read connection contributes (its org id, or why it is left out) and how the
index is built from them, conflicts included.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

from receiver.errors import InvalidMessage
from receiver.event import Connection
from receiver.ids import normalize_org_id
from receiver.terapi_wire import ConnectionDetails, ListedConnection

__all__ = [
    "NO_ORG_ID",
    "SKIP_REASONS",
    "TRANSIENT_REASONS",
    "Entry",
    "EntryKey",
    "build_index",
    "org_id_of",
    "valid_org_id",
]

logger = logging.getLogger("receiver.terapi")

#: Read failures after which the connection's last known org stays indexed: terapi hiccupped,
#: the connection did not change owner. A 404 or 424 drops the connection instead.
TRANSIENT_REASONS: Final = ("terapi_unavailable", "terapi_bad_response", "terapi_rejected")
#: terapi can no longer refresh the connection's tokens (424).
REFRESH_EXHAUSTED: Final = "terapi_refresh_exhausted"
NO_ORG_ID: Final = "no_org_id"
#: Every reason a listed connection can be left out of the index, for the skipped gauge.
SKIP_REASONS: Final = ("terapi_not_found", REFRESH_EXHAUSTED, *TRANSIENT_REASONS, NO_ORG_ID)
# Salesforce's identity URL: https://login.salesforce.com/id/<org id>/<user id>
_IDENTITY_PATH = re.compile(r"/id/(?P<org>[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?)/[A-Za-z0-9]{15,18}/?")
_OLDEST = datetime.min.replace(tzinfo=UTC)

EntryKey = tuple[str, str]  # (integration, connection id or org id)


@dataclass(frozen=True, slots=True)
class Entry:
    """What the refreshes learned about one listed connection."""

    listed: ListedConnection
    org_id: str | None
    #: Why the connection is not indexed, when it is not.
    skipped: str | None = None
    #: False when the last read failed, so that the next refresh reads it again.
    current: bool = True
    credentials_withheld: bool = False
    #: ``time.monotonic()`` of the read; past ``terapi_reread_interval_s`` it is read again.
    read_at: float = 0.0


def org_id_of(details: ConnectionDetails) -> str | None:
    """The 18-character org id of a connection: from its identity URL, else its metadata.

    The identity URL comes from Salesforce's own token response, so it wins when the two
    disagree; the metadata is whatever the integrator stored.
    """
    from_identity = _org_id_from_identity_url(details.identity_url)
    from_metadata = valid_org_id(details.metadata_org_id)
    if from_identity is not None and from_metadata not in (None, from_identity):
        logger.warning(
            "terapi connection's metadata.salesforce_org_id disagrees with its identity URL; using the identity URL",
            extra={"connection_id": details.connection_id, "integration": details.integration, "org_id": from_identity},
        )
    return from_identity or from_metadata


def _org_id_from_identity_url(url: str | None) -> str | None:
    match = _IDENTITY_PATH.fullmatch(urlsplit(url).path) if url else None
    return valid_org_id(match["org"]) if match else None


def valid_org_id(value: str | None) -> str | None:
    """``value`` as an 18-character org id, or None when it is not one."""
    if value is None:
        return None
    try:
        return normalize_org_id(value)
    except InvalidMessage:
        return None


def _precedence(entry: Entry) -> tuple[datetime, str]:
    """Conflict order: the most recently created connection wins, then the greater id."""
    return (entry.listed.created or _OLDEST, entry.listed.connection_id)


def build_index(
    entries: dict[EntryKey, Entry], previous_conflicts: dict[EntryKey, tuple[str, ...]]
) -> tuple[dict[EntryKey, Connection], dict[EntryKey, tuple[str, ...]]]:
    """The (integration, org id) -> connection index of ``entries``, and the orgs several claim.

    A conflict maps to every claimant's connection id, winner first. It is logged only when it
    differs from ``previous_conflicts``, so that each refresh does not repeat it.
    """
    claims: defaultdict[EntryKey, list[Entry]] = defaultdict(list)
    for entry in entries.values():
        if entry.org_id is not None:
            claims[(entry.listed.integration, entry.org_id)].append(entry)
    index: dict[EntryKey, Connection] = {}
    conflicts: dict[EntryKey, tuple[str, ...]] = {}
    for key, claimants in claims.items():
        ranked = sorted(claimants, key=_precedence, reverse=True)
        index[key] = Connection(ranked[0].listed.connection_id, ranked[0].listed.integration)
        if len(ranked) > 1:
            conflicts[key] = tuple(entry.listed.connection_id for entry in ranked)
            if previous_conflicts.get(key) != conflicts[key]:
                logger.warning(
                    "several terapi connections claim one org; the most recently created wins",
                    extra={
                        "integration": key[0],
                        "org_id": key[1],
                        "winner": conflicts[key][0],
                        "losers": list(conflicts[key][1:]),
                    },
                )
    return index, conflicts
