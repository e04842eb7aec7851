"""The unit state table (units.states): the moves and what may cause each, the one definition of an
alive unit and of one that claims, and the table enforced where unit statuses are written."""

from __future__ import annotations

import pytest
from django.utils import timezone

from tests import factories
from units.claim import claim_tasks
from units.states import ALIVE, CLAIMING, MOVES, Cause, UnitStatus, can_move, check_move

U = UnitStatus
pytestmark = pytest.mark.django_db


def test_alive_and_claiming_are_defined_once_and_claiming_units_are_alive() -> None:
    assert {U.ONLINE, U.BUSY, U.MAINTENANCE} == ALIVE and {U.ONLINE, U.BUSY} == CLAIMING
    assert CLAIMING < ALIVE and U.OFFLINE not in ALIVE


def test_only_a_registration_or_a_resume_ends_a_drain() -> None:
    ends = {cause for cause, moves in MOVES.items() if any(s == U.MAINTENANCE and t in CLAIMING for s, t in moves)}
    assert ends == {Cause.REGISTER, Cause.RESUME}
    with pytest.raises(AssertionError, match="heartbeat may not move a unit from MAINTENANCE to ONLINE"):
        check_move(U.MAINTENANCE, U.ONLINE, Cause.HEARTBEAT)


def test_the_sweeper_takes_only_alive_units_offline_and_a_claim_moves_only_between_claiming_states() -> None:
    assert {s for s, t in MOVES[Cause.SWEEP]} == ALIVE and {t for s, t in MOVES[Cause.SWEEP]} == {U.OFFLINE}
    assert MOVES[Cause.CLAIM] == {(U.ONLINE, U.BUSY), (U.BUSY, U.ONLINE)}
    assert all(can_move(s, s, cause) for s in U.values for cause in Cause.values)  # unchanged is no move


def test_a_claim_that_fills_a_unit_makes_it_busy_through_the_table() -> None:
    unit = factories.unit(capacity=1)
    factories.task()
    claim_tasks(unit.pk, 1, now=timezone.now())
    unit.refresh_from_db()
    assert unit.status == U.BUSY and can_move(U.ONLINE, U.BUSY, Cause.CLAIM)
