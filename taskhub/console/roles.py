"""The two operator roles, as Django groups with an exact set of permissions.

- `viewers` may look at everything in the console (tasks, history, logs, units, API keys,
  periodic jobs, the dashboard) and change nothing.
- `operators` may also act: retry/redrive, cancel, pause and resume tasks, edit what a task's
  state allows, drain/resume/deregister units, create and revoke API keys, and edit the periodic
  jobs of django-celery-beat.

Staff users in neither group (and not superusers) see nothing. `sync_roles` is used by the data
migration and by `manage.py sync_roles` (after an upgrade adds models), and sets each group's
permissions to exactly this list.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps

VIEWERS = "viewers"
OPERATORS = "operators"

_BEAT_MODELS = ("periodictask", "intervalschedule", "crontabschedule", "solarschedule", "clockedschedule")
_VIEWED = [
    ("tasks", "task"),
    ("tasks", "taskstatushistory"),
    ("tasks", "taskexecutionlog"),
    ("units", "executionunit"),
    ("apikeys", "apikey"),
    ("schedules", "schedule"),
    ("schedules", "schedulefire"),
    *(("django_celery_beat", model) for model in _BEAT_MODELS),
]

VIEWER_PERMISSIONS: list[tuple[str, str]] = [
    *((app, f"view_{model}") for app, model in _VIEWED),
    ("console", "view_dashboard"),
]
OPERATOR_PERMISSIONS: list[tuple[str, str]] = [
    *VIEWER_PERMISSIONS,
    ("console", "operate_tasks"),
    ("console", "operate_units"),
    ("tasks", "change_task"),
    ("units", "change_executionunit"),
    ("apikeys", "add_apikey"),
    ("apikeys", "change_apikey"),
    *(("schedules", f"{action}_schedule") for action in ("add", "change", "delete")),
    *(("django_celery_beat", f"{action}_{model}") for model in _BEAT_MODELS for action in ("add", "change", "delete")),
]
ROLES: dict[str, list[tuple[str, str]]] = {VIEWERS: VIEWER_PERMISSIONS, OPERATORS: OPERATOR_PERMISSIONS}


def _known(apps: Any, app_label: str) -> bool:
    try:
        apps.get_app_config(app_label)
    except LookupError:
        return False
    return True


def sync_roles(apps: Any = global_apps, using: str = "default", *, known_apps_only: bool = False) -> dict[str, int]:
    """Create the groups if needed and set their permissions to exactly ROLES. Returns the number
    of permissions per group. Raises LookupError naming any permission that does not exist.

    A data migration passes known_apps_only: the permissions of apps its historical state does
    not hold yet are left to the later migration that syncs again (console 0004)."""
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    roles = {
        name: [pair for pair in pairs if not known_apps_only or _known(apps, pair[0])] for name, pairs in ROLES.items()
    }
    wanted = {pair for pairs in roles.values() for pair in pairs}
    found = {
        (app_label, codename): pk
        for pk, app_label, codename in permission_model.objects.using(using)
        .filter(content_type__app_label__in={app for app, _ in wanted}, codename__in={c for _, c in wanted})
        .values_list("pk", "content_type__app_label", "codename")
    }
    missing = sorted(f"{app}.{codename}" for app, codename in wanted - set(found))
    if missing:
        raise LookupError(f"permissions not found (run migrate first): {', '.join(missing)}")
    counts = {}
    for name, pairs in roles.items():
        group, _ = group_model.objects.using(using).get_or_create(name=name)
        group.permissions.set([found[pair] for pair in pairs])
        counts[name] = len(pairs)
    return counts


def create_all_permissions(apps: Any, using: str) -> None:
    """Permissions are normally made after the last migration (post_migrate); a data migration
    that grants them must make them itself."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        had_models = getattr(app_config, "models_module", None)
        app_config.models_module = True
        try:
            create_permissions(app_config, verbosity=0, using=using, apps=apps)
        finally:
            app_config.models_module = had_models
