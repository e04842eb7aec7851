"""The console's permission names, as `user.has_perm` takes them."""

from __future__ import annotations

VIEW_DASHBOARD = "console.view_dashboard"
OPERATE_TASKS = "console.operate_tasks"
OPERATE_UNITS = "console.operate_units"
