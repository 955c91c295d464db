"""Routing rules: matching, templating, fan-out, sanitization and the errors that name a rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from receiver.change_events import change_event_channel
from receiver.errors import ConfigurationError
from receiver.event import CloudEvent, Connection
from receiver.router import CACHE_SIZE, Router, build_router
from receiver.routing import MAX_TOPIC_LENGTH, static_topics
from receiver.settings import Settings, load_settings
from tests import event_payloads, om_payloads
from tests.conftest import EXAMPLE_WSDL_DIR

ORG = om_payloads.ORG
OTHER_ORG15 = "00DD0000000muCU"
OTHER_ORG = "00DD0000000muCUMAY"
CONNECTION = Connection("acme-prod", "salesforce")


def settings_with(routes: list[dict[str, Any]], **overrides: Any) -> Settings:
    return load_settings(routes=routes, **overrides)


def router(*routes: dict[str, Any]) -> Router:
    return build_router(settings_with(list(routes), kafka_topic="default.topic"))


def outbound_event(object_name: str = "Contact", *, org15: str = om_payloads.ORG15) -> CloudEvent:
    from receiver.outbound import OutboundMessageParser, to_events
    from receiver.wsdl import WsdlRegistry

    body = om_payloads.outbound_message(1, object_name=object_name, org15=org15)
    message = OutboundMessageParser(WsdlRegistry.load(EXAMPLE_WSDL_DIR)).parse(body)
    [event] = to_events(message, CONNECTION, "2025-01-01T00:00:00.000Z")
    return event


def platform_event() -> CloudEvent:
    from receiver.callbacks import parse_event_body, to_events

    [message] = parse_event_body(json.dumps(event_payloads.sample("platform_event_low_ink.json")).encode())
    return to_events(message, ORG, CONNECTION, "2025-01-01T00:00:00.000Z")[0]


def change_event(change_type: str = "UPDATE", object_name: str = "Account") -> CloudEvent:
    from receiver.callbacks import parse_event_body, to_events

    payload = event_payloads.change_event(["001xx000003DGb4AAG"], change_type)
    payload["data"]["payload"]["ChangeEventHeader"]["entityName"] = object_name
    payload["channel"] = change_event_channel(object_name)
    [message] = parse_event_body(json.dumps(payload).encode())
    return to_events(message, ORG, CONNECTION, "2025-01-01T00:00:00.000Z")[0]


# --- matching -------------------------------------------------------------------------------


def test_no_rules_send_everything_to_the_default_topic() -> None:
    """Without [[routes]] every event goes to RECEIVER_KAFKA_TOPIC alone."""
    route = router()
    assert route(outbound_event()) == ("default.topic",)
    assert route(change_event()) == ("default.topic",)


def test_an_event_no_rule_matches_goes_to_the_default_topic() -> None:
    """The default topic comes last, after every rule."""
    route = router({"kind": "platform_event", "topics": ["pe"]})
    assert route(outbound_event()) == ("default.topic",)


def test_first_matching_rule_wins() -> None:
    """Rules are tried in order; a later rule that also matches is not used."""
    route = router(
        {"object": "Contact", "topics": ["first"]},
        {"kind": "outbound_message", "topics": ["second"]},
    )
    assert route(outbound_event("Contact")) == ("first",)
    assert route(outbound_event("Lead")) == ("second",)


def test_kind_condition_matches_each_kind() -> None:
    """kind selects outbound messages, platform events and change events apart."""
    route = router(
        {"kind": "outbound_message", "topics": ["om"]},
        {"kind": "platform_event", "topics": ["pe"]},
        {"kind": "change_event", "topics": ["cdc"]},
    )
    assert route(outbound_event()) == ("om",)
    assert route(platform_event()) == ("pe",)
    assert route(change_event()) == ("cdc",)


def test_object_globs_match_case_insensitively() -> None:
    """object takes globs and ignores case, as Salesforce API names do."""
    route = router({"object": ["*__c", "account"], "topics": ["custom"]})
    assert route(outbound_event("Invoice__c")) == ("custom",)
    assert route(change_event(object_name="Account")) == ("custom",)
    assert route(outbound_event("Contact")) == ("default.topic",)


def test_channel_glob_matches_platform_events_and_cdc_channels() -> None:
    """channel matches the platform event channel, and a CDC entity's /data/ channel."""
    route = router(
        {"channel": "/event/Low_*", "topics": ["ink"]},
        {"channel": "/data/*ChangeEvent", "topics": ["cdc"]},
    )
    assert route(platform_event()) == ("ink",)
    assert route(change_event(object_name="Account")) == ("cdc",)
    assert route(outbound_event()) == ("default.topic",)


def test_org_condition_accepts_15_character_ids() -> None:
    """An org written with 15 characters matches events of its 18-character id."""
    route = router({"org": om_payloads.ORG15, "topics": ["ours"]})
    assert route(outbound_event(org15=om_payloads.ORG15)) == ("ours",)
    assert route(outbound_event(org15=OTHER_ORG15)) == ("default.topic",)


def test_integration_condition_matches_the_connection_integration() -> None:
    """integration compares with the terapi integration of the event's connection."""
    route = router({"integration": "salesforce-sandbox", "topics": ["sandbox"]})
    event = outbound_event()
    sandbox = CloudEvent(
        **{field: getattr(event, field) for field in ("type", "id", "organization_id", "time", "key", "data")},
        connection=Connection("acme-sandbox", "salesforce-sandbox"),
        object=event.object,
    )
    assert route(sandbox) == ("sandbox",)
    assert route(event) == ("default.topic",)


def test_change_type_glob_matches_gap_events_only() -> None:
    """change_type = 'GAP_*' takes gap events and leaves ordinary changes to later rules."""
    route = router(
        {"change_type": "gap_*", "topics": ["gaps"]},
        {"kind": "change_event", "topics": ["changes"]},
    )
    assert route(change_event("GAP_UPDATE")) == ("gaps",)
    assert route(change_event("GAP_OVERFLOW")) == ("gaps",)
    assert route(change_event("UPDATE")) == ("changes",)


def test_all_conditions_of_a_rule_must_hold() -> None:
    """A rule with several conditions matches only events meeting every one."""
    route = router({"kind": "change_event", "object": "Account", "change_type": "DELETE", "topics": ["deletes"]})
    assert route(change_event("DELETE", "Account")) == ("deletes",)
    assert route(change_event("UPDATE", "Account")) == ("default.topic",)
    assert route(change_event("DELETE", "Contact")) == ("default.topic",)


# --- templating and fan-out -----------------------------------------------------------------


def test_templates_render_every_placeholder() -> None:
    """{kind} {object} {channel} {org} {integration} {connection} {change_type} come from the event."""
    route = router(
        {
            "kind": "change_event",
            "topics": ["sf.{kind}.{object}{channel}.{org}.{integration}.{connection}.{change_type}"],
        }
    )
    assert route(change_event("UPDATE", "Account")) == (
        f"sf.change_event.Account_data_AccountChangeEvent.{ORG}.salesforce.acme-prod.UPDATE",
    )


def test_channel_placeholder_renders_a_platform_event_channel_sanitized() -> None:
    """{channel} of a platform event is its /event/ channel, slashes turned into underscores."""
    route = router({"kind": "platform_event", "topics": ["sf{channel}", "pe.{channel}"]})
    assert route(platform_event()) == ("sf_event_Low_Ink__e", "pe._event_Low_Ink__e")


def test_channel_placeholder_renders_a_change_event_channel_sanitized() -> None:
    """{channel} of a CDC event is its entity's /data/ channel, the one the channel condition matches."""
    route = router({"channel": "/data/*", "topics": ["sf{channel}"]})
    assert route(change_event(object_name="Contact")) == ("sf_data_ContactChangeEvent",)
    assert route(change_event(object_name="Invoice__c")) == ("sf_data_Invoice__ChangeEvent",)


def test_a_rule_fans_out_to_every_topic_it_names_once() -> None:
    """Several topics all get the event; two templates rendering the same name give one topic."""
    route = router({"kind": "outbound_message", "topics": ["salesforce.{object}", "audit", "salesforce.Contact"]})
    assert route(outbound_event("Contact")) == ("salesforce.Contact", "audit")


def test_rendered_values_are_sanitized_to_kafka_characters() -> None:
    """Characters Kafka refuses in a placeholder's value become underscores."""
    route = router({"topics": ["conn.{connection}"]})
    event = outbound_event()
    odd = CloudEvent(
        **{field: getattr(event, field) for field in ("type", "id", "organization_id", "time", "key", "data")},
        connection=Connection("acme prod/ü:1", "salesforce"),
        object=event.object,
    )
    assert route(odd) == ("conn.acme_prod___1",)


def test_rendered_topics_are_cut_to_kafkas_length_limit() -> None:
    """A rendered topic longer than 249 characters is cut to 249."""
    route = router({"topics": ["p" * 240 + ".{connection}"]})
    event = outbound_event()
    long_connection = CloudEvent(
        **{field: getattr(event, field) for field in ("type", "id", "organization_id", "time", "key", "data")},
        connection=Connection("c" * 40, "salesforce"),
        object=event.object,
    )
    [topic] = route(long_connection)
    assert len(topic) == MAX_TOPIC_LENGTH and topic.startswith("p" * 240 + ".ccc")


def test_the_cache_stays_bounded() -> None:
    """Past CACHE_SIZE distinct combinations the router still answers and forgets the oldest."""
    route = router({"topics": ["c.{connection}"]})
    event = outbound_event()
    base = {field: getattr(event, field) for field in ("type", "id", "organization_id", "time", "key", "data")}
    for number in range(CACHE_SIZE + 10):
        routed = CloudEvent(**base, connection=Connection(f"c{number}", "salesforce"), object=event.object)
        assert route(routed) == (f"c.c{number}",)
    assert len(route._cache) == CACHE_SIZE


def test_static_topics_lists_fixed_topics_only() -> None:
    """The start-up topic check covers the default, quarantine and fixed rule topics."""
    settings = settings_with(
        [{"kind": "change_event", "topics": ["cdc.{object}", "cdc.all"]}],
        kafka_topic="events",
        kafka_quarantine_topic="quarantine",
    )
    assert static_topics(settings) == ["events", "quarantine", "cdc.all"]


# --- validation -----------------------------------------------------------------------------


def config_error(routes: list[dict[str, Any]]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        settings_with(routes)
    return caught.value.detail


def test_unknown_placeholder_is_an_error_naming_the_rule() -> None:
    """A placeholder outside the known seven is refused with the rule's index and the name."""
    detail = config_error([{"topics": ["ok"], "kind": "change_event"}, {"topics": ["sf.{tenant}"]}])
    assert detail.startswith("routes[1]") and "{tenant}" in detail


def test_format_specs_in_templates_are_refused() -> None:
    """{object:>10} or {object!r} are not templates a topic name can use."""
    assert "unknown placeholder" in config_error([{"topics": ["sf.{object!r}"]}])


def test_empty_topic_list_is_an_error() -> None:
    """A rule must name at least one topic."""
    assert config_error([{"kind": "change_event", "topics": []}]).startswith("routes[0].topics")


def test_empty_topic_name_is_an_error() -> None:
    """An empty string is not a topic."""
    assert "empty" in config_error([{"topics": ["  "]}])


def test_a_fixed_topic_with_illegal_characters_is_an_error() -> None:
    """Literal text of a template must already be legal for Kafka; it is not silently rewritten."""
    assert "Kafka refuses" in config_error([{"topics": ["sales force.{object}"]}])


def test_a_rule_after_a_catch_all_is_unreachable() -> None:
    """A rule without conditions takes every event, so any rule after it is an error."""
    detail = config_error([{"name": "all", "topics": ["all"]}, {"kind": "change_event", "topics": ["cdc"]}])
    assert detail == "routes[1] is unreachable: routes[0] ('all') before it matches every event"


def test_a_rule_shadowed_by_an_identical_earlier_rule_is_unreachable() -> None:
    """Two rules with the same conditions: the second can never win."""
    rule = {"kind": "outbound_message", "object": ["Account", "Contact"], "topics": ["a"]}
    assert config_error([rule, {**rule, "topics": ["b"]}]).startswith("routes[1] is unreachable")


def test_a_rule_narrower_than_an_earlier_glob_is_unreachable() -> None:
    """object 'Invoice__c' after object '*__c' (other conditions alike) is shadowed."""
    detail = config_error([{"object": "*__c", "topics": ["custom"]}, {"object": "Invoice__c", "topics": ["inv"]}])
    assert detail.startswith("routes[1] is unreachable")


def test_a_narrower_rule_before_a_broader_one_is_fine() -> None:
    """Specific rules first and general ones after is the intended order."""
    settings = settings_with(
        [
            {"object": "Invoice__c", "topics": ["inv"]},
            {"object": "*__c", "topics": ["custom"]},
            {"kind": "change_event", "change_type": "UPDATE", "topics": ["updates"]},
            {"kind": "change_event", "topics": ["cdc"]},
            {"topics": ["rest"]},
        ]
    )
    assert len(settings.routes) == 5


def test_a_change_type_rule_for_outbound_messages_is_unreachable() -> None:
    """change_type only exists on change events; with kind = outbound_message nothing matches."""
    detail = config_error([{"kind": "outbound_message", "change_type": "UPDATE", "topics": ["x"]}])
    assert detail.startswith("routes[0]: unreachable")


def test_an_unknown_change_type_is_an_error() -> None:
    """A misspelt change type would never match: refused, naming the known ones."""
    assert "UPDTE" in config_error([{"change_type": "UPDTE", "topics": ["x"]}])


def test_change_type_placeholder_needs_change_events_only() -> None:
    """{change_type} is refused in a rule that can match events without a change type."""
    assert "{change_type}" in config_error([{"kind": "outbound_message", "topics": ["x.{change_type}"]}])


def test_channel_placeholder_is_refused_where_outbound_messages_can_match() -> None:
    """{channel} is refused, naming the rule, in a rule that can match Outbound Messages (they have none)."""
    detail = config_error(
        [{"kind": "change_event", "topics": ["cdc"]}, {"object": "Contact", "topics": ["x{channel}"]}]
    )
    assert detail.startswith("routes[1]") and "{channel}" in detail and "Outbound Messages" in detail
    assert "{channel}" in config_error([{"kind": "outbound_message", "topics": ["x{channel}"]}])


def test_channel_placeholder_is_accepted_where_only_channel_events_match() -> None:
    """{channel} loads in rules limited to platform or change events, by kind or by a channel condition."""
    settings = settings_with(
        [
            {"kind": "change_event", "topics": ["by-kind{channel}"]},
            {"channel": "/event/*", "topics": ["by-channel{channel}"]},
        ]
    )
    assert [rule.topics for rule in settings.routes] == [["by-kind{channel}"], ["by-channel{channel}"]]


def test_an_invalid_org_id_is_an_error() -> None:
    """org must be a 15- or 18-character org id."""
    assert config_error([{"org": "00Dnope", "topics": ["x"]}]).startswith("routes[0].org")


def test_an_unknown_condition_is_an_error_listing_the_known_ones() -> None:
    """A misspelt key (objects for object) is refused rather than ignored."""
    detail = config_error([{"objects": "Account", "topics": ["x"]}])
    assert detail.startswith("routes[0].objects: unknown condition") and "object" in detail


def test_rules_load_from_the_toml_file(tmp_path: Path) -> None:
    """[[routes]] tables in the configuration file become the rules, in file order."""
    config = tmp_path / "receiver.toml"
    config.write_text(
        '[[routes]]\nname = "cdc"\nkind = "change_event"\ntopics = ["salesforce.cdc.{object}"]\n\n'
        '[[routes]]\norg = "00D1I000003qqqE"\ntopics = ["sf.{org}.{kind}", "audit"]\n'
    )
    settings = load_settings(config)
    assert [rule.name for rule in settings.routes] == ["cdc", None]
    assert settings.routes[1].org == [ORG]
    route = build_router(settings)
    assert route(outbound_event()) == (f"sf.{ORG}.outbound_message", "audit")


def test_a_bad_rule_in_the_toml_file_stops_serve(tmp_path: Path) -> None:
    """sf-receiver serve exits 2 with one line naming the rule."""
    from click.testing import CliRunner

    from receiver.cli import main

    config = tmp_path / "receiver.toml"
    config.write_text('[[routes]]\ntopics = ["a"]\n\n[[routes]]\nkind = "change_event"\ntopics = ["b"]\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "routes[1] is unreachable" in result.output
