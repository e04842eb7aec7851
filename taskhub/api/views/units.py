from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from taskhub.api.errors import ErrorSerializer
from taskhub.api.pagination import page_serializer, paginate
from taskhub.api.principals import principal_of
from taskhub.api.serializers.fields import datetime_or_none
from taskhub.api.serializers.heartbeat import (
    HeartbeatReplySerializer,
    HeartbeatSerializer,
    heartbeat_reply,
    plain_heartbeat,
)
from taskhub.api.serializers.units import (
    ClaimReplySerializer,
    ClaimSerializer,
    RegisteredSerializer,
    RegisterSerializer,
    UnitListQuerySerializer,
    UnitSerializer,
    UnitUpdateSerializer,
    claimed_tasks,
)
from taskhub.api.validation import query_params, validated
from taskhub.base import metrics
from taskhub.base.errors import Forbidden, NotFound
from taskhub.base.syncpool import SERVED
from units import lifecycle, services
from units.claim import ClaimResult, claim
from units.longpoll import ClaimWait
from units.models import ExecutionUnit, UnitStatus
from units.selectors import unit_stats, visible_units
from units.states import CLAIMING

UnitPage = page_serializer("UnitPage", UnitSerializer)
UnitStats = inline_serializer(
    "UnitStats",
    {
        "total": serializers.IntegerField(),
        "byStatus": serializers.DictField(child=serializers.IntegerField()),
        "onlineCapacity": serializers.IntegerField(),
        "runningTasks": serializers.IntegerField(),
        "utilisation": serializers.FloatField(),
    },
)


def _with_running(qs: QuerySet[ExecutionUnit]) -> QuerySet[ExecutionUnit]:
    return qs.annotate(running_tasks=Count("tasks", filter=Q(tasks__status="RUNNING")))


class UnitViewSet(viewsets.ViewSet):
    """Execution units: register, heartbeat, claim (the unit's own token); manage (API keys)."""

    lookup_value_regex = r"[A-Za-z0-9_.:\-]{1,64}"
    required_scopes = {
        "list": "units:read",
        "retrieve": "units:read",
        "stats": "units:read",
        "partial_update": "units:write",
        "destroy": "units:write",
        "register": "units:register",
    }
    # A unit may also drain itself (PATCH {"status": "MAINTENANCE"}), e.g. when it shuts down.
    unit_actions = frozenset({"heartbeat", "claim", "retrieve", "partial_update"})

    def _units(self, request: Request) -> QuerySet[ExecutionUnit]:
        return visible_units(principal_of(request))

    def _own_unit_id(self, request: Request, pk: str) -> str:
        unit = principal_of(request).unit
        assert unit is not None
        if unit.pk != pk:
            raise Forbidden(f"This token belongs to unit {unit.pk}; it cannot act for {pk}")
        return pk

    def _refuse_a_replaced_instance(self, request: Request, instance_id: str) -> None:
        """Checked against the unit row the authentication read with the caller's token (no query),
        so a replaced process is refused before any lock; the claim checks again under the unit
        row lock (units.claim), which closes the race with a replacement committing meanwhile."""
        unit = principal_of(request).unit
        if unit is not None:
            lifecycle.refuse_a_replaced_instance(unit.pk, unit.instance_id, instance_id)

    @extend_schema(parameters=[UnitListQuerySerializer], responses=UnitPage, summary="List execution units")
    def list(self, request: Request) -> Response:
        q = validated(UnitListQuerySerializer, query_params(request))
        qs = self._units(request)
        if "status" in q:
            qs = qs.filter(status=q["status"])
        if "unitType" in q:
            qs = qs.filter(unit_type=q["unitType"])
        return Response(
            paginate(_with_running(qs), q, lambda rows: UnitSerializer(rows, many=True).data, order=("id",))
        )

    @extend_schema(responses=UnitSerializer, summary="Get an execution unit")
    def retrieve(self, request: Request, pk: str) -> Response:
        unit = _with_running(self._units(request)).filter(pk=pk).first()
        if unit is None:
            raise NotFound(f"Execution unit {pk} not found")
        return Response(UnitSerializer(unit).data)

    @extend_schema(
        request=UnitUpdateSerializer,
        responses=UnitSerializer,
        summary="Edit a unit; status MAINTENANCE drains it, ONLINE resumes it",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        changes = validated(UnitUpdateSerializer, request.data)
        principal = principal_of(request)
        if principal.is_unit and changes != {"status": UnitStatus.MAINTENANCE}:
            raise Forbidden("A unit token may only set its own unit's status to MAINTENANCE")
        unit = services.unit_update(pk, changes, queryset=self._units(request), actor=principal.actor)
        return Response(UnitSerializer(unit).data)

    @extend_schema(responses={204: None}, summary="Deregister a unit (its running tasks fail over)")
    def destroy(self, request: Request, pk: str) -> Response:
        services.unit_delete(pk, queryset=self._units(request), actor=principal_of(request).actor)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=RegisterSerializer,
        summary="Register (or re-register) an execution unit",
        responses={
            201: RegisteredSerializer,
            200: OpenApiResponse(RegisteredSerializer, "Re-registered"),
            409: OpenApiResponse(
                ErrorSerializer,
                "`unit_in_use`: another live instance is registered as this unit (details: instanceId, "
                "lastHeartbeatAt, lastHeartbeatSecondsAgo, heartbeatTimeoutSeconds); register with "
                '`"replace": true` to take over.',
            ),
        },
    )
    @action(detail=False, methods=["post"])
    def register(self, request: Request) -> Response:
        data = validated(RegisterSerializer, request.data)
        done = services.unit_register(owner=principal_of(request).api_key, data=data)
        done.unit.running_tasks = 0  # type: ignore[attr-defined]
        body = {
            **UnitSerializer(done.unit).data,
            "token": done.token,
            "heartbeatIntervalSeconds": settings.UNIT_HEARTBEAT_INTERVAL,
            "heartbeatTimeoutSeconds": settings.UNIT_HEARTBEAT_TIMEOUT,
            "clearedDrainAt": datetime_or_none(done.cleared_drain_at),
        }
        return Response(body, status=201 if done.created else 200)

    @extend_schema(
        request=HeartbeatSerializer,
        responses=HeartbeatReplySerializer,
        summary="Heartbeat: liveness, load, running tasks; the reply carries commands",
    )
    @action(detail=True, methods=["post"])
    def heartbeat(self, request: Request, pk: str) -> Response:
        data = request.data
        body = plain_heartbeat(data) or validated(HeartbeatSerializer, data)
        reply = services.unit_heartbeat(
            self._own_unit_id(request, pk),
            current_load=body["current_load"],
            metadata=body.get("metadata"),
            tasks=body.get("tasks"),
            instance_id=body.get("instance_id", ""),
            stopping=body.get("stopping", False),
        )
        return Response(heartbeat_reply(reply))

    @extend_schema(
        request=ClaimSerializer,
        responses=ClaimReplySerializer,
        summary="Claim up to `max` tasks of the unit's type, within its free capacity; with `waitSeconds`, "
        "wait for them (long poll)",
    )
    @action(detail=True, methods=["post"])
    def claim(self, request: Request, pk: str) -> Response:
        body = validated(ClaimSerializer, request.data)
        self._refuse_a_replaced_instance(request, body.get("instance_id", ""))
        unit_id = self._own_unit_id(request, pk)
        wait_seconds = min(body["wait_seconds"], settings.CLAIM_WAIT_MAX)
        if wait_seconds > 0 and _served_by_a_threaded_wsgi_server(request):
            wait_seconds = 0  # a wait would hold one of the server's few threads: answer now
        if wait_seconds > 0 and _known_to_find_nothing(request):
            # The long poll goes straight to its wait, as if this claim had run when the doorbell's
            # probe did (it found nothing, nothing rang since): claiming nothing, changing nothing.
            result = ClaimResult([], UnitStatus.ONLINE)
            metrics.record_claim(principal_of(request).unit.unit_type, 0, ran=False)  # type: ignore[union-attr]
        else:
            result = claim(unit_id, body["max"], now=timezone.now(), instance_id=body.get("instance_id", ""))
        tasks, unit_status = result.tasks, result.unit_status
        reply: dict[str, Any] = {"items": claimed_tasks(tasks), "unitStatus": str(unit_status)}
        if result.hold is not None:
            reply["queue"] = result.hold.as_reply()
        if body["wait_seconds"] > 0:
            reply["waitSeconds"] = wait_seconds
        # A claim its queue's settings held back (paused, limits) does not wait: no doorbell rings
        # when a limit frees up; the reply says when to ask again (`queue.retryAfterSeconds`).
        if not tasks and wait_seconds > 0 and unit_status in CLAIMING and result.hold is None:
            # Nothing now: the async view in front of this one (taskhub.api.views.longpoll) waits.
            unit = principal_of(request).unit
            assert unit is not None
            request._request.taskhub_claim_wait = ClaimWait(  # type: ignore[attr-defined]
                unit.pk, unit.unit_type, body["max"], wait_seconds, unit.token_hash, unit.instance_id
            )
        return Response(reply)

    @extend_schema(responses=UnitStats, summary="Units by status, capacity and utilisation")
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        return Response(unit_stats(self._units(request)))


def _known_to_find_nothing(request: Request) -> bool:
    """Whether the claim may be skipped: the long-poll view (taskhub.api.views.longpoll) knows that
    nothing of the unit's type is claimable now (`taskhub_nothing_claimable`: its doorbell probed
    the type a moment ago, found none claimable, no queue settings, and heard no ring since) and
    the unit, as its authentication read it just now, is ONLINE (a BUSY unit's claim may move it
    to ONLINE; any other status claims nothing and does not wait). Nothing is ever claimed without
    the full claim: a ring during the wait runs it (units.longpoll.claim_again)."""
    nothing_claimable = getattr(request._request, "taskhub_nothing_claimable", None)
    unit = principal_of(request).unit
    return (
        nothing_claimable is not None
        and unit is not None
        and unit.status == UnitStatus.ONLINE
        and bool(nothing_claimable(unit.unit_type))
    )


def _served_by_a_threaded_wsgi_server(request: Request) -> bool:
    """A WSGI server (gunicorn's gthread worker, `WEB_WORKER=wsgi`, runserver) runs the long-poll view
    through async_to_sync in one of its few request threads: a waiting claim would hold that thread
    for its whole wait, and a handful of waiting units would starve every heartbeat (their leases
    then fail over). There the claim answers at once (`waitSeconds: 0` in the reply) and the agent
    polls, as before long polls. Under taskhub.asgi (SERVED) waits hold no thread; Django's test
    client (not multithreaded) keeps its waits for the tests."""
    environ = request._request.META
    return not SERVED.get() and bool(environ.get("wsgi.multithread")) and "wsgi.input" in environ
