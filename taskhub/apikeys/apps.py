from django.apps import AppConfig


class ApiKeysConfig(AppConfig):
    name = "taskhub.apikeys"
    label = "apikeys"
    verbose_name = "API keys"
