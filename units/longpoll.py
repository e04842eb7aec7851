"""What a long-poll claim (taskhub.api.views.longpoll) asks of the units package: the claim again
after a doorbell rang (the same claim, units.claim, after checking that the caller is still the
unit's live instance), and the safety-net probe of the doorbell (whose "nothing claimable"
lets a long poll skip its first claim, see taskhub.api.views.longpoll)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from taskhub.base import doorbell
from tasks.models import QueueSettings, Task
from tasks.selectors import next_claimable_at
from units.claim import claim_tasks_with_status
from units.lifecycle import UnitReplaced
from units.models import ExecutionUnit


@dataclass(frozen=True)
class ClaimWait:
    """A claim that found nothing and may wait: for whom, for what, how long. `token_hash` and
    `instance_id` are the unit row as the request's authentication read it."""

    unit_id: str
    unit_type: str
    max_tasks: int
    seconds: float
    token_hash: str
    instance_id: str

    @property
    def keys(self) -> list[str]:
        return [doorbell.type_key(self.unit_type), doorbell.unit_key(self.unit_id)]


def claim_again(wait: ClaimWait, *, now: datetime) -> tuple[list[Task], str] | None:
    """The claim, once more, for a waiting request; None (end the wait, claim nothing) if the unit
    was deleted, re-registered (a new token) or taken over by another instance meanwhile."""
    current = ExecutionUnit.objects.filter(pk=wait.unit_id).values_list("token_hash", "instance_id").first()
    if current != (wait.token_hash, wait.instance_id):
        return None
    try:
        # The instance is checked again under the claim's row lock: a takeover between the read
        # above and the claim must not hand the replaced process a task.
        return claim_tasks_with_status(wait.unit_id, wait.max_tasks, now=now, instance_id=wait.instance_id)
    except UnitReplaced:
        return None


def probe(task_type: str) -> doorbell.Probed:
    """The doorbell's safety net for `task_type`: when its next PENDING task is claimable. "None
    claimable now" stands for a claim (a long poll may skip its first claim on it) only for a queue
    without settings: a claim of a queue with settings says more than "nothing" (paused, limits:
    units.claim), so those always run. Two statements, once a second per type with waiters."""
    return doorbell.Probed(
        next_claimable_at(task_type), stands_for_claim=not QueueSettings.objects.filter(task_type=task_type).exists()
    )
