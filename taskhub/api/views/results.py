"""The event stream (`GET /api/v1/events`) and webhooks (`/api/v1/webhooks`)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from taskhub.api.errors import ErrorSerializer
from taskhub.api.principals import principal_of
from taskhub.api.serializers.fields import MAX_ID
from taskhub.api.serializers.results import (
    DeliveryListSerializer,
    EventQuerySerializer,
    ServerSentEventSerializer,
    WebhookCreatedSerializer,
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookListSerializer,
    WebhookSerializer,
)
from taskhub.api.streaming import EventStream, event_stream
from taskhub.api.validation import query_params, validated
from taskhub.base.errors import InvalidInput, NotFound
from taskhub.webhooks.models import WebhookSubscription
from taskhub.webhooks.services import visible_webhooks, webhook_delete, webhook_register
from tasks.events import EventCursor, EventFilter, last_event_id
from tasks.selectors import visible_tasks

MAX_WEBHOOKS_PER_KEY = 100
DELIVERIES_SHOWN = 100


def _last_event_id(request: Request, query: int | None) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return query
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        raise InvalidInput("Last-Event-ID", f"must be an event id (a non-negative integer), got {text[:32]!r}")
    return int(text)


class EventStreamView(APIView):
    """State changes of the caller's tasks as Server-Sent Events."""

    required_scopes = {"get": "tasks:read"}

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[Any, str]:
        # The stream is not rendered by DRF; what DRF renders here (a refusal) is the JSON error body,
        # whatever the client's Accept (text/event-stream) says.
        return JSONRenderer(), JSONRenderer.media_type

    @extend_schema(
        parameters=[EventQuerySerializer],
        description="Resume with the `Last-Event-ID` header (what EventSource sends on reconnecting) or the "
        "`lastEventId` parameter (the header wins): the stream starts with the first event after that id, none "
        "missed or repeated. Without either it starts after the newest change. See docs/clients.md.",
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                ServerSentEventSerializer,
                description="`id: <history id>`, `event: task.status`, `data: {type, historyId, taskId, taskType, "
                "fromStatus, toStatus, reason, reasonCode, actorType, actor, unitId, attempt, createdAt}`; "
                "`: heartbeat` comments every EVENTS_HEARTBEAT_SECONDS. See docs/clients.md.",
            )
        },
        summary="Follow state changes (Server-Sent Events), resumable with Last-Event-ID",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        q = validated(EventQuerySerializer, query_params(request))
        principal = principal_of(request)
        after = _last_event_id(request, q.get("lastEventId"))
        filters = EventFilter(task_ids=q.get("taskIds"), task_type=q.get("taskType"), mine=q["mine"])
        cursor = EventCursor(principal, filters, last_event_id() if after is None else after)
        return event_stream(request, EventStream(cursor, principal.api_key_id))


class WebhookViewSet(viewsets.ViewSet):
    """Callback URLs that receive the caller's tasks' state changes, signed (docs/webhooks.md)."""

    lookup_value_regex = r"[0-9]{1,18}"
    required_scopes = {
        "list": "tasks:read",
        "retrieve": "tasks:read",
        "deliveries": "tasks:read",
        "create": "tasks:write",
        "destroy": "tasks:write",
    }

    def _webhooks(self, request: Request) -> QuerySet[WebhookSubscription]:
        principal = principal_of(request)
        return visible_webhooks(principal.api_key, operator=principal.is_operator)

    def _get(self, request: Request, pk: str) -> WebhookSubscription:
        hook = self._webhooks(request).filter(pk=int(pk)).first()
        if hook is None:
            raise NotFound(f"Webhook {pk} not found")
        return hook

    @extend_schema(responses=WebhookListSerializer, summary="List your webhooks")
    def list(self, request: Request) -> Response:
        rows = self._webhooks(request).order_by("id")[:MAX_WEBHOOKS_PER_KEY]
        return Response({"items": WebhookSerializer(rows, many=True).data})

    @extend_schema(
        request=WebhookCreateSerializer,
        responses={
            201: WebhookCreatedSerializer,
            404: OpenApiResponse(ErrorSerializer, description="`taskId` names no task of yours"),
        },
        summary="Register a callback URL (its secret is shown once)",
    )
    def create(self, request: Request) -> Response:
        body = validated(WebhookCreateSerializer, request.data)
        principal = principal_of(request)
        if "taskId" in body and not visible_tasks(principal).filter(pk=body["taskId"]).exists():
            raise NotFound(f"Task {body['taskId']} not found")
        if principal.api_key is not None and self._webhooks(request).count() >= MAX_WEBHOOKS_PER_KEY:
            raise InvalidInput("url", f"an API key may register at most {MAX_WEBHOOKS_PER_KEY} webhooks")
        hook = webhook_register(
            owner=principal.api_key,
            url=body["url"],
            statuses=body["events"],
            task_type=body["taskType"],
            task_id=body.get("taskId"),
            now=timezone.now(),
        )
        return Response(WebhookCreatedSerializer(hook).data, status=201)

    @extend_schema(responses=WebhookSerializer, summary="Get a webhook")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(WebhookSerializer(self._get(request, pk)).data)

    @extend_schema(responses={204: None}, summary="Remove a webhook (its pending deliveries go with it)")
    def destroy(self, request: Request, pk: str) -> Response:
        webhook_delete(int(pk), queryset=self._webhooks(request))
        return Response(status=204)

    @extend_schema(
        responses=DeliveryListSerializer,
        summary="The webhook's latest deliveries (newest first)",
    )
    @action(detail=True, methods=["get"])
    def deliveries(self, request: Request, pk: str) -> Response:
        hook = self._get(request, pk)
        rows = hook.deliveries.order_by("-id")[:DELIVERIES_SHOWN]
        return Response({"items": WebhookDeliverySerializer(rows, many=True).data})
