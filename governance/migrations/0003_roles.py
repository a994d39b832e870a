"""The eight roles as groups. They carry no model-level permissions on Workflow: scope is per
object (guardian), so a role can never widen itself to every workflow."""

from django.db import migrations

ROLES = ("approver", "senior_approver", "containment_owner", "release_manager", "manager",
         "auditor", "administrator", "agent")


def forwards(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("governance", "0002_audit_append_only"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
