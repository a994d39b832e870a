from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_builtin_metrics(sender, using: str = "default", apps=None, **kwargs) -> None:
    """The built-in metrics, created after every migrate (and every test flush)."""
    if apps is not None:
        try:
            apps.get_model("rollouts", "Metric")
        except LookupError:  # rollouts not migrated (yet) in this database
            return
    from rollouts.metrics import ensure_builtin_metrics

    ensure_builtin_metrics(using)


class RolloutsConfig(AppConfig):
    name = "rollouts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from approvals import dispatch, evidence, outcomes
        from rollouts import dispatching, tasks
        from rollouts import evidence as rollout_evidence

        post_migrate.connect(create_builtin_metrics, sender=self, dispatch_uid="rollouts.builtin_metrics")
        for kind in ("rollback", "fallback", "expansion"):
            outcomes.register(kind, tasks.on_approval_closed)
        dispatch.provide_situation(dispatching.situation)
        dispatch.on_unattended_allow(dispatching.file_review)
        evidence.SIGNAL_PROVIDERS["rollouts.rolloutaction"] = rollout_evidence.signals_at_decisions
