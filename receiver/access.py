"""The source address allow-list, and who the client is when proxies stand in front of us.

Outbound Messages are unsigned: the address they come from is one of the few things an operator
can pin (Salesforce publishes the ranges its messages leave from). The client is the TCP peer,
unless the peer is one of ``RECEIVER_TRUSTED_PROXIES``: then ``X-Forwarded-For`` is walked from
the right, skipping trusted proxies, and the first address not in them is the client. Entries
to the left of it were written by whoever the client is, so they are never believed; that is
why the walk starts from the right, the end our own proxies append to.

The allow-list applies to ``/webhooks/*`` only: ``/healthz``, ``/readyz`` and ``/metrics`` are
for probes and scrapers on the inside, and belong behind the network's own policy. The client
address worked out here replaces ``scope["client"]`` on every path, so recordings and logs name
the client rather than the proxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import Forbidden
from receiver.metrics import Metrics

if TYPE_CHECKING:
    # settings imports this module (parse_networks); middleware and recording import settings.
    from receiver.recording import Recorder

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

_GUARDED_PREFIX: Final = "/webhooks/"
_FORWARDED_FOR: Final = b"x-forwarded-for"


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (``203.0.113.0/24``) or single addresses, as networks.

    Raises ``ValueError`` naming the value. Host bits set (``10.0.0.7/8``) are an error rather
    than silently widened: such a value is a typo more often than a wish to allow a /8.
    """
    networks = []
    for value in values:
        try:
            networks.append(ip_network(value.strip()))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or network ({exc})") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """The address in a peer or ``X-Forwarded-For`` entry, or None when it is not one.

    Accepts the forms proxies write: ``203.0.113.7``, ``203.0.113.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]:4711``. IPv4-mapped IPv6 (``::ffff:203.0.113.7``, what a dual-stack socket
    reports) is read as the IPv4 address, so one allow-list entry covers both.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_within(address: Address, networks: Sequence[Network]) -> bool:
    # Comparing across versions is False, not an error, for ``in``.
    return any(address in network for network in networks)


def client_address(peer: Address | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> Address | None:
    """The client's address: the peer, or behind trusted proxies the rightmost untrusted hop.

    None when it cannot be known: no peer (a Unix socket), or a trusted proxy that passed on
    something that is not an address. When every hop is a trusted proxy the leftmost is the client.
    """
    if peer is None or not is_within(peer, trusted):
        return peer
    client = peer
    for entry in reversed(forwarded_for):
        address = parse_address(entry)
        if address is None:
            return None
        client = address
        if not is_within(address, trusted):
            return address
    return client


def forwarded_for_entries(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``X-Forwarded-For`` entry in order; several headers count as one joined by commas."""
    entries: list[str] = []
    for name, value in headers:
        if name == _FORWARDED_FOR:
            entries.extend(part for part in value.decode("latin-1").split(",") if part.strip())
    return entries


class SourceAccessMiddleware:
    """Pure ASGI: sets the real client address, and answers 403 to webhooks from outside the allow-list.

    The 403 is a SOAP Fault on Outbound Message paths and problem+json elsewhere, like every
    other refusal. The request is not read: it is recorded without its body and counted in
    ``receiver_requests_rejected{reason="source_not_allowed"}``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_cidrs: Sequence[str],
        trusted_proxies: Sequence[str],
        metrics: Metrics,
        recorder: Recorder | None = None,
    ) -> None:
        """Raises ``ValueError`` for an unparsable network (the settings have checked them already)."""
        self.app = app
        self.allowed = parse_networks(allowed_cidrs)
        self.trusted = parse_networks(trusted_proxies)
        self.metrics = metrics
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.allowed or self.trusted):
            # Nothing configured (the default): no address to parse on every request.
            await self.app(scope, receive, send)
            return
        peer_host = scope["client"][0] if scope.get("client") else None
        peer = parse_address(peer_host) if peer_host is not None else None
        client = peer
        if peer is not None and self.trusted and is_within(peer, self.trusted):
            client = client_address(peer, forwarded_for_entries(scope["headers"]), self.trusted)
            if client is not None and client != peer:
                scope["client"] = (str(client), 0)
        path: str = scope["path"]
        if self.allowed and path.startswith(_GUARDED_PREFIX) and not self._is_allowed(client):
            from receiver.middleware import refuse  # see TYPE_CHECKING above

            error = Forbidden("the source address is not allowed", reason="source_not_allowed")
            # Outermost middleware: no request id is assigned yet.
            await refuse(error, scope, receive, send, metrics=self.metrics, recorder=self.recorder, request_id=None)
            return
        await self.app(scope, receive, send)

    def _is_allowed(self, client: Address | None) -> bool:
        return client is not None and is_within(client, self.allowed)
