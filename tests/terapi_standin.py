"""A stand-in for terapi's Connections API, served by a real uvicorn server.

terapi cannot run here, so this speaks its documented wire format over real HTTP: the paged
connection list (``GET /connections?integrationId=..&limit=..&page=..``, pages from 0, or with
``paging=False`` a strict server that refuses those parameters and lists everything), the
connection read (``GET /connections/{id}?provider_config_key=..``) with Salesforce's raw token
response under ``credentials.raw``, the legacy ``/connection`` paths, Bearer secret keys, and the
failures terapi is known for (401, 404, 424, 429 with ``Retry-After``, 5xx, slow answers).
Every request is recorded in ``calls`` so that tests can count what the receiver cost terapi.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import run_uvicorn

DEFAULT_SECRET_KEY = "sk-standin-0123456789abcdef"
IDENTITY_HOSTS = {"salesforce": "login.salesforce.com", "salesforce-sandbox": "test.salesforce.com"}
USER_ID = "005000000000001"
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class StandinConnection:
    """One connection as terapi stores it."""

    connection_id: str
    integration: str
    #: Goes into the identity URL ``credentials.raw.id``; None: credentials without an ``id``.
    org_id: str | None
    metadata_org_id: str | None
    created: str
    updated_at: str
    id: int
    #: The status every read of this connection answers with (404, 424), when set.
    fail_with: int | None = None

    def listed(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "provider": "salesforce",
            "provider_config_key": self.integration,
            "created": self.created,
            "updated_at": self.updated_at,
            "metadata": self.metadata(),
            "tags": {},
            "errors": [],
            "end_user": None,
        }

    def metadata(self) -> dict[str, str] | None:
        return None if self.metadata_org_id is None else {"salesforce_org_id": self.metadata_org_id}

    def credentials(self) -> dict[str, Any]:
        host = IDENTITY_HOSTS.get(self.integration, "login.salesforce.com")
        raw: dict[str, Any] = {
            "access_token": f"{self.org_id}!AQ0AQ-standin-access-token",
            "refresh_token": "5Aep861standin-refresh-token",
            "signature": "c3RhbmRpbg==",
            "scope": "refresh_token api",
            "instance_url": f"https://standin-{self.id}.my.salesforce.com",
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }
        if self.org_id is not None:
            raw["id"] = f"https://{host}/id/{self.org_id}/{USER_ID}"
        return {
            "type": "OAUTH2",
            "access_token": raw["access_token"],
            "refresh_token": raw["refresh_token"],
            "expires_at": "2030-01-01T00:00:00.000Z",
            "raw": raw,
        }


@dataclass(frozen=True, slots=True)
class _Scripted:
    """What the next request gets instead of (or before) its normal answer."""

    status: int | None = None
    retry_after: str | None = None
    delay_s: float = 0.0


@dataclass
class TerapiStandin:
    """The stand-in's state and knobs; ``app`` serves it."""

    secret_key: str = DEFAULT_SECRET_KEY
    #: False: reads answer ``credentials: {}``, as for a key without the credentials scope.
    credentials_scope: bool = True
    #: False: only the legacy ``/connection`` paths exist, as on older servers.
    modern_paths: bool = True
    #: False: the list takes no ``limit`` or ``page`` (400 ``invalid_query_params`` for them,
    #: as a server validating its query strictly does) and answers every connection at once.
    paging: bool = True
    #: The number of the first page: 1 makes page 0 read as page 1, as on servers counting
    #: from 1; None makes every page the first (a server that ignores ``page``).
    first_page: int | None = 0
    base_url: str = ""
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    connections: dict[tuple[str, str], StandinConnection] = field(default_factory=dict)
    _scripted: deque[_Scripted] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add_connection(
        self,
        connection_id: str,
        integration: str = "salesforce",
        *,
        org_id: str | None = None,
        metadata_org_id: str | None = None,
        created: datetime | None = None,
        fail_with: int | None = None,
    ) -> StandinConnection:
        """Create a connection; ``created`` defaults to one minute later than the previous one."""
        number = next(self._ids)
        moment = created or _EPOCH + timedelta(minutes=number)
        connection = StandinConnection(
            connection_id, integration, org_id, metadata_org_id, iso(moment), iso(moment), number, fail_with
        )
        self.connections[(integration, connection_id)] = connection
        return connection

    def update_connection(self, connection_id: str, integration: str = "salesforce", **changes: Any) -> None:
        """Change a connection's fields and bump its ``updated_at``, as terapi does."""
        connection = self.connections[(integration, connection_id)]
        for name, value in changes.items():
            setattr(connection, name, value)
        connection.updated_at = iso(datetime.now(UTC))

    def remove_connection(self, connection_id: str, integration: str = "salesforce") -> None:
        del self.connections[(integration, connection_id)]

    def fail_next(self, count: int, status: int = 500, *, retry_after: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After``), whatever they ask."""
        self._scripted.extend(_Scripted(status=status, retry_after=retry_after) for _ in range(count))

    def slow_next(self, count: int, delay_s: float) -> None:
        """Hold the next ``count`` requests for ``delay_s`` before answering them normally."""
        self._scripted.extend(_Scripted(delay_s=delay_s) for _ in range(count))

    def list_calls(self) -> list[dict[str, str]]:
        return [query for _, path, query in self.calls if path in ("/connections", "/connection")]

    def read_calls(self) -> list[str]:
        """The connection ids read, in order."""
        prefixes = ("/connections/", "/connection/")
        return [path.rsplit("/", 1)[1] for _, path, _ in self.calls if path.startswith(prefixes)]

    @property
    def app(self) -> Starlette:
        routes = [Route("/connection", self._list), Route("/connection/{connection_id}", self._read)]
        if self.modern_paths:
            routes += [Route("/connections", self._list), Route("/connections/{connection_id}", self._read)]
        return Starlette(routes=routes)

    async def _gate(self, request: Request) -> Response | None:
        """Record the call, then apply scripted failures and the Bearer check."""
        self.calls.append((request.method, request.url.path, dict(request.query_params)))
        scripted = self._scripted.popleft() if self._scripted else _Scripted()
        if scripted.delay_s:
            await asyncio.sleep(scripted.delay_s)
        if scripted.status is not None:
            headers = {"Retry-After": scripted.retry_after} if scripted.retry_after is not None else None
            return _error(scripted.status, "scripted_failure", headers)
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return _error(401, "invalid_secret_key")
        return None

    async def _list(self, request: Request) -> Response:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        query = request.query_params
        if not self.paging and not {"limit", "page"}.isdisjoint(query):
            return _error(400, "invalid_query_params")
        wanted = set(query["integrationId"].split(",")) if "integrationId" in query else None
        matching = sorted(
            (c for c in self.connections.values() if wanted is None or c.integration in wanted), key=lambda c: c.id
        )
        if self.paging:
            limit, page = int(query.get("limit", "100")), int(query.get("page", "0"))
            index = 0 if self.first_page is None else max(page, self.first_page) - self.first_page
            chosen = matching[index * limit : (index + 1) * limit]
        else:
            chosen = matching
        return JSONResponse({"connections": [connection.listed() for connection in chosen]})

    async def _read(self, request: Request) -> Response:
        refused = await self._gate(request)
        if refused is not None:
            return refused
        key = (request.query_params.get("provider_config_key", ""), request.path_params["connection_id"])
        connection = self.connections.get(key)
        if connection is None:
            return _error(404, "unknown_connection")
        if connection.fail_with == 424:
            return _error(424, "refresh_token_external_error")
        if connection.fail_with is not None:
            return _error(connection.fail_with, "connection_failure")
        return JSONResponse(
            {
                **connection.listed(),
                "created_at": connection.created,
                "credentials": connection.credentials() if self.credentials_scope else {},
                "connection_config": {"instance_url": f"https://standin-{connection.id}.my.salesforce.com"},
            }
        )


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": f"stand-in answered {status}"}}, status, headers=headers)


@asynccontextmanager
async def run_standin(**knobs: Any) -> AsyncIterator[TerapiStandin]:
    """Serve a ``TerapiStandin(**knobs)`` on a free port; its ``base_url`` is set inside the block."""
    standin = TerapiStandin(**knobs)
    async with run_uvicorn(standin.app) as base_url:
        standin.base_url = base_url
        yield standin
