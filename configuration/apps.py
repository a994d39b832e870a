from django.apps import AppConfig


class ConfigurationConfig(AppConfig):
    """Ringfence as code: ringfence.yaml, its schema, plan / apply / export, and their API."""

    name = "configuration"
    default_auto_field = "django.db.models.BigAutoField"
