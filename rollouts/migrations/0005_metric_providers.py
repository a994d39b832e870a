import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

ENV_NAME = django.core.validators.RegexValidator("^[A-Z_][A-Z0-9_]{0,99}$",
                                                 "The name of an environment variable (A-Z, 0-9, _).")


class Migration(migrations.Migration):
    dependencies = [("rollouts", "0004_containment_under_real_signals")]

    operations = [
        migrations.CreateModel(
            name="MetricProvider",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("prometheus", "Prometheus (PromQL instant query)"),
                                                   ("datadog", "Datadog (metrics query API)"),
                                                   ("web", "web (JSON endpoint and a JSONPath)")], max_length=20)),
                ("url", models.CharField(max_length=500)),
                ("query", models.TextField(max_length=4000)),
                ("segment_label", models.CharField(blank=True, max_length=100)),
                ("api_key_env", models.CharField(blank=True, max_length=100, validators=[ENV_NAME])),
                ("app_key_env", models.CharField(blank=True, max_length=100, validators=[ENV_NAME])),
                ("headers", models.JSONField(blank=True, default=dict)),
                ("interval_seconds", models.PositiveIntegerField(
                    default=60, validators=[django.core.validators.MinValueValidator(1)])),
                ("timeout_seconds", models.FloatField(default=10.0, validators=[
                    django.core.validators.MinValueValidator(0.1), django.core.validators.MaxValueValidator(120)])),
                ("max_failures", models.PositiveSmallIntegerField(
                    default=3, validators=[django.core.validators.MinValueValidator(1)])),
                ("metric", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name="provider",
                                                to="rollouts.metric")),
            ],
            options={
                "ordering": ["metric"],
                "constraints": [
                    models.CheckConstraint(condition=models.Q(("kind__in", ["prometheus", "datadog", "web"])),
                                           name="provider_kind_valid"),
                    models.CheckConstraint(condition=models.Q(("interval_seconds__gte", 1)),
                                           name="provider_interval_positive"),
                    models.CheckConstraint(condition=models.Q(("timeout_seconds__gte", 0.1),
                                                              ("timeout_seconds__lte", 120)),
                                           name="provider_timeout_range"),
                    models.CheckConstraint(condition=models.Q(("max_failures__gte", 1)),
                                           name="provider_max_failures_positive"),
                    models.CheckConstraint(
                        condition=models.Q(models.Q(("kind", "datadog"), _negated=True),
                                           models.Q(models.Q(("api_key_env", ""), _negated=True),
                                                    models.Q(("app_key_env", ""), _negated=True)),
                                           _connector="OR"),
                        name="provider_datadog_has_keys"),
                ],
            },
        ),
        migrations.CreateModel(
            name="MetricFetch",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("ring", models.PositiveSmallIntegerField(blank=True, null=True)),
                ("segment", models.CharField(blank=True, max_length=120)),
                ("started_at", models.DateTimeField()),
                ("duration_ms", models.PositiveIntegerField(default=0)),
                ("status", models.CharField(choices=[("running", "Running"), ("ok", "Ok"), ("error", "Error"),
                                                     ("empty", "Empty"), ("timeout", "Timeout")],
                                            default="running", max_length=10)),
                ("value", models.FloatField(blank=True, null=True)),
                ("error", models.CharField(blank=True, max_length=500)),
                ("failures", models.PositiveSmallIntegerField(default=0)),
                ("metric", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+",
                                             to="rollouts.metric")),
                ("plan", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="metric_fetches",
                                           to="rollouts.rolloutplan")),
            ],
            options={
                "ordering": ["-started_at", "-id"],
                "indexes": [models.Index(fields=["plan", "metric", "-started_at"], name="fetch_plan_metric_idx")],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["running", "ok", "error", "empty", "timeout"])),
                        name="fetch_status_valid"),
                    models.CheckConstraint(
                        condition=models.Q(models.Q(("status", "ok"), _negated=True), ("value__isnull", False),
                                           _connector="OR"),
                        name="fetch_ok_has_value"),
                ],
            },
        ),
    ]
