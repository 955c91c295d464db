"""Org id -> terapi connection: the ``ConnectionSource`` protocol and the static map.

Sources are consulted in order (static map first, then terapi); the first that knows the org
wins. Every source keeps its index in memory: resolution never costs a network call on the
request path unless the org is unknown, and then only through the source's own rate limit.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from receiver.errors import ConfigurationError, InvalidMessage
from receiver.event import Connection
from receiver.ids import normalize_org_id


@runtime_checkable
class ConnectionSource(Protocol):
    """Knows which terapi connection an org belongs to."""

    async def start(self) -> None:
        """Load the index; called once in the lifespan."""

    async def stop(self) -> None:
        """Release clients; idempotent."""

    @property
    def ready(self) -> bool:
        """True once the first load completed."""

    def describe(self) -> dict[str, object]:
        """A small status for ``/readyz``."""

    async def resolve(self, org_id: str, integration: str) -> Connection | None:
        """The connection of ``org_id`` (18 characters) among ``integration``'s, or None."""

    async def org_of(self, connection: Connection) -> str | None:
        """The 18-character org id of a connection, or None when the source does not know it."""


@dataclass(frozen=True, slots=True)
class StaticConnectionMap:
    """Org -> connection entries from ``RECEIVER_ORG_MAP_FILE``; they win over terapi."""

    entries: dict[str, Connection]

    @classmethod
    def load(cls, path: Path | None, integrations: Collection[str] | None = None) -> StaticConnectionMap:
        """Read the TOML map; raises ``ConfigurationError`` naming the file and the bad entry.

        An entry that could never match is refused as well: an integration not in
        ``integrations`` (a typo would leave the org unknown, every request a 403), the same org
        written twice (as 15 and 18 characters), a table other than ``orgs``.
        """
        if path is None:
            return cls({})
        where = f"org map file {str(path)!r}"
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{where} cannot be read: {exc}") from exc
        unknown = sorted(set(document) - {"orgs"})
        if unknown:
            raise ConfigurationError(f'{where}: unknown table {unknown[0]!r} (entries go under [orgs."00D..."])')
        orgs = document.get("orgs", {})
        if not isinstance(orgs, dict):
            raise ConfigurationError(f'{where}: orgs must be tables, [orgs."00D..."]')
        entries: dict[str, Connection] = {}
        for raw_org_id, entry in orgs.items():
            try:
                org_id = normalize_org_id(raw_org_id)
                connection = Connection(str(entry["connection_id"]), str(entry["integration"]))
            except (InvalidMessage, KeyError, TypeError) as exc:
                problem = f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
                raise ConfigurationError(f"{where}: entry {raw_org_id!r} is invalid ({problem})") from exc
            if integrations is not None and connection.integration not in integrations:
                raise ConfigurationError(
                    f"{where}: entry {raw_org_id!r} names integration {connection.integration!r}, "
                    f"which is not in RECEIVER_INTEGRATIONS ({','.join(integrations)})"
                )
            if org_id in entries:
                raise ConfigurationError(f"{where}: org {org_id} is listed twice")
            entries[org_id] = connection
        return cls(entries)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    @property
    def ready(self) -> bool:
        return True

    def describe(self) -> dict[str, object]:
        return {"source": "static", "orgs": len(self.entries)}

    async def resolve(self, org_id: str, integration: str) -> Connection | None:
        connection = self.entries.get(org_id)
        if connection is None or connection.integration != integration:
            return None
        return connection

    async def org_of(self, connection: Connection) -> str | None:
        for org_id, known in self.entries.items():
            if known == connection:
                return org_id
        return None


@dataclass(frozen=True, slots=True)
class ConnectionResolver:
    """Asks each source in order; the static map first so an operator can always override."""

    sources: Sequence[ConnectionSource]

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    async def stop(self) -> None:
        for source in reversed(self.sources):
            await source.stop()

    @property
    def ready(self) -> bool:
        return all(source.ready for source in self.sources)

    def describe(self) -> list[dict[str, object]]:
        return [source.describe() for source in self.sources]

    async def resolve(self, org_id: str, integration: str) -> Connection | None:
        for source in self.sources:
            connection = await source.resolve(org_id, integration)
            if connection is not None:
                return connection
        return None

    async def org_of(self, connection: Connection) -> str | None:
        for source in self.sources:
            org_id = await source.org_of(connection)
            if org_id is not None:
                return org_id
        return None
