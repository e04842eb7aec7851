from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "taskhub.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
