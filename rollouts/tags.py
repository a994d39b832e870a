"""Context tags: what a deployment is expected to change (latency, cost) or a migration or
maintenance window, for a time. Evaluation honours a tag in force (it widens the threshold of the
metric it names, or turns an automatic action into one a person can stop) and says so in the trail.

Audit actions: `rollout.context_tag_added`, `rollout.context_tag_withdrawn`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from audit import log as audit
from core import clock
from core.errors import require
from governance.models import ServiceAccount, Workflow
from rollouts import messages, selectors
from rollouts.actions import clean_reason, is_user
from rollouts.models import ContextTag, Metric, RolloutPlan
from rollouts.plans import validated

AUDIT_ACTIONS = ("rollout.context_tag_added", "rollout.context_tag_withdrawn")

DEFAULT_TAG_METRIC = {ContextTag.Kind.EXPECTED_LATENCY_INCREASE: "latency_p95_ms",
                      ContextTag.Kind.EXPECTED_COST_INCREASE: "cost_per_task"}


@transaction.atomic
def create_context_tag(*, actor: Any, workflow: Workflow, kind: str, ends_at: datetime, reason: str,
                       plan: RolloutPlan | None = None, metric: str | None = None,
                       expected_change_percent: Decimal | None = None,
                       starts_at: datetime | None = None) -> ContextTag:
    """Record what a deployment is expected to change, so evaluation widens thresholds or asks a
    person instead of rolling back. Audit: `rollout.context_tag_added`."""
    require(selectors.may_tag(actor, workflow), "forbidden", f"You may not tag deployments of {workflow.slug}.")
    require(kind in ContextTag.Kind.values, "invalid", f"Choose a tag kind among {', '.join(ContextTag.Kind.values)}.",
            field="kind")
    require(plan is None or plan.workflow_id == workflow.pk, "invalid", "That plan belongs to another workflow.",
            field="plan")
    now = clock.now()
    starts_at = starts_at or now
    require(ends_at > starts_at, "invalid", "The tag must end after it starts.", field="ends_at")
    require(ends_at > now, "invalid", "The tag's window is already over.", field="ends_at")
    longest = timedelta(hours=settings.ROLLOUT_TAG_MAX_HOURS)
    require(ends_at - starts_at <= longest, "invalid",
            f"A tag lasts at most {settings.ROLLOUT_TAG_MAX_HOURS} hours; tag the next window again.",
            field="ends_at")
    reason = clean_reason(reason, required=True, what="Say what is expected and why")
    metric_obj = None
    if kind in ContextTag.WINDOW_KINDS:
        require(not metric and expected_change_percent is None, "invalid",
                "A window tag names no metric and no expected change.", field="metric")
    else:
        metric = metric or DEFAULT_TAG_METRIC.get(kind)
        require(metric, "invalid", "Name the metric that is expected to change.", field="metric")
        metric_obj = Metric.objects.filter(slug=metric).first()
        require(metric_obj is not None, "invalid", f"Unknown metric {metric!r}; register it first.", field="metric")
        if kind == ContextTag.Kind.EXPECTED_LATENCY_INCREASE:
            require(metric_obj.is_latency, "invalid", f"{metric} is not a latency metric.", field="metric")
        if kind == ContextTag.Kind.EXPECTED_COST_INCREASE:
            require(metric_obj.is_cost, "invalid", f"{metric} is not a cost metric.", field="metric")
        if expected_change_percent is not None and not isinstance(expected_change_percent, Decimal):
            expected_change_percent = Decimal(str(expected_change_percent))
        require(expected_change_percent is not None and expected_change_percent.is_finite()
                and Decimal("0") < expected_change_percent <= Decimal("1000"), "invalid",
                "Give the expected change in percent (more than 0, at most 1000).", field="expected_change_percent")
    tag = ContextTag(workflow=workflow, plan=plan, kind=kind, metric=metric_obj,
                     expected_change_percent=expected_change_percent, starts_at=starts_at, ends_at=ends_at,
                     reason=reason, author=actor if is_user(actor) else None,
                     author_service=actor if isinstance(actor, ServiceAccount) else None)
    validated(tag, "")
    tag.save()
    if plan is not None and plan.is_live:
        messages.schedule_evaluation(plan.pk)
    audit.record(actor, "rollout.context_tag_added", tag, workflow=workflow,
                 data={"tag": tag.label, "metric": metric, "plan": plan.pk if plan else None,
                       "starts_at": starts_at, "ends_at": ends_at}, reason=reason)
    return tag


@transaction.atomic
def withdraw_context_tag(tag_id: int, *, actor: Any, reason: str = "") -> ContextTag:
    """End a tag early; evaluation stops honouring it at once. Audit: `rollout.context_tag_withdrawn`."""
    tag = ContextTag.objects.select_for_update(of=("self",)).select_related("workflow").filter(pk=tag_id).first()
    require(tag is not None, "not_found", "This context tag does not exist.")
    require(selectors.may_tag(actor, tag.workflow), "forbidden", f"You may not change tags of {tag.workflow.slug}.")
    require(tag.withdrawn_at is None, "conflict", "This tag is already withdrawn.")
    tag.withdrawn_at = clock.now()
    tag.save(update_fields=["withdrawn_at"])
    audit.record(actor, "rollout.context_tag_withdrawn", tag, workflow=tag.workflow, data={"tag": tag.label},
                 reason=clean_reason(reason, required=False))
    return tag
