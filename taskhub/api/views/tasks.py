from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from taskhub.api.pagination import page_serializer, paginate
from taskhub.api.principals import principal_of
from taskhub.api.serializers.queues import BulkActionSerializer, BulkResultSerializer
from taskhub.api.serializers.results import TaskWaitQuerySerializer
from taskhub.api.serializers.tasks import (
    CompleteSerializer,
    FailSerializer,
    HistorySerializer,
    LogQuerySerializer,
    LogSerializer,
    LogWriteSerializer,
    ProgressSerializer,
    RedriveSerializer,
    ReportBatchSerializer,
    ReportResultSerializer,
    StatusChangeSerializer,
    TaskBatchCreateSerializer,
    TaskBatchItemResultSerializer,
    TaskCreateSerializer,
    TaskListQuerySerializer,
    TaskSerializer,
    TaskUpdateSerializer,
)
from taskhub.api.streaming import held_task
from taskhub.api.validation import query_params, validated
from taskhub.base import tracing
from taskhub.base.errors import NotFound
from tasks import bulk_actions, services
from tasks.events import is_done
from tasks.models import Task
from tasks.selectors import TaskFilters, filter_tasks, task_stats, visible_tasks
from tasks.transitions import reports, verbs
from units.selectors import is_alive

TaskPage = page_serializer("TaskPage", TaskSerializer)
LogPage = inline_serializer("LogPage", {"items": LogSerializer(many=True), "nextAfter": serializers.IntegerField()})
HistoryList = inline_serializer("HistoryList", {"items": HistorySerializer(many=True)})
StatsBody = inline_serializer(
    "TaskStats",
    {
        "total": serializers.IntegerField(),
        "byStatus": serializers.DictField(child=serializers.IntegerField()),
        "byType": serializers.DictField(child=serializers.DictField(child=serializers.IntegerField())),
        "waitingRetry": serializers.IntegerField(),
        "dead": serializers.IntegerField(),
    },
)
AcceptedBody = inline_serializer(
    "ReportAccepted",
    {
        "taskId": serializers.IntegerField(),
        "attempt": serializers.IntegerField(),
        "status": serializers.CharField(),
        "accepted": serializers.BooleanField(),
    },
)
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
    OpenApiParameter.HEADER,
    required=False,
    description="A repeat with the same key from the same client returns the first task (200).",
)
TRACEPARENT_HEADER = OpenApiParameter(
    tracing.TRACEPARENT_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="W3C Trace Context (version-traceid-parentid-flags): stored with the task, handed to the "
    "unit that claims it. An invalid value is ignored (the W3C rule: a new trace starts), never refused. "
    "See docs/operations.md, Tracing.",
)
REPORT_TRACEPARENT_HEADER = OpenApiParameter(
    tracing.TRACEPARENT_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="W3C Trace Context of the report: the `traceparent` the claim handed the unit. Links the "
    "hub's span of the report to the task's trace; an invalid value is ignored.",
)
UNIQUE_HEADER = "Taskhub-Unique-Existing"
CREATE_REPLY_HEADERS = [
    OpenApiParameter(
        "Idempotency-Replayed",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        description="true: an Idempotency-Key replay of the first task",
    ),
    OpenApiParameter(
        UNIQUE_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        description="true: the task already holding this uniqueKey (see uniqueKey)",
    ),
]
ORDERING_FIELDS = {"createdAt": "created_at", "updatedAt": "updated_at"}


def _ordering(value: str) -> tuple[str, str]:
    """The ORDER BY of a list: the field, then id in the same direction (ties: newest first under a
    descending order, oldest first under an ascending one), so one index `(..., field, id)` read
    forwards or backwards serves both directions without a sort."""
    desc = value.startswith("-")
    name = ORDERING_FIELDS.get(value.lstrip("-"), value.lstrip("-"))
    return (f"-{name}", "-id") if desc else (name, "id")


def _filters(q: dict[str, Any]) -> TaskFilters:
    return TaskFilters(
        status=q.get("status"),
        task_type=q.get("taskType"),
        unit_id=q.get("unitId"),
        priority=q.get("priority"),
        created_after=q.get("createdAfter"),
        created_before=q.get("createdBefore"),
        search=q.get("search"),
        concurrency_key=q.get("concurrencyKey"),
    )


def _render_tasks(rows: list[Any]) -> Any:
    return TaskSerializer(rows, many=True).data


class TaskViewSet(viewsets.ViewSet):
    """Tasks: create and watch (clients), report (the unit holding the live attempt)."""

    lookup_value_regex = r"[0-9]{1,18}"
    required_scopes = {
        "list": "tasks:read",
        "retrieve": "tasks:read",
        "history": "tasks:read",
        "logs": "tasks:read",
        "stats": "tasks:read",
        "create": "tasks:write",
        "partial_update": "tasks:write",
        "destroy": "tasks:write",
        "set_status": "tasks:write",
        "add_logs": "tasks:write",
        "retry": "tasks:write",
        "redrive": "tasks:write",
        "create_batch": "tasks:write",
        "bulk": "tasks:write",
    }
    unit_actions = frozenset({"retrieve", "add_logs", "progress", "complete", "fail", "reports"})

    def _tasks(self, request: Request) -> QuerySet[Task]:
        return visible_tasks(principal_of(request))

    def _get(self, request: Request, pk: str) -> Task:
        task = self._tasks(request).filter(pk=int(pk)).first()
        if task is None:
            raise NotFound(f"Task {pk} not found")
        return task

    @extend_schema(parameters=[TaskListQuerySerializer], responses=TaskPage, summary="List tasks")
    def list(self, request: Request) -> Response:
        q = validated(TaskListQuerySerializer, query_params(request))
        qs, windowed = filter_tasks(self._tasks(request), _filters(q), search_window=settings.API_SEARCH_WINDOW)
        body = paginate(qs, q, _render_tasks, order=_ordering(q["ordering"]))
        if windowed:
            # Say so: older tasks were not searched (narrow with status, taskType or dates).
            body["searchWindow"] = settings.API_SEARCH_WINDOW
        return Response(body)

    @extend_schema(
        request=TaskCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER, TRACEPARENT_HEADER, *CREATE_REPLY_HEADERS],
        responses={
            201: TaskSerializer,
            200: OpenApiResponse(TaskSerializer, "An Idempotency-Key replay, or the task holding the uniqueKey"),
        },
        summary="Create a task",
    )
    def create(self, request: Request) -> Response:
        data = validated(TaskCreateSerializer, request.data)
        key = request.headers.get("Idempotency-Key", "").strip() or None
        if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
            raise serializers.ValidationError({"Idempotency-Key": [f"at most {MAX_IDEMPOTENCY_KEY} characters"]})
        principal = principal_of(request)
        incoming = tracing.header_traceparent(request.headers)
        with tracing.enqueue_span(incoming, task_type=data["task_type"], name=data["name"]) as span:
            data["traceparent"] = span.traceparent  # the enqueue span's context while tracing
            task, outcome = services.task_submit(
                owner=principal.api_key,
                actor=principal.actor,
                data=data,
                idempotency_key=key,
                fingerprint=services.request_fingerprint(request.data),
            )
            span.set(**{"task.id": task.pk, "outcome": outcome})
        headers = {
            services.CREATED: {},
            services.REPLAYED: {"Idempotency-Replayed": "true"},
            services.UNIQUE_EXISTING: {UNIQUE_HEADER: "true"},
        }[outcome]
        created = outcome == services.CREATED
        return Response(TaskSerializer(task).data, status=201 if created else 200, headers=headers)

    @extend_schema(
        request=TaskBatchCreateSerializer,
        parameters=[TRACEPARENT_HEADER],
        responses={
            201: inline_serializer("TaskBatchCreated", {"items": TaskBatchItemResultSerializer(many=True)}),
            200: OpenApiResponse(
                inline_serializer("TaskBatchReplayed", {"items": TaskBatchItemResultSerializer(many=True)}),
                "Every item was an idempotent replay",
            ),
        },
        summary="Create up to TASK_BATCH_MAX tasks, all or nothing (per-item idempotencyKey)",
    )
    @action(detail=False, methods=["post"], url_path="batch")
    def create_batch(self, request: Request) -> Response:
        body = validated(TaskBatchCreateSerializer, request.data)
        principal = principal_of(request)
        incoming = tracing.header_traceparent(request.headers)
        items, spans = [], []
        for raw, data in zip(request.data["tasks"], body["tasks"], strict=True):
            key = data.pop("idempotency_key", None)
            # An item's own traceparent, else the request's header; while tracing, its enqueue span's.
            spans.append(
                tracing.enqueue_span(
                    data.get("traceparent") or incoming, task_type=data["task_type"], name=data["name"]
                )
            )
            data["traceparent"] = spans[-1].traceparent
            # The fingerprint of an item is that of the same body sent to POST /tasks (whose
            # traceparent is a header, outside it).
            body_only = {name: value for name, value in raw.items() if name not in ("idempotencyKey", "traceparent")}
            items.append((data, key, services.request_fingerprint(body_only)))
        try:
            results = services.task_submit_batch(owner=principal.api_key, actor=principal.actor, items=items)
        except BaseException as exc:
            for span in spans:
                span.end(exc)
            raise
        for span, (task, outcome) in zip(spans, results, strict=True):
            span.set(**{"task.id": task.pk, "outcome": outcome})
            span.end()
        rendered = TaskSerializer([task for task, _ in results], many=True).data  # one set of fields for all
        for item, (_, outcome) in zip(rendered, results, strict=True):
            item["created"] = outcome == services.CREATED
            item["uniqueExisting"] = outcome == services.UNIQUE_EXISTING
        return Response({"items": rendered}, status=201 if any(i["created"] for i in rendered) else 200)

    @extend_schema(
        request=ReportBatchSerializer,
        parameters=[REPORT_TRACEPARENT_HEADER],
        responses=inline_serializer("ReportBatchResult", {"items": ReportResultSerializer(many=True)}),
        summary="Report many attempts at once (unit): results, progress and logs, each fenced on its own",
    )
    @action(detail=False, methods=["post"])
    def reports(self, request: Request) -> Response:
        body = validated(ReportBatchSerializer, request.data)
        started, unit_id = time.time_ns(), self._unit_id(request)
        replies = reports.report_attempts(unit_id, body["reports"])
        if tracing.recording():  # the tasks' stored contexts, for the spans' links: read only while tracing
            ids = [report["taskId"] for report in body["reports"]]
            stored = dict(Task.objects.filter(pk__in=ids).values_list("pk", "traceparent"))
            pairs = list(zip(body["reports"], replies, strict=True))
            tracing.record_reports(
                tracing.header_traceparent(request.headers), pairs, stored, unit_id=unit_id, started=started
            )
        return Response({"items": replies})

    @extend_schema(
        parameters=[TaskWaitQuerySerializer],
        responses=TaskSerializer,
        summary="Get a task; with waitFor=terminal, once it is done or waitSeconds pass",
        description="With `waitFor=terminal` the hub holds the request (no thread or database connection "
        "while it waits, under ASGI) until the task is COMPLETED, CANCELLED, or FAILED with no automatic "
        "retry pending, or `waitSeconds` (default and maximum TASK_WAIT_MAX_SECONDS) pass, and answers the "
        "task as it is then: a task not done after the wait is a 200 too. See docs/clients.md.",
    )
    def retrieve(self, request: Request, pk: str) -> Response | StreamingHttpResponse:
        q = validated(TaskWaitQuerySerializer, query_params(request))
        task = self._get(request, pk)
        body = TaskSerializer(task).data
        limit = settings.TASK_WAIT_MAX_SECONDS  # read now: the schema's maximum is the value at start-up
        seconds = min(q.get("waitSeconds", limit), limit) if "waitFor" in q else 0
        if seconds > 0 and not is_done(task.status, task.next_retry_at):
            return held_task(request, principal_of(request), task.pk, seconds, body)
        return Response(body)

    @extend_schema(
        request=TaskUpdateSerializer,
        responses=TaskSerializer,
        summary="Edit the fields that make sense in the task's state",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        changes = validated(TaskUpdateSerializer, request.data)
        task = services.task_update(int(pk), changes, queryset=self._tasks(request))
        return Response(TaskSerializer(task).data)

    @extend_schema(responses={204: None}, summary="Delete a task (not while RUNNING)")
    def destroy(self, request: Request, pk: str) -> Response:
        services.task_delete(int(pk), queryset=self._tasks(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=StatusChangeSerializer,
        responses=TaskSerializer,
        summary="Change status (checked against the state machine; 409 names the allowed targets)",
        description="RUNNING (the task is then held by no unit: `leaseExpiresAt` says when the hub takes it "
        "back unless the client posts log lines first); PENDING resumes a PAUSED task, retries a FAILED one, "
        "or requeues a RUNNING one that no live unit holds (409 naming `unitId` while one does: the hub takes "
        "a task back from its unit only when the unit stops heartbeating).",
    )
    @action(detail=True, methods=["put"], url_path="status")
    def set_status(self, request: Request, pk: str) -> Response:
        body = validated(StatusChangeSerializer, request.data)
        principal = principal_of(request)
        task = verbs.change_status(
            int(pk),
            body["status"],
            actor=principal.actor,
            reason=body["reason"],
            queryset=self._tasks(request),
            live_unit=is_alive,
        )
        return Response(TaskSerializer(task).data)

    @extend_schema(request=None, responses=TaskSerializer, summary="Retry a FAILED task by hand")
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        task = verbs.retry_task(int(pk), actor=principal_of(request).actor, queryset=self._tasks(request))
        return Response(TaskSerializer(task).data)

    @extend_schema(
        request=BulkActionSerializer,
        responses=BulkResultSerializer,
        summary="Act on every task a list filter matches (cancel, retry, pause, resume, reprioritize), in chunks",
    )
    @action(detail=False, methods=["post"])
    def bulk(self, request: Request) -> Response:
        body = validated(BulkActionSerializer, request.data)
        queryset = self._tasks(request)
        ids, truncated = bulk_actions.matching_ids(
            queryset, _filters(body["filter"]), limit=body["limit"], search_window=settings.API_SEARCH_WINDOW
        )
        result = bulk_actions.bulk_act(
            ids,
            body["action"],
            queryset=queryset,
            actor=principal_of(request).actor,
            reason=body["reason"],
            priority=body.get("priority"),
            live_unit=is_alive,
        )
        return Response({**result, "truncated": truncated})

    @extend_schema(
        request=RedriveSerializer,
        summary="Retry FAILED tasks in bulk (the dead set)",
        responses=inline_serializer(
            "RedriveResult",
            {
                "retried": serializers.ListField(child=serializers.IntegerField()),
                "skipped": serializers.DictField(child=serializers.CharField()),
            },
        ),
    )
    @action(detail=False, methods=["post"])
    def redrive(self, request: Request) -> Response:
        body = validated(RedriveSerializer, request.data)
        result = verbs.redrive(
            self._tasks(request),
            actor=principal_of(request).actor,
            ids=body.get("ids"),
            task_type=body.get("taskType"),
            limit=body["limit"],
            reason=body["reason"],
        )
        return Response(result)

    @extend_schema(responses=HistoryList, summary="Status history, oldest first")
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str) -> Response:
        task = self._get(request, pk)
        return Response({"items": HistorySerializer(task.history.order_by("id"), many=True).data})

    @extend_schema(parameters=[LogQuerySerializer], responses=LogPage, summary="Read execution logs")
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        q = validated(LogQuerySerializer, query_params(request))
        task = self._get(request, pk)
        qs = task.logs.filter(id__gt=q["after"])
        if "attempt" in q:
            qs = qs.filter(attempt=q["attempt"])
        if "level" in q:
            qs = qs.filter(level=q["level"])
        rows = list(qs.order_by("id")[: q["limit"]])
        return Response(
            {"items": LogSerializer(rows, many=True).data, "nextAfter": rows[-1].pk if rows else q["after"]}
        )

    @extend_schema(
        request=LogWriteSerializer,
        summary="Append log entries (a unit names its attempt)",
        responses={201: inline_serializer("LogsStored", {"stored": serializers.IntegerField()})},
    )
    @logs.mapping.post
    def add_logs(self, request: Request, pk: str) -> Response:
        body = validated(LogWriteSerializer, request.data)
        principal = principal_of(request)
        if principal.is_unit and "attempt" not in body:
            raise serializers.ValidationError({"attempt": ["A unit must name the attempt it reports for"]})
        stored = services.task_append_logs(
            int(pk), body["entries"], actor=principal.actor, queryset=self._tasks(request), attempt=body.get("attempt")
        )
        return Response({"stored": stored}, status=201)

    @extend_schema(
        request=ProgressSerializer,
        parameters=[REPORT_TRACEPARENT_HEADER],
        responses=AcceptedBody,
        summary="Report progress (unit)",
    )
    @action(detail=True, methods=["post"])
    def progress(self, request: Request, pk: str) -> Response:
        body = validated(ProgressSerializer, request.data)
        unit_id = self._unit_id(request)
        with self._report_span("progress", request, pk, body) as span:
            task = reports.report_progress(int(pk), unit_id=unit_id, attempt=body["attempt"], progress=body["progress"])
            span.done(task.traceparent, accepted=True, status=task.status)
        return Response({"taskId": task.pk, "attempt": task.attempt, "status": task.status, "accepted": True})

    @extend_schema(
        request=CompleteSerializer,
        parameters=[REPORT_TRACEPARENT_HEADER],
        responses=AcceptedBody,
        summary="Report a result (unit)",
    )
    @action(detail=True, methods=["post"])
    def complete(self, request: Request, pk: str) -> Response:
        body = validated(CompleteSerializer, request.data)
        with self._report_span("complete", request, pk, body) as span:
            task, accepted = reports.complete_attempt(
                int(pk), unit_id=self._unit_id(request), attempt=body["attempt"], result=body["result"]
            )
            span.done(task.traceparent, accepted=accepted, status=task.status)
        return Response({"taskId": task.pk, "attempt": body["attempt"], "status": task.status, "accepted": accepted})

    @extend_schema(
        request=FailSerializer,
        parameters=[REPORT_TRACEPARENT_HEADER],
        responses=AcceptedBody,
        summary="Report a failed attempt (unit)",
    )
    @action(detail=True, methods=["post"])
    def fail(self, request: Request, pk: str) -> Response:
        body = validated(FailSerializer, request.data)
        with self._report_span("fail", request, pk, body) as span:
            task, accepted = reports.fail_attempt(
                int(pk),
                unit_id=self._unit_id(request),
                attempt=body["attempt"],
                error=body["error"],
                retryable=body["retryable"],
            )
            span.done(task.traceparent, accepted=accepted, status=task.status, retryable=body["retryable"])
        return Response({"taskId": task.pk, "attempt": body["attempt"], "status": task.status, "accepted": accepted})

    @extend_schema(responses=StatsBody, summary="Counts by status and type")
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        return Response(task_stats(self._tasks(request)))

    def _report_span(self, outcome: str, request: Request, pk: str, body: dict[str, Any]) -> Any:
        return tracing.report_span(
            outcome,
            tracing.header_traceparent(request.headers),
            **{"task.id": int(pk), "attempt": body["attempt"], "unit.id": self._unit_id(request)},
        )

    @staticmethod
    def _unit_id(request: Request) -> str:
        unit = principal_of(request).unit
        assert unit is not None  # HasScope lets only unit tokens call these actions
        return str(unit.pk)
