"""Who made a change: every history row names its actor."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class ActorType(models.TextChoices):
    OPERATOR = "operator"
    API_KEY = "api_key"
    UNIT = "unit"
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    type: str
    label: str
    unit_id: str | None = None

    @property
    def is_system(self) -> bool:
        return self.type == ActorType.SYSTEM

    @classmethod
    def system(cls, job: str) -> Actor:
        return cls(ActorType.SYSTEM, f"job:{job}")

    @classmethod
    def operator(cls, username: str) -> Actor:
        return cls(ActorType.OPERATOR, f"user:{username}")

    @classmethod
    def api_key(cls, name: str) -> Actor:
        return cls(ActorType.API_KEY, f"key:{name}")

    @classmethod
    def unit(cls, unit_id: str) -> Actor:
        return cls(ActorType.UNIT, f"unit:{unit_id}", unit_id)
