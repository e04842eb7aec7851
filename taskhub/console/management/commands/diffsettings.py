"""Django's `diffsettings`, with secrets hidden as on the technical error pages: a setting whose
name says KEY, SECRET, PASS, TOKEN, URL, LOCATION or DSN shows as stars, and `user:password@` is
scrubbed from every other value (taskhub.base.secrets)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from django.core.management.commands import diffsettings
from django.views.debug import get_default_exception_reporter_filter


def _cleansed(module: ModuleType, omittable: Any = None) -> dict[str, str]:
    keep = omittable or (lambda k: k.startswith("_") or not k.isupper())
    shown = get_default_exception_reporter_filter()
    return {k: repr(shown.cleanse_setting(k, getattr(module, k))) for k in dir(module) if not keep(k)}


class Command(diffsettings.Command):
    def handle(self, **options: Any) -> str:
        original = diffsettings.module_to_dict
        diffsettings.module_to_dict = _cleansed  # type: ignore[assignment]
        try:
            return str(super().handle(**options))
        finally:
            diffsettings.module_to_dict = original
