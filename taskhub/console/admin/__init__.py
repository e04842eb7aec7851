"""The console's admin pages: tasks, execution units, API keys and webhooks, registered on the console site."""

from taskhub.console.admin import apikeys, queues, schedules, tasks, units, webhooks

__all__ = ["apikeys", "queues", "schedules", "tasks", "units", "webhooks"]
