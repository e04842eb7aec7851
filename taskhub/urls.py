from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from taskhub.api import health
from taskhub.api.errors import handler404 as handler404_view
from taskhub.api.index import ApiIndexView, ApiIndexWithoutSlashView, favicon
from taskhub.api.metrics import metrics_view
from taskhub.api.views import longpoll
from taskhub.api.views.queues import QueueViewSet
from taskhub.api.views.results import EventStreamView, WebhookViewSet
from taskhub.api.views.schedules import ScheduleViewSet
from taskhub.api.views.tasks import TaskViewSet
from taskhub.api.views.units import UnitViewSet

router = SimpleRouter(trailing_slash=False)
router.register("tasks", TaskViewSet, basename="task")
router.register("execution-units", UnitViewSet, basename="unit")
router.register("queues", QueueViewSet, basename="queue")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("webhooks", WebhookViewSet, basename="webhook")


class PublicSchemaView(SpectacularAPIView):
    authentication_classes = ()
    permission_classes = ()
    throttle_classes = ()
    public = True


class PublicSwaggerView(SpectacularSwaggerView):
    authentication_classes = ()
    permission_classes = ()
    throttle_classes = ()
    public = True


api_v1 = [
    path("", ApiIndexView.as_view(), name="api-index"),
    path("health", health.app_health(), name="health"),
    path("health/database", health.database_health(), name="health-database"),
    path("health/redis", health.redis_health(), name="health-redis"),
    path("schema", PublicSchemaView.as_view(), name="schema"),
    # The claim, served by an async view that can wait (long poll) in front of the DRF action;
    # the action stays in the router for the OpenAPI schema and does the claim itself.
    re_path(rf"^execution-units/(?P<pk>{UnitViewSet.lookup_value_regex})/claim$", longpoll.claim, name="claim-wait"),
    path("events", EventStreamView.as_view(), name="events"),
    path("", include(router.urls)),
    # Anything else under /api is a JSON 404, whatever DEBUG says.
    re_path(r"^.*$", handler404_view),
]

urlpatterns = [
    # Without the slash as well: an APPEND_SLASH redirect would turn a POST into a GET, and the
    # first thing a newcomer types is the address the banner prints.
    path("api/v1", ApiIndexWithoutSlashView.as_view()),
    path("api/v1/", include(api_v1)),
    path("api-docs", PublicSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    # A browser pointed at the bare address lands in the docs (public), not on a 404.
    path("", RedirectView.as_view(pattern_name="api-docs"), name="home"),
    path("favicon.ico", favicon),
]

handler404 = "taskhub.api.errors.handler404"
handler500 = "taskhub.api.errors.handler500"
