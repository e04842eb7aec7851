from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskhub.apikeys.models import ALL_SCOPES, DEFAULT_POOL
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
        parser.add_argument(
            "--pool",
            default=DEFAULT_POOL,
            help="Execution pool (tenant): units registered with this key claim only tasks of keys in the "
            f"same pool (default: {DEFAULT_POOL!r}, the one pool of a single-tenant hub)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, secret = api_key_create(name=options["name"], scopes=options["scopes"], pool=options["pool"])
        except InvalidInput as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Created API key {key.name!r} with scopes {', '.join(key.scopes)} in pool {key.pool!r}.")
        self.stdout.write("Store it now: it is shown only once. Send it as 'Authorization: Bearer <key>'.")
        self.stdout.write(secret)
