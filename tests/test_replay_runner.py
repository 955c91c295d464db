"""The replay runner's own duties, whatever the target: an item's failure stays that item's,
a dry run leaves the checkpoint alone, and only requests that went out count as sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from receiver.processing import EVENTS, OUTBOUND
from receiver.replay import Replayer, ReplayOptions, Summary
from receiver.replay_items import ReplayFilter, ReplayItem, SkippedItem
from receiver.replay_targets import HttpTarget, ReplayResult, Verdict
from tests.conftest import SettingsFactory
from tests.processes import free_port


def item(number: int, **fields: object) -> ReplayItem:
    values: dict[str, object] = {
        "item_id": f"item-{number}",
        "origin": f"test:{number}",
        "kind": OUTBOUND,
        "integration": "salesforce",
        "body": b"<x/>",
    }
    values.update(fields)
    return ReplayItem(**values)  # type: ignore[arg-type]


async def items_of(*items: ReplayItem) -> AsyncIterator[ReplayItem | SkippedItem]:
    for each in items:
        yield each


class BrokenForOne:
    """A target that raises (a bug, an unsendable recording) for one item and acks the rest."""

    def __init__(self, broken_id: str) -> None:
        self.broken_id = broken_id
        self.seen: list[str] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, replay_item: ReplayItem) -> ReplayResult:
        self.seen.append(replay_item.item_id)
        if replay_item.item_id == self.broken_id:
            raise UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range(128)")
        return ReplayResult(Verdict.ACKED)


async def test_an_item_whose_send_raises_fails_alone_and_the_run_ends() -> None:
    """30 items, one concurrency slot, the third one raising: the others are all sent, that one
    is failed with the error's type, and the run ends (it used to hang on a full queue)."""
    target = BrokenForOne("item-2")
    summary = Summary()
    items = [item(number) for number in range(30)]
    run = Replayer(ReplayFilter(), target, ReplayOptions(concurrency=1), summary).run(items_of(*items))
    await asyncio.wait_for(run, 10)
    assert target.seen == [f"item-{number}" for number in range(30)]
    assert (summary.acked, summary.failed) == (29, {"error:UnicodeEncodeError": 1})
    assert not summary.ok


async def test_a_recorded_header_that_cannot_be_sent_fails_that_item(make_settings: SettingsFactory) -> None:
    """A recording whose X-Salesforce-Org-Id is not ASCII cannot become an HTTP request: that
    item fails, counted as not sent; the run reports it instead of dying with a traceback."""
    settings = make_settings(event_secrets="whsec_dGVzdC1zZWNyZXQtZm9yLXRoZS1yZXBsYXktcnVubmVy")
    target = HttpTarget(f"http://127.0.0.1:{free_port()}", settings, attempts=1)
    summary = Summary()
    broken = item(1, kind=EVENTS, body=b"{}", headers={"x-salesforce-org-id": "00Dé"})
    await asyncio.wait_for(
        Replayer(ReplayFilter(), target, ReplayOptions(), summary).run(items_of(broken)),
        10,
    )
    assert summary.failed == {"error:UnicodeEncodeError": 1}
    assert summary.sent == 0


class ValidOnly:
    """A dry run's target: every item is valid, nothing is sent."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, replay_item: ReplayItem) -> ReplayResult:
        return ReplayResult(Verdict.VALID)


async def test_a_dry_run_leaves_the_checkpoint_for_the_real_run(tmp_path: Path) -> None:
    """--dry-run --checkpoint F records nothing in F: the real run with F then sends every item."""
    checkpoint = tmp_path / "replay.checkpoint"
    items = [item(number) for number in range(5)]
    dry = Summary(dry_run=True)
    await Replayer(ReplayFilter(), ValidOnly(), ReplayOptions(checkpoint=checkpoint), dry).run(items_of(*items))
    assert dry.valid == 5
    target = BrokenForOne("none")
    real = Summary()
    await Replayer(ReplayFilter(), target, ReplayOptions(checkpoint=checkpoint), real).run(items_of(*items))
    assert (real.acked, real.already_done) == (5, 0)


async def test_an_item_that_could_not_be_signed_is_not_counted_as_sent(make_settings: SettingsFactory) -> None:
    """Without a secret to sign with, nothing goes out: failed as no_event_secret, sent 0."""
    target = HttpTarget(f"http://127.0.0.1:{free_port()}", make_settings(), attempts=1)
    summary = Summary()
    unsigned = item(1, kind=EVENTS, body=b"{}")
    await Replayer(ReplayFilter(), target, ReplayOptions(), summary).run(items_of(unsigned))
    assert (summary.sent, summary.failed) == (0, {"no_event_secret": 1})
