"""Each org's share of the requests being published (receiver.limits.OrgSlots)."""

from __future__ import annotations

import pytest

from receiver.errors import OrgOverloaded
from receiver.limits import OrgSlots

ORG_A = "00D1I000003qqqEUAQ"
ORG_B = "00Dxx0000001gPFEAY"


def test_an_org_past_its_share_is_refused_and_others_are_not() -> None:
    slots = OrgSlots(2, retry_after_s=3)
    with slots.hold({ORG_A}), slots.hold({ORG_A}):
        with pytest.raises(OrgOverloaded) as refused, slots.hold({ORG_A}):
            pass
        assert (refused.value.status, refused.value.retry_after_s) == (429, 3)
        with slots.hold({ORG_B}):
            assert slots.held(ORG_B) == 1
        assert slots.held(ORG_A) == 2
    assert slots.held(ORG_A) == 0


def test_a_request_of_several_orgs_needs_a_slot_of_each_and_takes_none_when_refused() -> None:
    slots = OrgSlots(1)
    with slots.hold({ORG_B}):
        with pytest.raises(OrgOverloaded), slots.hold({ORG_A, ORG_B}):
            pass
        assert slots.held(ORG_A) == 0


def test_slots_come_back_when_the_publish_fails() -> None:
    slots = OrgSlots(1)
    with pytest.raises(RuntimeError), slots.hold({ORG_A}):
        raise RuntimeError("publish failed")
    with slots.hold({ORG_A}):
        assert slots.held(ORG_A) == 1
