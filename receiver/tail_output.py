"""How ``sf-receiver tail`` prints an event: for a person (rich), or one JSON object per line.

The pretty form puts what a person scans for first (time, kind, object, record, what
changed), then the identifiers, then the fields. rich colours it on a terminal and prints
plain text into a pipe or file; ``--json`` is the form for other programs.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

import orjson
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.text import Text

from receiver.event import KINDS
from receiver.tail import TailedEvent

KIND_STYLES = {"outbound_message": "bold cyan", "platform_event": "bold yellow", "change_event": "bold magenta"}


class Printer(Protocol):
    def show(self, event: TailedEvent) -> None:
        """Print one event; raises ``BrokenPipeError`` when the reader has gone."""


class JsonPrinter:
    """One CloudEvents structured-mode JSON object per line, flushed so ``--follow`` streams."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    def show(self, event: TailedEvent) -> None:
        self._stream.write(orjson.dumps(event.structured).decode() + "\n")
        self._stream.flush()


class PrettyPrinter:
    """Three lines per event: summary, identifiers, fields."""

    def __init__(self, console: Console | None = None) -> None:
        # soft_wrap: rich would otherwise fold long lines at 80 columns when not on a terminal.
        self._console = console or Console(soft_wrap=True, highlight=False)
        self._highlight_json = JSONHighlighter()

    def show(self, event: TailedEvent) -> None:
        attributes = event.structured
        data = attributes.get("data")
        kind = KINDS.get(str(attributes.get("type")))
        if kind is None or not isinstance(data, dict):
            # Not one of our events (a quarantine record, another producer's message).
            line = Text(event.position or "", style="dim")
            line.append(" ")
            line.append_text(self._json(attributes.get("data", attributes)))
            self._console.print(line)
            return
        summary = Text.assemble(
            (str(attributes.get("time", "")), "dim"),
            "  ",
            (kind, KIND_STYLES[kind]),
            "  ",
            (str(attributes.get("sfobject", "")), "bold"),
        )
        subject = attributes.get("subject")
        if subject:
            summary.append(f"  {subject}", style="green")
        detail = _detail(kind, data)
        if detail:
            summary.append(f"  {detail}")
        identifiers = [
            f"id {attributes.get('id')}",
            f"org {attributes.get('sforgid')}",
            f"connection {attributes.get('terapiconnectionid')} ({attributes.get('terapiintegration')})",
        ]
        if event.position:
            identifiers.append(event.position)
        self._console.print(summary)
        self._console.print(Text("  " + " · ".join(identifiers), style="dim"))
        fields = Text("  ")
        fields.append_text(self._json(data.get("fields", {})))
        self._console.print(fields)

    def _json(self, value: Any) -> Text:
        return self._highlight_json(Text(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()))


def _detail(kind: str, data: dict[str, Any]) -> str:
    """What happened, in a few words: the change type and fields, the channel, the action."""
    if kind == "change_event":
        change = data.get("change_event") or {}
        changed = change.get("changed_fields") or []
        words = str(change.get("change_type", ""))
        if changed:
            label = "changed" if change.get("changed_fields_encoding") != "bitmap" else "changed (bitmap)"
            words += f"  {label}: {', '.join(str(name) for name in changed)}"
        return words
    if kind == "platform_event":
        section = data.get("platform_event") or {}
        return f"{section.get('channel', '')} replay {section.get('replay_id')}"
    section = data.get("outbound_message") or {}
    return f"action {section.get('action_id', '')}"
