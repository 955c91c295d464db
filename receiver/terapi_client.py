"""An async client for terapi's Connections API: list connections, read one connection.

Only what org resolution needs leaves this module (``receiver.terapi_wire`` reduces the
answers): the listing to keys and a fingerprint, a connection to its identity URL and metadata
org id, its credentials dropped at once.

Every call is bounded: 5xx answers, timeouts and transport errors are retried a few times with
exponential backoff and jitter, 429 waits for ``Retry-After`` (capped) and pauses every call of
the client meanwhile, and anything else fails fast with a ``TerapiError`` naming the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from receiver.errors import ConfigurationError, ReceiverError
from receiver.settings import Settings
from receiver.terapi_wire import ConnectionDetails, ListedConnection, connection_details, listed_connection

logger = logging.getLogger("receiver.terapi")

#: terapi pages are numbered from 0 (``page=0`` is the first ``limit`` connections).
FIRST_PAGE = 0
DEFAULT_PAGE_SIZE = 100
#: A server that ignores ``page`` would otherwise be listed forever.
MAX_PAGES = 10_000


class TerapiError(ReceiverError):
    """terapi did not answer as documented; ``status_code`` is terapi's, when it answered.

    ``reason`` tells the cases apart: ``terapi_not_found`` (404), ``terapi_refresh_exhausted``
    (424: the customer must reconnect), ``terapi_rejected`` (another 4xx), ``terapi_unavailable``
    (5xx, 429, timeouts or transport errors that outlasted every retry) and
    ``terapi_bad_response`` (a 2xx whose body is not the documented JSON).
    """

    status = 503
    reason = "terapi_error"

    def __init__(self, detail: str, *, reason: str, status_code: int | None = None, path: str | None = None) -> None:
        super().__init__(detail, reason=reason)
        self.status_code = status_code
        self.path = path

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(reason={self.reason!r}, terapi_status={self.status_code}, detail={self.detail!r})"


class TerapiUnauthorized(TerapiError):
    """terapi rejected the secret key: nothing will work until an operator fixes it."""

    retryable = False

    def __init__(self, path: str) -> None:
        super().__init__(
            "terapi rejected the secret key (401): check RECEIVER_TERAPI_SECRET_KEY",
            reason="terapi_unauthorized",
            status_code=401,
            path=path,
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long one call may keep trying; the product of these bounds the worst case."""

    attempts: int = 4
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    #: A 429 asking for longer than this is retried after this long instead.
    max_retry_after_s: float = 60.0

    def backoff_s(self, attempt: int) -> float:
        """Equal jitter: at least half the exponential delay, so retries never bunch at zero."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** (attempt - 1))
        # Jitter only spreads replicas' retries apart; it needs no cryptographic strength.
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311


class _BearerAuth(httpx.Auth):
    """Adds the secret key per request so that it never sits in a repr-able header mapping."""

    __slots__ = ("_secret_key",)

    def __init__(self, secret_key: SecretStr) -> None:
        self._secret_key = secret_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._secret_key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(secret_key=**********)"


class TerapiClient:
    """terapi's Connections API; ``start()`` opens the HTTP client, ``stop()`` closes it."""

    def __init__(
        self,
        base_url: str,
        secret_key: SecretStr,
        *,
        timeout_s: float,
        legacy_paths: bool = False,
        retry: RetryPolicy | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = _BearerAuth(secret_key)
        self._timeout_s = timeout_s
        # Older terapi servers only know the singular path; the bodies are the same.
        self._collection = "/connection" if legacy_paths else "/connections"
        self._retry = retry or RetryPolicy()
        self._page_size = page_size
        #: False once the server refused ``limit`` and ``page``: it is then listed in one call.
        self._paged = True
        self._http: httpx.AsyncClient | None = None
        self._paused_until = 0.0
        self._errors: Counter | None = None
        if registry is not None:
            self._errors = Counter(
                "receiver_terapi_errors",
                "terapi answers that were not a success, by HTTP status (or timeout, transport, invalid_json)",
                ["status"],
                registry=registry,
            )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> TerapiClient:
        """The client the settings describe; raises ``ConfigurationError`` without a secret key."""
        if settings.terapi_secret_key is None:
            raise ConfigurationError("RECEIVER_TERAPI_SECRET_KEY is not set: terapi cannot be queried")
        return cls(
            settings.terapi_base_url,
            settings.terapi_secret_key,
            timeout_s=settings.terapi_timeout_s,
            legacy_paths=settings.terapi_legacy_paths,
            **options,
        )

    def __repr__(self) -> str:
        return f"TerapiClient(base_url={self.base_url!r}, paths={self._collection!r})"

    async def start(self) -> None:
        """Open the HTTP client; idempotent."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.base_url,
                auth=self._auth,
                timeout=self._timeout_s,
                headers={"Accept": "application/json"},
            )

    async def stop(self) -> None:
        """Close the HTTP client; idempotent."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def __aenter__(self) -> TerapiClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def list_connections(self, integrations: Sequence[str]) -> list[ListedConnection]:
        """Every connection of ``integrations``, all pages.

        Raises ``TerapiUnauthorized`` or ``TerapiError`` when any page cannot be read: a partial
        list would look like deletions.
        """
        wanted = set(integrations)
        found: dict[tuple[str, str], ListedConnection] = {}
        async for page in self._pages(",".join(integrations)):
            for item in page:
                listed = listed_connection(item)
                # Filtered again here in case a server ignores integrationId.
                if listed is not None and listed.integration in wanted:
                    found[(listed.integration, listed.connection_id)] = listed
        return list(found.values())

    async def get_connection(self, connection_id: str, integration: str) -> ConnectionDetails:
        """Read one connection; raises ``TerapiUnauthorized`` or ``TerapiError`` (see its reasons)."""
        path = f"{self._collection}/{quote(connection_id, safe='')}"
        body = await self._get_json(path, {"provider_config_key": integration})
        if not isinstance(body, dict):
            raise _bad_response("terapi connection body is not a JSON object", path)
        return connection_details(connection_id, integration, body)

    async def _pages(self, integration_filter: str) -> AsyncIterator[list[dict[str, Any]]]:
        if not self._paged:
            yield await self._unpaged_list(integration_filter)
            return
        previous_ids: list[object] | None = None
        for page in range(FIRST_PAGE, FIRST_PAGE + MAX_PAGES):
            params: dict[str, str | int] = {"integrationId": integration_filter, "limit": self._page_size, "page": page}
            try:
                body = (
                    await self._first_page(params)
                    if page == FIRST_PAGE
                    else await self._get_json(self._collection, params)
                )
            except TerapiError as exc:
                if page != FIRST_PAGE or exc.status_code != 400:
                    raise
                # A server that validates its query strictly and lists without paging: one call.
                # Should that fail too, the 400 was not about paging, and its error is raised.
                entries = await self._unpaged_list(integration_filter)
                logger.warning("terapi refused 'limit' and 'page' (400); listing connections without them from now on")
                self._paged = False
                yield entries
                return
            items, entries = self._listed_entries(body)
            ids = [entry.get("connection_id") for entry in entries]
            if entries and ids == previous_ids:
                if page != FIRST_PAGE + 1:
                    logger.warning("terapi repeats its pages; it seems to ignore 'page'", extra={"page": page})
                    return
                # Pages 0 and 1 alike: a server counting from 1 reads page 0 as page 1. Go on;
                # should page 2 repeat them too, the server ignores 'page'.
                logger.info("terapi answered pages 0 and 1 alike; it seems to count pages from 1")
                continue
            yield entries
            if len(items) < self._page_size:
                return
            previous_ids = ids
        raise _bad_response(f"terapi connection list did not end within {MAX_PAGES} pages", self._collection)

    async def _first_page(self, params: dict[str, str | int]) -> Any:
        """The first page; on a 404 from ``/connections``, an older server's ``/connection``
        (DESIGN: they serve that path, with the same bodies), kept from then on."""
        try:
            return await self._get_json(self._collection, params)
        except TerapiError as exc:
            if exc.status_code != 404 or self._collection != "/connections":
                raise
            try:
                body = await self._get_json("/connection", params)
            except TerapiError as older:
                if older.status_code == 404:
                    raise exc from None
                # The path exists (it refused the query, say): the caller's own handling follows.
                self._use_older_paths()
                raise
        self._use_older_paths()
        return body

    def _use_older_paths(self) -> None:
        self._collection = "/connection"
        logger.warning("terapi has no /connections (404) but serves /connection: using the older paths")

    async def _unpaged_list(self, integration_filter: str) -> list[dict[str, Any]]:
        return self._listed_entries(await self._get_json(self._collection, {"integrationId": integration_filter}))[1]

    def _listed_entries(self, body: Any) -> tuple[list[Any], list[dict[str, Any]]]:
        """The ``connections`` array of a list answer, and its objects; raises ``TerapiError`` without one."""
        items = body.get("connections") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _bad_response("terapi connection list has no 'connections' array", self._collection)
        return items, [item for item in items if isinstance(item, dict)]

    async def _get_json(self, path: str, params: dict[str, str | int]) -> Any:
        """GET with the retry policy; raises the ``TerapiError`` subclass matching the failure."""
        if self._http is None:
            raise RuntimeError("TerapiClient.start() was not called")
        policy = self._retry
        for attempt in range(1, policy.attempts + 1):
            await self._wait_for_rate_limit()
            try:
                response = await self._http.get(path, params=params)
            except httpx.RequestError as exc:  # timeouts, refused connections, broken streams
                label = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
                status_code, delay = None, policy.backoff_s(attempt)
                cause: BaseException | None = exc
            else:
                if response.is_success:
                    return self._json_body(response, path)
                status_code, label = response.status_code, str(response.status_code)
                self._count_error(label)
                _raise_unless_retryable(status_code, path)
                cause, delay = None, self._delay_after(response, attempt)
            if status_code is None:
                self._count_error(label)
            if attempt == policy.attempts:
                raise TerapiError(
                    f"terapi failed {attempt} times on {path} (last: {label})",
                    reason="terapi_unavailable",
                    status_code=status_code,
                    path=path,
                ) from cause
            logger.info(
                "terapi call failed; retrying",
                extra={"path": path, "terapi_status": label, "attempt": attempt, "delay_s": round(delay, 3)},
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _delay_after(self, response: httpx.Response, attempt: int) -> float:
        if response.status_code != 429:
            return self._retry.backoff_s(attempt)
        delay = _retry_after_s(response.headers.get("Retry-After"), self._retry, attempt)
        # Every call of this client waits, not only this one: terapi limits per key.
        self._paused_until = max(self._paused_until, time.monotonic() + delay)
        return delay

    async def _wait_for_rate_limit(self) -> None:
        delay = self._paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _json_body(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            self._count_error("invalid_json")
            raise _bad_response("terapi answered with a body that is not JSON", path) from exc

    def _count_error(self, label: str) -> None:
        if self._errors is not None:
            self._errors.labels(status=label).inc()


def _raise_unless_retryable(status: int, path: str) -> None:
    """Raise the error of a final status; 429 and 5xx return so that the caller retries."""
    if status == 429 or status >= 500:
        return
    if status == 401:
        raise TerapiUnauthorized(path)
    if status == 404:
        raise TerapiError(f"terapi has no {path} (404)", reason="terapi_not_found", status_code=status, path=path)
    if status == 424:
        raise TerapiError(
            f"terapi could not refresh the credentials of {path} (424)",
            reason="terapi_refresh_exhausted",
            status_code=status,
            path=path,
        )
    raise TerapiError(f"terapi rejected {path} ({status})", reason="terapi_rejected", status_code=status, path=path)


def _bad_response(detail: str, path: str) -> TerapiError:
    return TerapiError(detail, reason="terapi_bad_response", path=path)


def _retry_after_s(value: str | None, policy: RetryPolicy, attempt: int) -> float:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date), capped; backoff without one."""
    if value is None:
        return policy.backoff_s(attempt)
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return policy.backoff_s(attempt)
    if not math.isfinite(seconds):
        return policy.max_retry_after_s
    return min(max(seconds, 0.0), policy.max_retry_after_s)
