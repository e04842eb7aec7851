from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskhub.apikeys.models import ALL_SCOPES
from taskhub.apikeys.services import api_key_create
from taskhub.base.errors import InvalidInput


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, alone on the last line of the output."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="A unique name for the key (who or what uses it).")
        parser.add_argument(
            "--scopes",
            default="tasks:read,tasks:write",
            help=f"Comma-separated scopes from: {', '.join(ALL_SCOPES)} (default: tasks:read,tasks:write)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, secret = api_key_create(name=options["name"], scopes=options["scopes"])
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Created API key {key.name!r} with scopes {', '.join(key.scopes)}.")
        self.stdout.write("Store it now: it is shown only once. Send it as 'Authorization: Bearer <key>'.")
        self.stdout.write(secret)
