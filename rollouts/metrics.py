"""The built-in metric slugs (DESIGN "Metric names"); custom slugs are registered in the admin."""

from __future__ import annotations

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


def ensure_builtin_metrics(using: str = "default") -> int:
    """Create the built-in metrics that are missing (after every migrate and database flush)."""
    from rollouts.models import Metric

    existing = set(Metric.objects.using(using).values_list("slug", flat=True))
    missing = [Metric(slug=slug, label=label, unit=unit, direction=direction, builtin=True)
               for slug, label, unit, direction in BUILTIN if slug not in existing]
    Metric.objects.using(using).bulk_create(missing, ignore_conflicts=True)
    return len(missing)
