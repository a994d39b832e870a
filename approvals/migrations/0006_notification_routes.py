"""Notification routes per workflow (email, Slack, webhook, PagerDuty), and the notices and
channels they need: a rollback that failed or was executed, delivered to Slack or PagerDuty."""

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

EVENTS = ["requested", "window_opened", "escalated", "reminder", "decided", "autonomous_action", "signals_lost"]


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0005_one_notification_outbox"),
        ("governance", "0008_move_to_rooms"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="notice", name="notice_event_valid"),
        migrations.AlterField(
            model_name="notice",
            name="event",
            field=models.CharField(choices=[("requested", "Requested"), ("window_opened", "override window opened"),
                                            ("escalated", "Escalated"), ("reminder", "Reminder"),
                                            ("decided", "Decided"),
                                            ("autonomous_action", "action taken without a person"),
                                            ("signals_lost", "signals lost"),
                                            ("rollback_executed", "rollback executed"),
                                            ("rollback_failed", "rollback failed")], max_length=20),
        ),
        migrations.AddConstraint(
            model_name="notice",
            constraint=models.CheckConstraint(
                condition=models.Q(("event__in", [*EVENTS, "rollback_executed", "rollback_failed"])),
                name="notice_event_valid"),
        ),
        migrations.RemoveConstraint(model_name="delivery", name="delivery_channel_valid"),
        migrations.AlterField(
            model_name="delivery",
            name="channel",
            field=models.CharField(choices=[("email", "Email"), ("webhook", "Webhook"), ("slack", "Slack"),
                                            ("pagerduty", "PagerDuty")], max_length=10),
        ),
        migrations.AddConstraint(
            model_name="delivery",
            constraint=models.CheckConstraint(
                condition=models.Q(("channel__in", ["email", "webhook", "slack", "pagerduty"])),
                name="delivery_channel_valid"),
        ),
        migrations.CreateModel(
            name="NotificationRoute",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("position", models.PositiveSmallIntegerField(default=0)),
                ("events", models.JSONField(blank=True, default=list)),
                ("emails", models.JSONField(blank=True, default=list)),
                ("slack_channel", models.CharField(blank=True, max_length=100)),
                ("webhook_url", models.URLField(blank=True, max_length=2000)),
                ("pagerduty_routing_key_env", models.CharField(blank=True, max_length=100, validators=[
                    django.core.validators.RegexValidator("^[A-Z_][A-Z0-9_]*$",
                                                          "Name an environment variable, e.g. PD_PAYMENTS.")])),
                ("workflow", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                               related_name="notification_routes", to="governance.workflow")),
            ],
            options={
                "ordering": ["workflow", "position"],
                "constraints": [
                    models.UniqueConstraint(fields=("workflow", "position"),
                                            name="notification_route_unique_position"),
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("emails", []), _negated=True),
                            models.Q(("slack_channel", ""), _negated=True),
                            models.Q(("webhook_url", ""), _negated=True),
                            models.Q(("pagerduty_routing_key_env", ""), _negated=True),
                            _connector="OR"),
                        name="notification_route_goes_somewhere"),
                ],
            },
        ),
    ]
