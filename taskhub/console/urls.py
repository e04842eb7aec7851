"""Mounted at /metrics by taskhub/urls.py (Prometheus text; see taskhub/metrics.py for access)."""

from __future__ import annotations

from django.urls import path

from taskhub.metrics import metrics_view

urlpatterns = [path("", metrics_view, name="metrics")]
