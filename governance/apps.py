from django.apps import AppConfig
from django.db.models.signals import post_migrate


def grant_administrator_model_permissions(sender, **kwargs) -> None:
    """Administrators manage users, roles, service accounts and scope in the Django admin.

    These model-level permissions never widen workflow scope: selectors ask guardian with
    accept_global_perms=False.
    """
    from django.contrib.auth.models import Group, Permission

    from governance.permissions import Role

    # The roles also come from migration 0003; creating any that are missing here keeps them in
    # place after a database flush (which removes migration data but re-emits post_migrate).
    using = kwargs.get("using", "default")
    state = kwargs.get("apps")
    try:
        if state is not None:
            state.get_model("auth", "Group")
    except LookupError:  # auth not migrated (yet) in this database
        return
    for role in Role:
        Group.objects.using(using).get_or_create(name=role)
    group = Group.objects.using(using).get(name=Role.ADMINISTRATOR)
    perms = Permission.objects.using(using).filter(
        content_type__app_label__in=["auth", "governance", "guardian"]).exclude(
        codename__in=["approve_workflow", "contain_workflow", "manage_rollouts"])
    group.permissions.add(*perms)


class GovernanceConfig(AppConfig):
    name = "governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(grant_administrator_model_permissions, sender=self)
