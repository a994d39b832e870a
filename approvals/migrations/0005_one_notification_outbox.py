"""One notification outbox for approvals and rollouts.

A notice no longer needs an approval request: it names its subject (as the audit log does) and its
workflow, and a notice that is not an approval's carries its own title, body, link and recipients.
Every existing notice keeps its row and its deliveries; it is backfilled as an approval notice
about its request, in its request's workflow. Undone, the notices without a request (the rollouts')
are deleted, as the old schema cannot hold them.
"""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import CharField, OuterRef, Subquery
from django.db.models.functions import Cast


def _check_foreign_keys_now(schema_editor):
    """So that the table can be altered after these rows changed, in the same transaction."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def name_subjects_and_workflows(apps, schema_editor):
    _check_foreign_keys_now(schema_editor)
    Notice = apps.get_model("approvals", "Notice")
    ApprovalRequest = apps.get_model("approvals", "ApprovalRequest")
    Notice.objects.filter(request__isnull=False).update(
        source="approval",
        subject_type="approvals.approvalrequest",
        subject_id=Cast("request_id", CharField()),
        workflow_id=Subquery(ApprovalRequest.objects.filter(pk=OuterRef("request_id")).values("workflow_id")[:1]),
    )


def drop_notices_without_a_request(apps, schema_editor):
    _check_foreign_keys_now(schema_editor)
    apps.get_model("approvals", "Notice").objects.filter(request__isnull=True).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0004_callbacks"),
        ("governance", "0008_move_to_rooms"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="notice", name="notice_event_valid"),
        migrations.AddField(
            model_name="notice",
            name="source",
            field=models.CharField(choices=[("approval", "Approval"), ("rollout", "Rollout")], default="approval",
                                   max_length=20),
        ),
        migrations.AlterField(
            model_name="notice",
            name="request",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="notices", to="approvals.approvalrequest"),
        ),
        migrations.AddField(
            model_name="notice",
            name="workflow",
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.CASCADE, related_name="notices",
                                    to="governance.workflow"),
        ),
        migrations.AddField(
            model_name="notice",
            name="subject_type",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="notice",
            name="subject_id",
            field=models.CharField(default="", max_length=64),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="notice",
            name="event",
            field=models.CharField(choices=[("requested", "Requested"), ("window_opened", "override window opened"),
                                            ("escalated", "Escalated"), ("reminder", "Reminder"),
                                            ("decided", "Decided"),
                                            ("autonomous_action", "action taken without a person"),
                                            ("signals_lost", "signals lost")], max_length=20),
        ),
        migrations.AlterField(
            model_name="notice",
            name="level",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(model_name="notice", name="title", field=models.CharField(blank=True, max_length=300)),
        migrations.AddField(model_name="notice", name="body", field=models.TextField(blank=True)),
        migrations.AddField(model_name="notice", name="link", field=models.CharField(blank=True, max_length=500)),
        migrations.AddField(model_name="notice", name="recipients", field=models.JSONField(blank=True, default=list)),
        migrations.AddField(model_name="notice", name="data", field=models.JSONField(blank=True, default=dict)),
        migrations.RunPython(name_subjects_and_workflows, drop_notices_without_a_request),
        migrations.AlterField(
            model_name="notice",
            name="workflow",
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="notices",
                                    to="governance.workflow"),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.UniqueConstraint(condition=models.Q(("request__isnull", True)),
                                               fields=("subject_type", "subject_id", "event"),
                                               name="notice_once_per_subject"),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.CheckConstraint(
                condition=models.Q(("event__in", ["requested", "window_opened", "escalated", "reminder", "decided",
                                                  "autonomous_action", "signals_lost"])),
                name="notice_event_valid"),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.CheckConstraint(condition=models.Q(("source__in", ["approval", "rollout"])),
                                              name="notice_source_valid"),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("request__isnull", False), ("source", "approval")),
                    models.Q(("request__isnull", True), models.Q(("source", "approval"), _negated=True),
                             models.Q(("title", ""), _negated=True)),
                    _connector="OR"),
                name="notice_request_or_text"),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.CheckConstraint(
                condition=models.Q(models.Q(("subject_type", ""), _negated=True),
                                   models.Q(("subject_id", ""), _negated=True)),
                name="notice_subject_named"),
        ),
    ]
