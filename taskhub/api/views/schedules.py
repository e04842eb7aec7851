"""Recurring schedules: `/api/v1/schedules` (API keys with tasks scopes; each sees its own)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from taskhub.api.pagination import PageQuery, page_serializer, paginate
from taskhub.api.principals import principal_of
from taskhub.api.serializers.schedules import ScheduleSerializer, ScheduleUpdateSerializer, ScheduleWriteSerializer
from taskhub.api.validation import query_params, validated
from taskhub.base.errors import NotFound
from taskhub.schedules import services
from taskhub.schedules.models import Schedule

SchedulePage = page_serializer("SchedulePage", ScheduleSerializer)


class ScheduleListQuerySerializer(PageQuery):
    pass


class ScheduleViewSet(viewsets.ViewSet):
    lookup_value_regex = r"[0-9]{1,18}"
    required_scopes = {
        "list": "tasks:read",
        "retrieve": "tasks:read",
        "create": "tasks:write",
        "partial_update": "tasks:write",
        "destroy": "tasks:write",
    }

    def _schedules(self, request: Request) -> QuerySet[Schedule]:
        return services.visible_schedules(principal_of(request))

    def _get(self, request: Request, pk: str) -> Schedule:
        schedule = self._schedules(request).filter(pk=int(pk)).first()
        if schedule is None:
            raise NotFound(f"Schedule {pk} not found")
        return schedule

    @extend_schema(parameters=[ScheduleListQuerySerializer], responses=SchedulePage, summary="List schedules")
    def list(self, request: Request) -> Response:
        q = validated(ScheduleListQuerySerializer, query_params(request))
        return Response(paginate(self._schedules(request), q, _render, order=("-id",)))

    @extend_schema(
        request=ScheduleWriteSerializer,
        responses={201: ScheduleSerializer},
        summary="Create a schedule (cron in a time zone firing a task template)",
    )
    def create(self, request: Request) -> Response:
        data = validated(ScheduleWriteSerializer, request.data)
        schedule = services.schedule_create(owner=principal_of(request).api_key, fields=data)
        return Response(ScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ScheduleSerializer, summary="Get a schedule with its next five fire times")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ScheduleSerializer(self._get(request, pk)).data)

    @extend_schema(
        request=ScheduleUpdateSerializer,
        responses=ScheduleSerializer,
        summary="Edit a schedule; {paused: true|false} pauses or resumes it",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        changes = validated(ScheduleUpdateSerializer, request.data)
        schedule = services.schedule_update(int(pk), changes, queryset=self._schedules(request))
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(responses={204: None}, summary="Delete a schedule (the tasks it made stay)")
    def destroy(self, request: Request, pk: str) -> Response:
        services.schedule_delete(int(pk), queryset=self._schedules(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _render(rows: list[Any]) -> Any:
    return ScheduleSerializer(rows, many=True).data
