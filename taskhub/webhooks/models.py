"""Webhooks: subscriptions (a callback URL and the changes it wants), the outbox (one delivery row
per event and subscription, written in the transaction of the change) and each delivery's attempts.

The app sits below `tasks` in the layers so that the one history writer (tasks/history.py) can
write outbox rows in its own transaction without importing upwards: it knows tasks only as ids
(`task_id`, `history_id` are plain integers, not foreign keys)."""

from __future__ import annotations

from django.db import models


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING"  # due at next_attempt_at (also the lease of an attempt in flight)
    DELIVERED = "DELIVERED"  # a 2xx answer was recorded
    DEAD = "DEAD"  # WEBHOOK_MAX_ATTEMPTS attempts failed; "send again" in the console revives it


class WebhookSubscription(models.Model):
    owner = models.ForeignKey(
        "apikeys.ApiKey",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhooks",
        help_text="The API key that registered it: it receives changes of that key's tasks only. "
        "Empty: an operator's, for every task.",
    )
    url = models.URLField(max_length=2000)
    secret = models.CharField(max_length=80, help_text="Signs every delivery (HMAC-SHA256); shown once.")
    statuses = models.JSONField(
        default=list, blank=True, help_text="The states whose entry it wants (empty: every change)."
    )
    task_type = models.CharField(max_length=64, blank=True, default="", help_text="Only tasks of this type.")
    task_id = models.BigIntegerField(null=True, blank=True, help_text="Only this task's changes.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "webhook_subscriptions"
        ordering = ["id"]
        verbose_name = "webhook"

    def __str__(self) -> str:
        return f"#{self.pk} {self.url}"


class WebhookDelivery(models.Model):
    """The outbox: one event for one subscription, written with the history row it announces."""

    id = models.BigAutoField(primary_key=True)
    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    history_id = models.BigIntegerField(help_text="The history row (event id) it announces.")
    task_id = models.BigIntegerField()
    event = models.CharField(max_length=32, default="task.status")
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts since it was (re)queued.")
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_deliveries"
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="webhook_due_idx"),
            # In order per task: a delivery waits while an older one of its subscription and task is pending.
            models.Index(fields=["subscription", "task_id", "status", "id"], name="webhook_order_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} event {self.history_id} -> {self.subscription_id}"


class WebhookAttempt(models.Model):
    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField(default=0.0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="")

    class Meta:
        db_table = "webhook_attempts"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.delivery_id}/{self.number} {self.status_code or self.error[:40]}"
