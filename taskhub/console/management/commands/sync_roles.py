from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from taskhub.console.roles import sync_roles


class Command(BaseCommand):
    help = "Create the operators/viewers groups and set their permissions to the console's list."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            counts = sync_roles()
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        for name, n in counts.items():
            self.stdout.write(f"group {name}: {n} permissions")
