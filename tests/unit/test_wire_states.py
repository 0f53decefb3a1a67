"""State enums are their wire strings, so JSON and old status files read the same."""

from __future__ import annotations

import json
from enum import StrEnum

import msgspec
import pytest

from gpufleet.wire import states

_ENUMS: list[type[StrEnum]] = [
    states.WorkerState,
    states.RouterState,
    states.UpstreamState,
    states.MemberRole,
    states.MemberState,
    states.MemberOutcome,
    states.FleetPhase,
]


@pytest.mark.parametrize("enum", _ENUMS, ids=lambda e: e.__name__)
def test_members_are_their_strings_on_the_wire(enum: type[StrEnum]) -> None:
    for member in enum:
        assert member == member.value
        assert json.dumps(member) == json.dumps(member.value)
        assert msgspec.json.encode(member) == json.dumps(member.value).encode()
        assert msgspec.json.decode(json.dumps(member.value), type=enum) is member


def test_the_strings_in_use_before_the_enums() -> None:
    # The bare strings these enums replace (worker /stats, router /stats, the supervisor).
    assert set(states.WorkerState) == {"loading", "ready", "stalled", "draining", "failed"}
    assert set(states.UpstreamState) == {"starting", "ready", "ejected", "draining", "removed"}
    assert set(states.MemberRole) == {"worker", "router"}
    assert {"ready", "stopping", "exited", "failed", "timeout", "unresponsive"} == set(
        states.MemberOutcome
    )


def test_an_unknown_state_does_not_decode() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'"sleeping"', type=states.WorkerState)
