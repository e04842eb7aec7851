"""Who is looking, as the selectors need it: the API's Principal (and anything else with these
attributes) satisfies it, so the selectors below the interfaces never import the API."""

from __future__ import annotations

from typing import Protocol


class Viewer(Protocol):
    @property
    def is_operator(self) -> bool: ...

    @property
    def unit_id(self) -> str | None:
        """The unit whose token this is (None for an operator or an API key)."""

    @property
    def api_key_id(self) -> int | None:
        """The API key calling (None for an operator or a unit)."""


class OperatorViewer:
    """An operator seen by the selectors and services (the console's actions, jobs): sees everything."""

    is_operator = True
    unit_id: str | None = None
    api_key_id: int | None = None


OPERATOR = OperatorViewer()
