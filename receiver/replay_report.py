"""What replay shows a person or a script: progress while it runs, then a summary.

Progress goes to stderr: a rich progress bar on a terminal, one plain line per item otherwise
(a log keeps what happened to each item). The summary goes to stdout: a table, or with
``--json`` one JSON document for scripts. A dry run also prints, per item, what would be sent.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from receiver.replay import Summary
from receiver.replay_items import ReplayItem, SkippedItem
from receiver.replay_targets import ReplayResult, Verdict


class ReplayReport:
    def __init__(
        self,
        summary: Summary,
        *,
        as_json: bool,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.summary = summary
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.plans: list[dict[str, Any]] = []
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.stderr.isatty():
            # The sources are streamed (a topic has no end to count to): the bar pulses while
            # the count of items done and their verdicts grow beside it.
            self._progress = Progress(
                SpinnerColumn(),
                BarColumn(),
                TextColumn("[bold]replay[/bold] {task.completed} items"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(file=self.stderr),
                transient=True,
            )

    def __enter__(self) -> ReplayReport:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("", total=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_result(self, item: ReplayItem, result: ReplayResult) -> None:
        if result.verdict is Verdict.VALID:
            self._plan(item, result)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=self._tally())
            return
        reason = f" {result.reason}" if result.reason else ""
        org = item.organization_id or "-"
        self.stderr.write(f"{result.verdict.value}{reason} {item.kind} {item.integration} {org} {item.origin}\n")

    def on_skip(self, item: SkippedItem) -> None:
        if self._progress is None:
            self.stderr.write(f"skipped {item.reason} {item.origin}\n")

    def _tally(self) -> str:
        s = self.summary
        rejected, failed = sum(s.rejected.values()), sum(s.failed.values())
        if s.dry_run:
            return f"valid {s.valid}  rejected {rejected}  failed {failed}"
        return f"acked {s.acked}  duplicates {s.duplicates}  rejected {rejected}  failed {failed}"

    def _plan(self, item: ReplayItem, result: ReplayResult) -> None:
        plan = {
            "item": item.item_id,
            "origin": item.origin,
            "kind": item.kind,
            "integration": item.integration,
            "organization_id": item.organization_id,
            **result.plan,
        }
        if self.as_json:
            self.plans.append(plan)
            return
        events = ", ".join(event["id"] for event in result.plan.get("events", []))
        request = result.plan.get("request")
        where = f"POST {request['url']}" if request and "url" in request else "publish"
        self.stdout.write(f"would send {item.origin}: {where} ({item.kind}, events: {events})\n")

    def print_summary(self) -> None:
        if self.as_json:
            document = self.summary.as_dict()
            if self.summary.dry_run:
                document["plan"] = self.plans
            self.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
            return
        Console(file=self.stdout).print(summary_table(self.summary))


def summary_table(summary: Summary) -> Table:
    table = Table(title="replay (dry run)" if summary.dry_run else "replay", show_header=True)
    table.add_column("outcome")
    table.add_column("items", justify="right")
    rows: list[tuple[str, int]] = []
    if summary.dry_run:
        rows.append(("valid (would be sent)", summary.valid))
    else:
        rows += [("sent", summary.sent), ("acked", summary.acked), ("duplicates", summary.duplicates)]
    rows += [(f"rejected: {reason}", count) for reason, count in sorted(summary.rejected.items())]
    rows += [(f"failed: {reason}", count) for reason, count in sorted(summary.failed.items())]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(summary.skipped.items())]
    rows += [("filtered out", summary.filtered_out), ("already done (checkpoint)", summary.already_done)]
    if not summary.dry_run:
        # An Outbound Message Ack does not count events: these cover JSON answers and --publish.
        rows += [("events published", summary.events_accepted), ("events already published", summary.event_duplicates)]
    for name, count in rows:
        table.add_row(name, str(count))
    if summary.interrupted:
        table.caption = "interrupted: resume with the same --checkpoint"
    return table
