"""Authenticated payloads that could not be processed (an unknown org, mostly), kept for replay.

Bounded in rate and size: a sender flooding unknown org ids must not fill the disk or the
quarantine topic. What is dropped is counted.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping

from receiver.errors import PublishFailed
from receiver.event import utc_now_iso
from receiver.metrics import Metrics
from receiver.redaction import recorded_headers, redact_session_id
from receiver.sink import Sink

logger = logging.getLogger("receiver.quarantine")


class Quarantine:
    def __init__(
        self,
        sink: Sink,
        metrics: Metrics,
        *,
        per_second: float = 20.0,
        burst: int = 100,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.per_second = per_second
        self.burst = burst
        self.max_body_bytes = max_body_bytes
        self._tokens = float(burst)
        self._refilled = time.monotonic()

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.per_second)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def put(
        self,
        *,
        reason: str,
        kind: str,
        integration: str,
        organization_id: str | None,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> bool:
        """Store the payload; False when it was dropped by a bound or the sink failed."""
        if len(body) > self.max_body_bytes:
            self.metrics.quarantine_dropped.labels("too_large").inc()
            return False
        if not self._take_token():
            self.metrics.quarantine_dropped.labels("rate").inc()
            return False
        record = {
            "quarantined_at": utc_now_iso(),
            "reason": reason,
            "kind": kind,
            "integration": integration,
            "organization_id": organization_id,
            "path": path,
            "headers": recorded_headers(headers),
            **_encode_body(redact_session_id(body) if kind == "outbound_message" else body),
        }
        try:
            await self.sink.quarantine(record)
        except PublishFailed as exc:
            self.metrics.quarantine_dropped.labels("sink_failed").inc()
            logger.warning("could not quarantine a payload", extra={"reason": reason, "error": str(exc)})
            return False
        self.metrics.quarantined.labels(reason).inc()
        return True


def _encode_body(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}
