from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only decision log, its checkpoints and verification, and the auditors' desk."""

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"
