"""The console's admin pages: tasks, execution units and API keys, registered on the console site."""

from taskhub.console.admin import apikeys, queues, schedules, tasks, units

__all__ = ["apikeys", "queues", "schedules", "tasks", "units"]
