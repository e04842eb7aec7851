"""Webhooks in the operator console: subscriptions (the secret shown once, when added), the outbox
with each delivery's attempts, and "send again" for deliveries that died or must be repeated.
Changing anything needs `console.operate_tasks` (webhooks announce tasks)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from taskhub.console.actions import Outcome, back_to_next, selected_pks
from taskhub.console.permissions import OPERATE_TASKS
from taskhub.webhooks import subscriptions
from taskhub.webhooks.delivery import send_again
from taskhub.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from taskhub.webhooks.services import deliveries_queued, webhook_register
from taskhub.webhooks.ssrf import UnsafeURL, check_url
from tasks.states import TaskStatus

VIEW_TASKS = "tasks.view_task"


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    statuses = forms.MultipleChoiceField(
        choices=TaskStatus.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The states whose entry is delivered (none ticked: every change).",
    )

    class Meta:
        model = WebhookSubscription
        fields = ("url", "statuses", "task_type", "task_id", "is_active")

    def clean_url(self) -> str:
        url = str(self.cleaned_data["url"])
        try:
            check_url(url)
        except UnsafeURL as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


class OperatorRights:
    """Who may see webhooks: whoever may see tasks (they announce tasks); change them: operators."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(VIEW_TASKS))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(VIEW_TASKS))

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return bool(request.user.has_perm(OPERATE_TASKS))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(OPERATE_TASKS))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(OPERATE_TASKS))

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(OPERATE_TASKS))


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(OperatorRights, admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ("id", "url", "owner", "events", "task_type", "task_id", "is_active", "created_at")
    list_filter = ("is_active",)
    list_select_related = ("owner",)
    search_fields = ("url",)
    readonly_fields = ("owner", "created_at")

    def delete_model(self, request: HttpRequest, obj: WebhookSubscription) -> None:
        super().delete_model(request, obj)
        subscriptions.invalidate()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WebhookSubscription]) -> None:
        super().delete_queryset(request, queryset)
        subscriptions.invalidate()

    @admin.display(description="events")
    def events(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.statuses) or "every change"

    def save_model(self, request: HttpRequest, obj: WebhookSubscription, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            subscriptions.invalidate()  # this node at once; the others within WEBHOOK_SUBSCRIPTIONS_TTL
            return
        # An operator's webhook (no key): every task's changes. Made by the API's service, so the
        # URL is checked the same way and the secret made once; shown here, and never again.
        made = webhook_register(
            owner=None,
            url=obj.url,
            statuses=obj.statuses or [],
            task_type=obj.task_type,
            task_id=obj.task_id,
            now=timezone.now(),
        )
        obj.pk = made.pk
        messages.warning(request, f"Signing secret of webhook #{made.pk} (shown once): {made.secret}")


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("number", "started_at", "status_code", "ok", "duration_ms", "error")
    readonly_fields = fields
    ordering = ("-id",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm(VIEW_TASKS))


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(OperatorRights, admin.ModelAdmin):
    list_display = (
        "id",
        "state",
        "subscription",
        "history_id",
        "task_id",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "short_error",
        "created_at",
    )
    list_filter = ("status",)
    list_select_related = ("subscription",)
    search_fields = ("=task_id", "=history_id")
    readonly_fields = [f.name for f in WebhookDelivery._meta.concrete_fields]
    inlines = [AttemptInline]
    actions = ["send_again_action"]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="status", ordering="status")
    def state(self, obj: WebhookDelivery) -> SafeString:
        return format_html('<span class="th-badge th-delivery-{}">{}</span>', obj.status.lower(), obj.status)

    @admin.display(description="last error")
    def short_error(self, obj: WebhookDelivery) -> str:
        return obj.last_error[:80]

    @admin.action(
        description="Send selected deliveries again (due now, attempts counted afresh)", permissions=["operate"]
    )
    def send_again_action(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> HttpResponse | None:
        pks = selected_pks(queryset)
        outcome = Outcome("Queued again", "delivery", "deliveries")
        outcome.changed = pks[: send_again(pks[:1000], timezone.now())]
        deliveries_queued()
        outcome.report(request)
        return back_to_next(request)
