"""The built-in metric slugs (DESIGN "Metric names"); custom slugs are registered by
`define_metric` (the configuration file or a page).

Audit actions: `metric.defined`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import log as audit
from core.errors import TransitionRefused, require
from governance.permissions import Role
from governance.services import is_administrator

if TYPE_CHECKING:
    from rollouts.models import Metric

AUDIT_ACTIONS = ("metric.defined",)

# slug, label, unit, direction
BUILTIN = [
    ("quality_score", "Quality score", "", "higher_is_better"),
    ("latency_p95_ms", "Latency p95", "ms", "lower_is_better"),
    ("cost_per_task", "Cost per task", "USD", "lower_is_better"),
    ("error_rate", "Error rate", "", "lower_is_better"),
    ("fallback_rate", "Fallback rate", "", "lower_is_better"),
    ("review_rejection_rate", "Review rejection rate", "", "lower_is_better"),
    ("review_load", "Human review load", "per approver", "lower_is_better"),
    # Computed by Ringfence itself from the queue and the reviews (rollouts.review_signals).
    ("override_rate", "Override rate", "", "lower_is_better"),
    ("approval_latency_p90", "Approval latency p90", "s", "lower_is_better"),
    ("false_positive_rate", "False-positive rollback rate", "", "lower_is_better"),
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


@transaction.atomic
def define_metric(*, actor: AbstractBaseUser, slug: str, label: str, unit: str = "",
                  direction: str = "lower_is_better") -> Metric:
    """Register (or change) a custom metric signals may carry. Administrators and release managers.
    Built-in metrics cannot be changed. Audit: `metric.defined` with what changed."""
    from rollouts.models import Metric

    require(is_administrator(actor) or actor.groups.filter(name=Role.RELEASE_MANAGER).exists(), "forbidden",
            "Only administrators and release managers register metrics.")
    metric = Metric.objects.select_for_update().filter(slug=slug).first()
    require(metric is None or not metric.builtin, "conflict", f"{slug} is a built-in metric; it cannot be changed.",
            field="slug")
    before = {} if metric is None else {"label": metric.label, "unit": metric.unit, "direction": metric.direction}
    metric = metric or Metric(slug=slug, builtin=False)
    metric.label, metric.unit, metric.direction = label, unit, direction
    try:
        metric.full_clean()
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        raise TransitionRefused("invalid", f"{name}: {' '.join(messages)}", field=name) from None
    metric.save()
    after = {"label": label, "unit": unit, "direction": direction}
    audit.record(actor, "metric.defined", metric, data={"slug": slug, "created": not before, **after,
                                                       **({"before": before} if before else {})})
    return metric
