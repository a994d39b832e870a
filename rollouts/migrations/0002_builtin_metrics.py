from django.db import migrations

# slug, label, unit, direction
BUILTIN = [
    ("quality_score", "Quality score", "", "higher_is_better"),
    ("latency_p95_ms", "Latency p95", "ms", "lower_is_better"),
    ("cost_per_task", "Cost per task", "USD", "lower_is_better"),
    ("error_rate", "Error rate", "", "lower_is_better"),
    ("fallback_rate", "Fallback rate", "", "lower_is_better"),
    ("review_rejection_rate", "Review rejection rate", "", "lower_is_better"),
    ("review_load", "Human review load", "items/h", "lower_is_better"),
    ("trust_score", "User trust score", "", "higher_is_better"),
    ("critical_regressions", "Critical regressions", "count", "lower_is_better"),
]


def add_builtin_metrics(apps, schema_editor):
    Metric = apps.get_model("rollouts", "Metric")
    for slug, label, unit, direction in BUILTIN:
        Metric.objects.update_or_create(slug=slug, defaults={"label": label, "unit": unit, "direction": direction,
                                                             "builtin": True})


class Migration(migrations.Migration):
    dependencies = [("rollouts", "0001_initial")]
    operations = [migrations.RunPython(add_builtin_metrics, migrations.RunPython.noop)]
