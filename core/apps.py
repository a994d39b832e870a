from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Infrastructure every room uses: problems, idempotency, rate limits, clock, db helpers."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"
