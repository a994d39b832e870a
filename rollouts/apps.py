from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "rollouts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from approvals import outcomes
        from rollouts import services

        for kind in ("rollback", "fallback", "expansion"):
            outcomes.register(kind, services.handle_approval_outcome)
