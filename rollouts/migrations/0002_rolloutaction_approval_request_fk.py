"""RolloutAction.approval_request_id (a bare integer) becomes the foreign key `approval_request`.

The column keeps its name and its values: the field changes in the migration state only, then
the constraint and the index are added. An id that names no approval request (none is ever
deleted, so there should be none) is moved into the action's `result` before the constraint
is checked, so the migration cannot fail on it and the id is not lost.
"""

import django.db.models.deletion
from django.db import migrations, models


def keep_orphan_ids(apps, schema_editor):
    RolloutAction = apps.get_model("rollouts", "RolloutAction")
    ApprovalRequest = apps.get_model("approvals", "ApprovalRequest")
    known = ApprovalRequest.objects.filter(pk=models.OuterRef("approval_request_id"))
    orphans = RolloutAction.objects.filter(approval_request_id__isnull=False).exclude(models.Exists(known))
    for action in orphans.only("pk", "approval_request_id", "result"):
        action.result = {**action.result, "missing_approval_request": action.approval_request_id}
        action.approval_request_id = None
        action.save(update_fields=["result", "approval_request_id"])


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0001_initial"),
        ("rollouts", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(keep_orphan_ids, migrations.RunPython.noop, elidable=False),
        # Same column, same values: only the state changes here (no constraint, no index yet).
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="rolloutaction", name="approval_request_id"),
                migrations.AddField(
                    model_name="rolloutaction",
                    name="approval_request",
                    field=models.ForeignKey(blank=True, null=True, db_constraint=False, db_index=False,
                                            on_delete=django.db.models.deletion.PROTECT, related_name="rollout_actions",
                                            to="approvals.approvalrequest"),
                ),
            ],
        ),
        migrations.AlterField(
            model_name="rolloutaction",
            name="approval_request",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="rollout_actions", to="approvals.approvalrequest"),
        ),
    ]
