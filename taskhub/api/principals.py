"""Who is calling: an operator (Django staff user), an API client (key) or an execution unit.

A Principal is the `Viewer` the selectors take (taskhub.base.viewer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rest_framework.request import Request

from taskhub.apikeys.models import ALL_SCOPES
from taskhub.base.actors import Actor

# API scope -> the permission a staff user needs for it (see taskhub.console.roles).
OPERATOR_SCOPE_PERMISSIONS = {
    "tasks:read": "tasks.view_task",
    "tasks:write": "console.operate_tasks",
    "units:read": "units.view_executionunit",
    "units:write": "console.operate_units",
    "units:register": "console.operate_units",
    # Queues: who reads tasks reads their queues; who operates tasks steers them.
    "queues:read": "tasks.view_task",
    "queues:write": "console.operate_tasks",
}
assert set(OPERATOR_SCOPE_PERMISSIONS) == set(ALL_SCOPES)

if TYPE_CHECKING:
    from taskhub.apikeys.models import ApiKey
    from units.models import ExecutionUnit


@dataclass(frozen=True)
class Principal:
    kind: str  # "operator" | "client" | "unit"
    actor: Actor
    scopes: frozenset[str] = field(default_factory=frozenset)
    api_key: ApiKey | None = None
    unit: ExecutionUnit | None = None
    user: Any = None

    is_authenticated = True
    is_anonymous = False

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def is_unit(self) -> bool:
        return self.kind == "unit"

    @property
    def unit_id(self) -> str | None:
        return None if self.unit is None else str(self.unit.pk)

    @property
    def api_key_id(self) -> int | None:
        return None if self.api_key is None else int(self.api_key.pk)

    @property
    def throttle_ident(self) -> str:
        if self.unit is not None:
            return f"unit:{self.unit.pk}"
        if self.api_key is not None:
            return f"key:{self.api_key.pk}"
        return f"user:{getattr(self.user, 'pk', '')}"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def for_key(cls, key: ApiKey) -> Principal:
        return cls("client", Actor.api_key(key.name), frozenset(key.scopes), api_key=key)

    @classmethod
    def for_unit(cls, unit: ExecutionUnit) -> Principal:
        return cls("unit", Actor.unit(unit.pk), frozenset(), unit=unit)

    @classmethod
    def for_operator(cls, user: Any) -> Principal:
        """A staff user's scopes follow the console roles: viewers read, operators act."""
        granted = {scope for scope, perm in OPERATOR_SCOPE_PERMISSIONS.items() if user.has_perm(perm)}
        return cls("operator", Actor.operator(user.get_username()), frozenset(granted), user=user)


def principal_of(request: Request) -> Principal:
    principal = request.user
    assert isinstance(principal, Principal)  # guaranteed by HasScope
    return principal
