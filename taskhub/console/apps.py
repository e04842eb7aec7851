from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ConsoleConfig(AppConfig):
    """The operator console: dashboard, roles (groups + permissions), admin site tweaks."""

    default = True
    name = "taskhub.console"
    label = "console"
    verbose_name = "Operator console"


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the console's site as `admin.site`, so every app's
    `admin.site.register(...)` (django-celery-beat's included) lands on it. Named in
    INSTALLED_APPS in place of "django.contrib.admin"."""

    default = False
    default_site = "taskhub.console.site.ConsoleAdminSite"
