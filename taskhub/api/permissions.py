from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from taskhub.api.principals import Principal


def view_action(request: Request, view: Any) -> str:
    return getattr(view, "action", None) or (request.method or "").lower()


class HasScope(BasePermission):
    """Views declare `required_scopes` ({action: scope}) and `unit_actions` (what a unit token
    may call). Object-level rules (a unit acts only for itself and its leased tasks, a client sees
    only its own rows) live in the selectors and services the views call."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, Principal):
            raise NotAuthenticated("Authentication required: send 'Authorization: Bearer <key>'")
        if hasattr(view, "action_map") and getattr(view, "action", None) is None:
            return True  # a method this route does not have: DRF answers 405 next
        action = view_action(request, view)
        if principal.is_unit:
            if action in getattr(view, "unit_actions", ()):
                return True
            raise PermissionDenied("A unit token cannot call this operation; use an API key")
        scope = getattr(view, "required_scopes", {}).get(action)
        if scope is None:
            raise PermissionDenied("Only an execution unit's own token can call this operation")
        if not principal.has_scope(scope):
            raise PermissionDenied(f"This API key lacks the scope {scope}")
        return True
