"""The human-review signals Ringfence computes itself (rollouts.review_signals) become built-in
metrics; `review_load` now counts pending requests per eligible approver. Later databases get the
same rows from rollouts.metrics.BUILTIN after every migrate."""

from django.db import migrations

REVIEW_METRICS = [
    ("review_rejection_rate", "Review rejection rate", ""),
    ("override_rate", "Override rate", ""),
    ("approval_latency_p90", "Approval latency p90", "s"),
    ("review_load", "Human review load", "per approver"),
    ("false_positive_rate", "False-positive rollback rate", ""),
]


def add_review_metrics(apps, schema_editor):
    Metric = apps.get_model("rollouts", "Metric")
    db = schema_editor.connection.alias
    for slug, label, unit in REVIEW_METRICS:
        metric = Metric.objects.using(db).filter(slug=slug).first()
        if metric is None:
            Metric.objects.using(db).create(slug=slug, label=label, unit=unit, direction="lower_is_better",
                                            builtin=True)
        elif metric.builtin:
            Metric.objects.using(db).filter(pk=metric.pk).update(label=label, unit=unit)


class Migration(migrations.Migration):
    dependencies = [("rollouts", "0005_metric_providers")]

    operations = [migrations.RunPython(add_review_metrics, migrations.RunPython.noop)]
