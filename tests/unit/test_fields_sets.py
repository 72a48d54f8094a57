"""Equal pydantic fields sets are one object (api/fields_sets.py), and sharing them changes nothing a model says."""

from __future__ import annotations

import datetime

import pydantic
import pytest

from avatar_operator.api import conditions, fields_sets
from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.timezone.utc)
WIRE = {
    "phase": "Starting",
    "observedGeneration": 1,
    "conditions": [
        {"type": t, "status": "True", "reason": "Valid", "message": "ok", "lastTransitionTime": "2026-12-02T12:00:00Z", "observedGeneration": 1}
        for t in ("Accepted", "CredentialsReady", "CloudRequestAccepted")
    ],
}


def test_statuses_read_apart_share_their_fields_sets() -> None:
    a, b = status_mod.from_wire(WIRE), status_mod.from_wire(WIRE)
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    sets = {id(c.__pydantic_fields_set__) for s in (a, b) for c in s.conditions or ()}
    assert len(sets) == 1
    assert a.model_fields_set == {"phase", "observed_generation", "conditions"}


def test_a_copy_with_an_update_leaves_the_original_set_alone() -> None:
    a, b = status_mod.from_wire(WIRE), status_mod.from_wire(WIRE)
    c = a.model_copy(update={"operator": "op-1"})
    assert c.model_fields_set == {"phase", "observed_generation", "conditions", "operator"}
    assert a.model_fields_set == b.model_fields_set == {"phase", "observed_generation", "conditions"}
    # The copy's set is shared in turn, with the next status that has the same fields.
    d = status_mod.from_wire({**WIRE, "operator": "op-2"})
    assert c.__pydantic_fields_set__ is d.__pydantic_fields_set__


def test_assignment_is_refused_before_it_reaches_the_shared_set() -> None:
    a, b = status_mod.from_wire(WIRE), status_mod.from_wire(WIRE)
    with pytest.raises(pydantic.ValidationError):
        a.operator = "op-1"  # type: ignore[misc]
    assert b.model_fields_set == {"phase", "observed_generation", "conditions"}


def test_conditions_set_by_the_worker_share_too_and_the_wire_is_unchanged() -> None:
    status = status_mod.from_wire(WIRE)
    change = conditions.Change(status_mod.ConditionType.READY, False, status_mod.Reason.WAITING_FOR_AVATAR, "not yet")
    one = conditions.set_condition(status.conditions or (), change, 1, NOW)
    two = conditions.set_condition(status.conditions or (), change, 1, NOW)
    assert one[-1].__pydantic_fields_set__ is two[-1].__pydantic_fields_set__
    assert status_mod.to_wire(status) == WIRE


def test_a_spec_shares_its_nested_models_sets() -> None:
    raw = {"room": "r", "agentIdentity": "agent", "avatarImage": "https://example.invalid/a.jpg", "avatarParticipant": {"identity": "a", "name": "A"}}
    a, b = spec_mod.AvatarSessionSpec.model_validate(raw), spec_mod.AvatarSessionSpec.model_validate(raw)
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.avatar_participant is not None and b.avatar_participant is not None
    assert a.avatar_participant.__pydantic_fields_set__ is b.avatar_participant.__pydantic_fields_set__


def test_the_shared_sets_stop_growing_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fields_sets, "_SHARED", {})
    monkeypatch.setattr(fields_sets, "MAX_SHARED", 1)
    a = status_mod.from_wire({"phase": "Pending"})
    b = status_mod.from_wire({"operator": "x"})
    c = status_mod.from_wire({"operator": "x"})
    assert len(fields_sets._SHARED) == 1
    assert b.__pydantic_fields_set__ is not c.__pydantic_fields_set__  # past the cap: pydantic's own
    assert a.model_fields_set == {"phase"}

