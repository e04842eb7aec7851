"""Recurring schedules: a cron expression in a time zone fires a task template (see docs/schedules.md)."""
