"""The compiled routing rules: the ``TopicRouter`` the Kafka sink calls once per event.

It runs on the hot path, so everything is prepared once: globs are one regex per condition,
kinds are compared as ``ce_type`` strings, templates are pre-split into literal text and
placeholders. The topics chosen for one (kind, org, object, connection, change type) are cached
in a bounded dict, so a steady stream costs one tuple and one dict lookup per event. The channel
needs no place in that key: kind and object decide it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from receiver.change_events import change_event_channel
from receiver.event import CHANGE_EVENT, KINDS, PLATFORM_EVENT, CloudEvent
from receiver.routing import (
    ALL_KINDS,
    ILLEGAL_TOPIC_CHARACTERS,
    MAX_TOPIC_LENGTH,
    RouteRule,
    compile_globs,
    expand_change_types,
    parse_template,
)

if TYPE_CHECKING:
    from receiver.settings import Settings

__all__ = ["CACHE_SIZE", "Router", "build_router"]

logger = logging.getLogger("receiver.routing")

#: Distinct (kind, org, object, connection, change type) combinations remembered; a real
#: deployment has far fewer, and past the bound the oldest entry is dropped.
CACHE_SIZE: Final = 8192


@dataclass(frozen=True, slots=True)
class _Template:
    parts: tuple[tuple[str, str | None], ...]

    def render(self, values: dict[str, str]) -> str:
        rendered = "".join(
            literal + ("" if name is None else ILLEGAL_TOPIC_CHARACTERS.sub("_", values[name]))
            for literal, name in self.parts
        )
        return rendered[:MAX_TOPIC_LENGTH]


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    label: str
    types: frozenset[str] | None
    orgs: frozenset[str] | None
    integrations: frozenset[str] | None
    objects: re.Pattern[str] | None
    channels: re.Pattern[str] | None
    change_types: frozenset[str] | None
    templates: tuple[_Template, ...]

    def matches(self, event: CloudEvent, change_type: str | None) -> bool:
        if self.types is not None and event.type not in self.types:
            return False
        if self.orgs is not None and event.organization_id not in self.orgs:
            return False
        if self.integrations is not None and event.connection.integration not in self.integrations:
            return False
        if self.objects is not None and (event.object is None or not self.objects.fullmatch(event.object)):
            return False
        if self.channels is not None:
            channel = _channel(event)
            if channel is None or not self.channels.fullmatch(channel):
                return False
        return self.change_types is None or change_type in self.change_types


def _channel(event: CloudEvent) -> str | None:
    if event.type == PLATFORM_EVENT:
        section = event.data.get("platform_event")
        channel = section.get("channel") if isinstance(section, dict) else None
        return channel if isinstance(channel, str) else None
    if event.type == CHANGE_EVENT and event.object is not None:
        return change_event_channel(event.object)
    return None


def _change_type(event: CloudEvent) -> str | None:
    if event.type != CHANGE_EVENT:
        return None
    section = event.data.get("change_event")
    value = section.get("change_type") if isinstance(section, dict) else None
    return value if isinstance(value, str) else None


_TYPE_OF_KIND: Final = {kind: event_type for event_type, kind in KINDS.items()}
assert set(_TYPE_OF_KIND) == ALL_KINDS


def _compile(rule: RouteRule, index: int) -> _CompiledRule:
    kinds = rule.possible_kinds()
    return _CompiledRule(
        label=rule.label(index),
        types=None if kinds == ALL_KINDS else frozenset(_TYPE_OF_KIND[kind] for kind in kinds),
        orgs=None if rule.org is None else frozenset(rule.org),
        integrations=None if rule.integration is None else frozenset(rule.integration),
        objects=compile_globs(rule.object),
        channels=compile_globs(rule.channel),
        change_types=None if rule.change_type is None else expand_change_types(rule.change_type),
        templates=tuple(_Template(tuple(parse_template(topic))) for topic in rule.topics),
    )


class Router:
    """``TopicRouter``: the topics of one event, by the first rule that matches it."""

    __slots__ = ("_cache", "_default", "_rules", "default_topic")

    def __init__(self, rules: Sequence[RouteRule], default_topic: str) -> None:
        self.default_topic = default_topic
        self._default: tuple[str, ...] = (default_topic,)
        self._rules = tuple(_compile(rule, index) for index, rule in enumerate(rules))
        self._cache: dict[tuple[str | None, ...], tuple[str, ...]] = {}

    def __call__(self, event: CloudEvent) -> Sequence[str]:
        if not self._rules:
            return self._default
        change_type = _change_type(event) if event.type == CHANGE_EVENT else None
        connection = event.connection
        key = (
            event.type,
            event.organization_id,
            event.object,
            connection.integration,
            connection.connection_id,
            change_type,
        )
        topics = self._cache.get(key)
        if topics is None:
            topics = self._route(event, change_type)
            if len(self._cache) >= CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = topics
        return topics

    def _route(self, event: CloudEvent, change_type: str | None) -> tuple[str, ...]:
        for rule in self._rules:
            if rule.matches(event, change_type):
                return self._render(rule, event, change_type)
        return self._default

    def _render(self, rule: _CompiledRule, event: CloudEvent, change_type: str | None) -> tuple[str, ...]:
        values = {
            "kind": event.kind,
            "object": event.object or "",
            "channel": _channel(event) or "",
            "org": event.organization_id,
            "integration": event.connection.integration,
            "connection": event.connection.connection_id,
            "change_type": change_type or "",
        }
        topics: list[str] = []
        for template in rule.templates:
            topic = template.render(values)
            if topic in ("", ".", ".."):
                # Only an event without an object can get here; it must still go somewhere.
                logger.warning("route renders no topic name; using the default topic", extra={"route": rule.label})
                topic = self.default_topic
            if topic not in topics:
                topics.append(topic)
        return tuple(topics)


def build_router(settings: Settings) -> Router:
    """The router of the configured ``routes`` (already validated when the settings loaded)."""
    return Router(settings.routes, settings.kafka_topic)
