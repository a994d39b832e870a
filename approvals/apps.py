from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_default_policies(sender, using: str = "default", apps=None, **kwargs) -> None:
    """The default escalation policies, created after every migrate (and every test flush)."""
    if apps is not None:
        try:
            apps.get_model("approvals", "EscalationPolicy")
        except LookupError:  # approvals not migrated (yet) in this database
            return
    from approvals.policies import ensure_default_policies

    ensure_default_policies(using)


class ApprovalsConfig(AppConfig):
    name = "approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(create_default_policies, sender=self, dispatch_uid="approvals.default_policies")
        from approvals import services
        from governance import services as governance_services

        governance_services.on_pause(services.hold_requests)
        governance_services.on_resume(services.release_requests)
