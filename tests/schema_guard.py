"""A pytest plugin: every event the test suite builds must match the JSON Schemas in ``schemas/``.

Consumers are told to rely on ``schemas/*.schema.json``; the surest way to keep that promise is
to check every event any test produces, whatever the test is about. The two event builders,
``receiver.outbound.to_events`` and ``receiver.change_events.to_events`` (also reached as
``receiver.callbacks.to_events``), are wrapped before the test modules are imported; each event
they return is validated, as JSON, against its kind's ``data`` schema and the headers schema.
A violation does not disturb the test that produced it: the session fails at the end and the
summary lists the violations. Hand-made ``CloudEvent``s (sink tests) are not builder output and
are not checked.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson
import pytest
from jsonschema import Draft202012Validator

from receiver.event import CHANGE_EVENT, OUTBOUND_MESSAGE, PLATFORM_EVENT, CloudEvent

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
DATA_SCHEMAS: Final = {
    OUTBOUND_MESSAGE: "outbound_message.data.schema.json",
    PLATFORM_EVENT: "platform_event.data.schema.json",
    CHANGE_EVENT: "change_event.data.schema.json",
}
HEADERS_SCHEMA: Final = "event.headers.schema.json"
#: Enough to diagnose; a systematic bug would otherwise print thousands of lines.
MAX_REPORTED: Final = 30


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


class SchemaGuard:
    """Validates events against the published schemas and remembers what it found."""

    def __init__(self) -> None:
        self._data = {event_type: _validator(name) for event_type, name in DATA_SCHEMAS.items()}
        self._headers = _validator(HEADERS_SCHEMA)
        self.checked = 0
        self.violations: list[str] = []
        self.violation_count = 0

    def problems(self, event: CloudEvent) -> list[str]:
        """What is wrong with ``event`` as a consumer would receive it (JSON), or nothing."""
        validator = self._data.get(event.type)
        if validator is None:
            return [f"ce_type {event.type!r} has no schema"]
        data = orjson.loads(orjson.dumps(event.data))
        headers = {name: value.decode() for name, value in event.kafka_headers()}
        found = [f"data{_path(error.absolute_path)}: {error.message}" for error in validator.iter_errors(data)]
        for error in self._headers.iter_errors(headers):
            found.append(f"headers{_path(error.absolute_path)}: {error.message}")
        return found

    def record(self, events: list[CloudEvent], where: str) -> None:
        for event in events:
            self.checked += 1
            for problem in self.problems(event):
                self.violation_count += 1
                if len(self.violations) < MAX_REPORTED:
                    self.violations.append(f"{where}: {event.type} {event.id}: {problem}")

    def wrap(self, build: Callable[..., list[CloudEvent]]) -> Callable[..., list[CloudEvent]]:
        if getattr(build, "__schema_guarded__", False):
            return build

        @functools.wraps(build)
        def checked(*args: Any, **kwargs: Any) -> list[CloudEvent]:
            events = build(*args, **kwargs)
            self.record(events, _current_test or "outside a test")
            return events

        checked.__schema_guarded__ = True  # type: ignore[attr-defined]
        return checked


def _path(parts: Any) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


GUARD: Final = SchemaGuard()
_current_test: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Before collection, so that test modules importing ``to_events`` by name get the wrapper.
    from receiver import callbacks, change_events, outbound

    outbound.to_events = GUARD.wrap(outbound.to_events)  # type: ignore[assignment]
    change_events.to_events = GUARD.wrap(change_events.to_events)  # type: ignore[assignment]
    callbacks.to_events = change_events.to_events  # type: ignore[assignment]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    global _current_test  # noqa: PLW0603 - the plugin's one piece of state, set per test
    _current_test = item.nodeid
    try:
        return (yield)
    finally:
        _current_test = None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if GUARD.violations:
        terminalreporter.section("events that do not match schemas/", sep="=", red=True)
        for line in GUARD.violations:
            terminalreporter.line(line)
        if GUARD.violation_count > len(GUARD.violations):
            terminalreporter.line(f"... and {GUARD.violation_count - len(GUARD.violations)} more")
    elif GUARD.checked:
        terminalreporter.line(f"schemas/: all {GUARD.checked} events the tests built match the JSON Schemas")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if GUARD.violations and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
