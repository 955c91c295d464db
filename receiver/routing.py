"""Routing rules: the ``[[routes]]`` tables of the configuration, and their validation.

Operators list ``[[routes]]`` tables in the TOML configuration. Each rule has conditions (all
must hold; a list means "any of these") and one or more topic templates; the first rule that
matches wins and the event goes to every topic it names. An event no rule matches goes to
``RECEIVER_KAFKA_TOPIC``::

    [[routes]]
    name = "cdc by object"
    kind = "change_event"
    object = ["Account", "Contact"]
    topics = ["salesforce.cdc.{object}"]

Rules are validated once, when the settings load (pydantic, so an error names ``routes[N]``):
unknown placeholders or conditions, empty or illegal topics, and rules that can never win are
refused. ``receiver.router`` compiles them into the per-event router.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from fnmatch import translate
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import ErrorDetails

from receiver.change_events import ChangeType
from receiver.errors import InvalidMessage
from receiver.ids import normalize_org_id

if TYPE_CHECKING:
    from receiver.settings import Settings

__all__ = [
    "ALL_KINDS",
    "ILLEGAL_TOPIC_CHARACTERS",
    "MAX_TOPIC_LENGTH",
    "PLACEHOLDERS",
    "RouteRule",
    "Routes",
    "compile_globs",
    "describe_route_error",
    "expand_change_types",
    "parse_template",
    "static_topics",
]

Kind = Literal["outbound_message", "platform_event", "change_event"]
ALL_KINDS: Final = frozenset(get_args(Kind))
CHANGE_TYPES: Final = frozenset(get_args(ChangeType))
#: What a topic template may name; ``{org}`` is the 18-character org id, ``{channel}`` the
#: channel the ``channel`` condition matches (platform and change events only).
PLACEHOLDERS: Final = ("kind", "object", "channel", "org", "integration", "connection", "change_type")
#: Kafka's rules for topic names (``kafka.common.internals.Topic``).
MAX_TOPIC_LENGTH: Final = 249
_LEGAL_TOPIC: Final = re.compile(r"[a-zA-Z0-9._-]+")
ILLEGAL_TOPIC_CHARACTERS: Final = re.compile(r"[^a-zA-Z0-9._-]")
_GLOB_CHARACTERS: Final = frozenset("*?[")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class RouteRule(BaseModel):
    """One ``[[routes]]`` table. Unset conditions match everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, description="A label for logs and error messages.")
    kind: list[Kind] | None = None
    #: Globs, case-insensitive as Salesforce API names are: ``Account``, ``*__c``.
    object: list[str] | None = None
    #: Globs on the event channel: ``/event/Low_Ink__e``, ``/data/*ChangeEvent``. Outbound
    #: Messages have no channel; a CDC event's is its entity's standard channel.
    channel: list[str] | None = None
    #: 15- or 18-character org ids, kept in the 18-character form.
    org: list[str] | None = None
    integration: list[str] | None = None
    #: Globs on CDC change types: ``UPDATE``, ``GAP_*``.
    change_type: list[str] | None = None
    topics: list[str] = Field(min_length=1)

    _as_lists = field_validator("kind", "object", "channel", "org", "integration", "change_type", mode="before")(
        _as_list
    )

    @field_validator("kind", "object", "channel", "org", "integration", "change_type")
    @classmethod
    def _not_empty(cls, values: list[str] | None) -> list[str] | None:
        if values is not None and (not values or any(not value.strip() for value in values)):
            raise ValueError("an empty condition matches nothing; leave it out to match everything")
        return values

    @field_validator("org")
    @classmethod
    def _org_ids(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        try:
            return [normalize_org_id(value) for value in values]
        except InvalidMessage as exc:
            raise ValueError(exc.detail) from None

    @field_validator("change_type")
    @classmethod
    def _change_types(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        upper = [value.strip().upper() for value in values]
        for pattern in upper:
            if not expand_change_types([pattern]):
                raise ValueError(f"change_type {pattern!r} is none of {', '.join(sorted(CHANGE_TYPES))}")
        return upper

    @field_validator("topics")
    @classmethod
    def _topic_templates(cls, topics: list[str]) -> list[str]:
        for topic in topics:
            parse_template(topic)
        return topics

    @model_validator(mode="after")
    def _can_match(self) -> RouteRule:
        kinds = self.possible_kinds()
        if not kinds:
            raise ValueError("unreachable: its conditions exclude every kind of event (channel or change_type)")
        # A placeholder some kind never has a value for is refused rather than rendered empty:
        # the rule would send that kind to a topic the operator did not mean.
        used = {name for topic in self.topics for name in _placeholders(topic)}
        if "change_type" in used and kinds != {"change_event"}:
            raise ValueError("{change_type} in a topic needs kind = 'change_event' or a change_type condition")
        if "channel" in used and "outbound_message" in kinds:
            raise ValueError(
                "{channel} in a topic needs kind = 'platform_event' or 'change_event', or a channel condition"
                " (Outbound Messages have no channel)"
            )
        return self

    def possible_kinds(self) -> frozenset[str]:
        """The kinds this rule can match, its other conditions included."""
        kinds = ALL_KINDS if self.kind is None else frozenset(self.kind)
        if self.change_type is not None:
            kinds &= {"change_event"}
        if self.channel is not None:
            kinds &= {"platform_event", "change_event"}
        return kinds

    def label(self, index: int) -> str:
        return f"routes[{index}]" + (f" ({self.name!r})" if self.name else "")


def _placeholders(template: str) -> list[str]:
    return [name for _, name in parse_template(template) if name is not None]


def parse_template(template: str) -> list[tuple[str, str | None]]:
    """A topic template as (literal, placeholder) pairs.

    Raises ``ValueError`` naming the problem: empty, unknown placeholder, illegal literal text.
    """
    if not template.strip():
        raise ValueError("a topic is empty")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"topic {template!r}: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, format_spec, conversion in parsed:
        if literal and not _LEGAL_TOPIC.fullmatch(literal):
            raise ValueError(f"topic {template!r}: {literal!r} has characters Kafka refuses (only a-z A-Z 0-9 . _ -)")
        if name is not None and (name not in PLACEHOLDERS or format_spec or conversion):
            raise ValueError(
                f"topic {template!r}: unknown placeholder {{{name}}}; known: "
                + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS)
            )
        parts.append((literal, name))
    if all(name is None for _, name in parts):
        if len(template) > MAX_TOPIC_LENGTH:
            raise ValueError(f"topic {template!r} is longer than {MAX_TOPIC_LENGTH} characters")
        if template in (".", ".."):
            raise ValueError(f"topic {template!r} is not a legal Kafka topic name")
    return parts


def expand_change_types(patterns: Sequence[str]) -> frozenset[str]:
    """The change types the globs ``patterns`` match."""
    return frozenset(kind for kind in CHANGE_TYPES if any(_glob(pattern).fullmatch(kind) for pattern in patterns))


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(translate(pattern), re.IGNORECASE)


def compile_globs(patterns: Sequence[str] | None) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any of the globs; None for no condition."""
    if patterns is None:
        return None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns), re.IGNORECASE)


# --- reachability -------------------------------------------------------------------------


def _covers_globs(earlier: Sequence[str] | None, later: Sequence[str] | None) -> bool:
    """True when every value ``later`` matches is matched by ``earlier`` (never a false yes)."""
    if earlier is None:
        return True
    if later is None:
        return False
    regex = compile_globs(earlier)
    assert regex is not None
    lowered = {pattern.lower() for pattern in earlier}
    for pattern in later:
        if pattern.lower() in lowered:
            continue
        if _GLOB_CHARACTERS.isdisjoint(pattern) and regex.fullmatch(pattern):
            continue
        return False
    return True


def _covers_values(earlier: Sequence[str] | None, later: Sequence[str] | None) -> bool:
    if earlier is None:
        return True
    return later is not None and set(later) <= set(earlier)


def _shadows(earlier: RouteRule, later: RouteRule) -> bool:
    """True when ``earlier`` matches every event ``later`` matches, so ``later`` never wins."""
    if earlier.kind is not None and not later.possible_kinds() <= set(earlier.kind):
        return False
    if earlier.change_type is not None:
        if later.change_type is None:
            return False
        if not expand_change_types(later.change_type) <= expand_change_types(earlier.change_type):
            return False
    return (
        _covers_globs(earlier.object, later.object)
        and _covers_globs(earlier.channel, later.channel)
        and _covers_values(earlier.org, later.org)
        and _covers_values(earlier.integration, later.integration)
    )


def _check_reachable(rules: list[RouteRule]) -> list[RouteRule]:
    for index, rule in enumerate(rules):
        for earlier_index, earlier in enumerate(rules[:index]):
            if _shadows(earlier, rule):
                why = "matches every event" if _is_catch_all(earlier) else "already matches every event it would"
                raise ValueError(f"{rule.label(index)} is unreachable: {earlier.label(earlier_index)} before it {why}")
    return rules


def _is_catch_all(rule: RouteRule) -> bool:
    return all(
        condition is None
        for condition in (rule.kind, rule.object, rule.channel, rule.org, rule.integration, rule.change_type)
    )


#: The ``routes`` setting: a list of rules, checked for rules that can never win.
Routes = Annotated[list[RouteRule], AfterValidator(_check_reachable)]


def describe_route_error(error: ErrorDetails) -> str:
    """One line for a validation error inside ``routes``: ``routes[2]: <the problem>``."""
    location = error["loc"]
    where = "routes"
    if len(location) > 1:
        where += f"[{location[1]}]"
    if len(location) > 2:
        where += "." + ".".join(str(part) for part in location[2:])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown condition; known: " + ", ".join(name for name in RouteRule.model_fields if name != "topics")
    if message.startswith("routes["):
        return message  # a cross-rule error already names its rules
    return f"{where}: {message}"


def static_topics(settings: Settings) -> list[str]:
    """Every topic known before any event arrives: the default, quarantine and rules' fixed topics."""
    topics = [settings.kafka_topic, settings.kafka_quarantine_topic]
    for rule in settings.routes:
        for topic in rule.topics:
            if not _placeholders(topic) and topic not in topics:
                topics.append(topic)
    return topics
