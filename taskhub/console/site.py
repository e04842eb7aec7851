"""The admin site operators use: branding, the dashboard pages, and role-aware access."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path

from taskhub.console import queue_pages
from taskhub.console.dashboard import dashboard_data
from taskhub.console.permissions import VIEW_DASHBOARD

DEFAULT_REFRESH_SECONDS = 5
APP_ORDER = {
    "tasks": 0,
    "units": 1,
    "schedules": 2,
    "webhooks": 3,
    "apikeys": 4,
    "console": 5,
    "auth": 6,
    "django_celery_beat": 99,
}


class ConsoleAdminSite(admin.AdminSite):
    site_header = "taskhub operator console"
    site_title = "taskhub"
    index_title = "Operator console"
    site_url = None  # no public site to go back to
    enable_nav_sidebar = False  # the task list needs the width

    def get_urls(self) -> list[URLResolver | URLPattern]:
        # Before the admin's own patterns: its catch-all would take any unknown first segment.
        return [
            path("dashboard/", self.admin_view(self.dashboard_view), name="console-dashboard"),
            path("dashboard/data.json", self.admin_view(self.dashboard_data_view), name="console-dashboard-data"),
            path("queues/", self.admin_view(self.queues_view), name="console-queues"),
            path("queues/<str:task_type>/", self.admin_view(self.queue_view), name="console-queue"),
            *super().get_urls(),
        ]

    def _check_dashboard(self, request: HttpRequest) -> None:
        if not request.user.has_perm(VIEW_DASHBOARD):
            raise PermissionDenied

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        self._check_dashboard(request)
        try:
            refresh = min(max(int(request.GET.get("refresh", DEFAULT_REFRESH_SECONDS)), 1), 300)
        except ValueError:
            refresh = DEFAULT_REFRESH_SECONDS
        context = {
            **self.each_context(request),
            "title": "Dashboard",
            "data": dashboard_data(),
            "refresh_ms": refresh * 1000,
        }
        return TemplateResponse(request, "console/dashboard.html", context)

    def dashboard_data_view(self, request: HttpRequest) -> HttpResponse:
        self._check_dashboard(request)
        return JsonResponse(dashboard_data(), encoder=DjangoJSONEncoder)

    def queues_view(self, request: HttpRequest) -> HttpResponse:
        return queue_pages.queues_view(self, request)

    def queue_view(self, request: HttpRequest, task_type: str) -> HttpResponse:
        return queue_pages.queue_view(self, request, task_type)

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        """Tasks first, then units and keys; the periodic jobs (Celery beat) last."""
        apps = super().get_app_list(request, app_label)
        return sorted(apps, key=lambda app: APP_ORDER.get(app["app_label"], len(APP_ORDER)))

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> TemplateResponse:
        extra = {"show_dashboard_link": request.user.has_perm(VIEW_DASHBOARD), **(extra_context or {})}
        return super().index(request, extra)
