"""Where a newcomer lands: GET /api/v1 (an index of links, public like health and the docs), and
the two requests a browser makes on its own (`/` and `/favicon.ico`)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

# Link name -> URL name, in the order a newcomer needs them.
LINKS = {
    "tasks": "task-list",
    "executionUnits": "unit-list",
    "docs": "api-docs",
    "schema": "schema",
    "health": "health",
    "healthDatabase": "health-database",
    "healthRedis": "health-redis",
    "console": "admin:index",
    "metrics": "metrics",
}


class ApiIndexSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField(help_text="The API's version, as in the OpenAPI schema.")
    links = serializers.DictField(
        child=serializers.CharField(), help_text="Paths on this host: " + ", ".join(LINKS) + "."
    )


class ApiIndexView(APIView):
    authentication_classes = ()
    permission_classes = ()
    public = True

    @extend_schema(
        summary="Index of the API's entry points (no key needed)",
        responses=ApiIndexSerializer,
        tags=["index"],
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "name": "taskhub",
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                "links": {name: reverse(url_name) for name, url_name in LINKS.items()},
            }
        )


@extend_schema(exclude=True)  # the same operation as /api/v1/, documented once
class ApiIndexWithoutSlashView(ApiIndexView):
    pass


def favicon(request: HttpRequest) -> HttpResponse:
    """No icon, and no 404 (nor its log line) each time a browser opens the console or the docs."""
    return HttpResponse(status=204, headers={"Cache-Control": "public, max-age=86400"})
