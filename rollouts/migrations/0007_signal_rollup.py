import django.db.models.deletion
import django.db.models.functions.comparison
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("rollouts", "0006_review_signals")]

    operations = [
        migrations.CreateModel(
            name="SignalRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("ring", models.PositiveSmallIntegerField(blank=True, null=True)),
                ("segment", models.CharField(blank=True, max_length=120)),
                ("minute", models.DateTimeField()),
                ("count", models.PositiveIntegerField()),
                ("sum", models.FloatField()),
                ("min", models.FloatField()),
                ("max", models.FloatField()),
                ("metric", models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                             related_name="+", to="rollouts.metric")),
                ("plan", models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                           related_name="signal_rollups", to="rollouts.rolloutplan")),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(models.F("plan"), models.F("metric"), models.F("minute"),
                                            django.db.models.functions.comparison.Coalesce("ring", models.Value(-1)),
                                            models.F("segment"), name="signal_rollup_unique_minute"),
                    models.CheckConstraint(condition=models.Q(("count__gte", 1), ("min__lte", models.F("max"))),
                                           name="signal_rollup_consistent"),
                ],
            },
        ),
    ]
