"""terapi's answers reduced to what org resolution needs.

A list entry becomes its keys, creation time and a fingerprint of the fields that can change
its org; a connection read becomes its identity URL and metadata org id. Credentials (access
and refresh tokens) are looked at here and dropped at once, so nothing downstream can log them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("receiver.terapi")

#: Only these listed fields can change which org a connection belongs to; volatile fields
#: (errors, last fetch times) stay out so that they do not cause needless reads.
_FINGERPRINT_FIELDS = ("id", "created", "created_at", "updated_at", "metadata")


@dataclass(frozen=True, slots=True)
class ListedConnection:
    """One entry of the connection list; the list never carries credentials."""

    connection_id: str
    integration: str
    created: datetime | None
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ConnectionDetails:
    """What a connection read tells about its org, without the tokens it came with."""

    connection_id: str
    integration: str
    identity_url: str | None
    metadata_org_id: str | None
    #: ``credentials: {}``: the secret key lacks the credentials scope.
    credentials_withheld: bool


def connection_details(connection_id: str, integration: str, body: dict[str, Any]) -> ConnectionDetails:
    """A connection read's org evidence: ``credentials.raw.id`` (the identity URL) and metadata."""
    credentials = body.get("credentials")
    raw = credentials.get("raw") if isinstance(credentials, dict) else None
    identity_url = raw.get("id") if isinstance(raw, dict) else None
    return ConnectionDetails(
        connection_id=connection_id,
        integration=integration,
        identity_url=identity_url if isinstance(identity_url, str) else None,
        metadata_org_id=_metadata_org_id(body.get("metadata")),
        credentials_withheld=not credentials,
    )


def listed_connection(item: dict[str, Any]) -> ListedConnection | None:
    """A list entry's keys and fingerprint; None (logged) for an entry without its keys."""
    connection_id = item.get("connection_id")
    integration = item.get("provider_config_key")
    if not isinstance(connection_id, str) or not isinstance(integration, str):
        logger.warning("terapi listed a connection without connection_id or provider_config_key")
        return None
    fingerprint_source = {field: item.get(field) for field in _FINGERPRINT_FIELDS}
    encoded = json.dumps(fingerprint_source, sort_keys=True, default=str).encode()
    return ListedConnection(
        connection_id=connection_id,
        integration=integration,
        created=_parse_time(item.get("created", item.get("created_at"))),
        fingerprint=hashlib.sha256(encoded).hexdigest(),
    )


def _metadata_org_id(metadata: object) -> str | None:
    value = metadata.get("salesforce_org_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    # A naive time from terapi is UTC; making it aware keeps comparisons between connections valid.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
