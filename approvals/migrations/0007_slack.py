"""Slack: the message that tells a request in a channel, Slack users linked to people, and which
decisions were taken in Slack."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0006_notification_routes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SlackMessage",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("channel", models.CharField(max_length=100)),
                ("channel_id", models.CharField(blank=True, max_length=32)),
                ("ts", models.CharField(blank=True, max_length=32)),
                ("posted_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField(blank=True, null=True)),
                ("request", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE,
                                              related_name="slack_messages", to="approvals.approvalrequest")),
            ],
            options={
                "ordering": ["request", "channel"],
                "constraints": [models.UniqueConstraint(fields=("request", "channel"),
                                                        name="slack_message_once_per_channel")],
            },
        ),
        migrations.CreateModel(
            name="SlackLink",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("team_id", models.CharField(blank=True, max_length=32)),
                ("slack_user_id", models.CharField(max_length=32)),
                ("linked_at", models.DateTimeField()),
                ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="slack_links",
                                           to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["slack_user_id"],
                "constraints": [models.UniqueConstraint(fields=("team_id", "slack_user_id"),
                                                        name="slack_link_one_per_slack_user")],
            },
        ),
        migrations.CreateModel(
            name="SlackDecision",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("team_id", models.CharField(blank=True, max_length=32)),
                ("slack_user_id", models.CharField(max_length=32)),
                ("decision", models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name="slack",
                                                  to="approvals.decision")),
            ],
        ),
    ]
