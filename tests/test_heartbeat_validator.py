"""The lean heartbeat validator (`plain_heartbeat`) cannot drift from its serializer: the field sets
are checked at import, and for any body it either answers exactly what the serializer validates or
steps aside (None), always when the serializer refuses, so the 400 names the field as before."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from taskhub.api.serializers import heartbeat
from taskhub.api.serializers.heartbeat import HeartbeatSerializer, HeartbeatTaskSerializer, plain_heartbeat
from taskhub.api.validation import validated

EDGES = [0, 1, 5, 100, 101, 1_000_000, 1_000_001, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -1]
ints = st.one_of(st.integers(min_value=-3, max_value=8), st.sampled_from(EDGES), st.integers())
texts = st.one_of(
    st.text(max_size=6), st.sampled_from(["3f2a9c1d0e4b", "a" * 64, "a" * 65, " padded ", "tail\n", "two words", "1"])
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), texts)
task = st.one_of(
    st.fixed_dictionaries({}, optional={"id": ints, "attempt": ints, "progress": ints, "extra": scalars}),
    st.fixed_dictionaries({}, optional={"id": scalars, "attempt": scalars, "progress": scalars}),
    scalars,
)
metadata = st.one_of(
    scalars, st.dictionaries(texts, st.one_of(scalars, st.lists(scalars, max_size=2))), st.lists(scalars)
)
body = st.fixed_dictionaries(
    {},
    optional={
        "currentLoad": st.one_of(ints, scalars),
        "metadata": metadata,
        "tasks": st.one_of(st.lists(task, max_size=5), scalars, st.dictionaries(texts, scalars, max_size=1)),
        "instanceId": texts | scalars,
        "stopping": scalars,
        "unknown": scalars,
    },
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(body, scalars, st.lists(scalars, max_size=2)))
def test_for_any_body_plain_is_none_or_the_serializers_answer_and_none_whenever_it_refuses(data: Any) -> None:
    plain = plain_heartbeat(data)
    try:
        expected = validated(HeartbeatSerializer, data)
    except serializers.ValidationError:
        assert plain is None, (data, plain)
    else:
        assert plain is None or plain == expected, (data, plain, expected)


def test_the_fields_plain_reads_are_the_serializers() -> None:
    heartbeat.check_plain_heartbeat()  # as at import
    assert set(heartbeat.PLAIN_FIELDS) == set(HeartbeatSerializer._declared_fields)
    assert set(heartbeat.PLAIN_TASK_FIELDS) == set(HeartbeatTaskSerializer._declared_fields)


def test_a_field_the_serializer_and_plain_disagree_on_stops_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        added = {**HeartbeatSerializer._declared_fields, "cpu": serializers.FloatField(required=False)}
        patch.setattr(HeartbeatSerializer, "_declared_fields", added)
        with pytest.raises(ImproperlyConfigured, match="drifted from its serializer: HeartbeatSerializer"):
            heartbeat.check_plain_heartbeat()
    with monkeypatch.context() as patch:
        now_required = {
            **HeartbeatTaskSerializer._declared_fields,
            "progress": serializers.IntegerField(min_value=0, max_value=100),
        }
        patch.setattr(HeartbeatTaskSerializer, "_declared_fields", now_required)
        with pytest.raises(ImproperlyConfigured, match="HeartbeatTaskSerializer"):
            heartbeat.check_plain_heartbeat()
    heartbeat.check_plain_heartbeat()
