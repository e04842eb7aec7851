"""Queues (a queue is a task type): see them, pause/resume them, set their limits and defaults."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from taskhub.api.principals import principal_of
from taskhub.api.serializers.queues import QueueDetailSerializer, QueueSerializer, QueueUpdateSerializer
from taskhub.api.validation import validated
from units import queues

# A list action answers with one object holding the items (as the paginated lists do).
QueueList = extend_schema_serializer(many=False)(
    type("QueueList", (serializers.Serializer,), {"items": QueueSerializer(many=True)})
)


class QueueViewSet(viewsets.ViewSet):
    """`GET /queues`, `GET|PATCH /queues/{taskType}`. Operators see and steer every queue; an API
    key (queues:read / queues:write) the queues nobody configured, those an operator configured
    (read only) and its own, never another key's (404)."""

    lookup_value_regex = r"[A-Za-z0-9_.:\\-]{1,64}"
    required_scopes = {"list": "queues:read", "retrieve": "queues:read", "partial_update": "queues:write"}

    @extend_schema(responses=QueueList, summary="List queues (task types) with their depth, units and settings")
    def list(self, request: Request) -> Response:
        return Response({"items": queues.queue_overview(principal_of(request))})

    @extend_schema(responses=QueueDetailSerializer, summary="Get a queue: counts, units, settings, recent changes")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(queues.queue_detail(principal_of(request), pk))

    @extend_schema(
        request=QueueUpdateSerializer,
        responses=QueueDetailSerializer,
        summary="Change a queue's settings: pause/resume, concurrency and rate limits, defaults for new tasks",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        changes = validated(QueueUpdateSerializer, request.data)
        principal = principal_of(request)
        queues.update_queue_settings(
            pk, changes, viewer=principal, actor=principal.actor, owner_id=principal.api_key_id
        )
        return Response(queues.queue_detail(principal, pk))
