"""What a rollout action's approval request adds to its evidence bundle: the signals each
decision was taken on (registered in approvals.evidence.SIGNAL_PROVIDERS by the app)."""

from __future__ import annotations

from rollouts import retention
from rollouts.models import RolloutAction, Signal


def signals_at_decisions(req, decisions: list) -> list[dict]:
    """The latest sample of each of the plan's rule metrics when each decision was taken (or when
    the request closed without one)."""
    action = RolloutAction.objects.select_related("plan").filter(pk=int(req.subject_id)).first()
    if action is None:
        return []
    plan = action.plan
    metrics = {c.metric_id: c.metric.slug for c in plan.criteria.select_related("metric")}
    metrics.update({t.metric_id: t.metric.slug for t in plan.triggers.select_related("metric")})
    moments = [(f"{d.decided_by.get_username()} ({d.verdict})", d.decided_at) for d in decisions]
    if not moments and req.closed_at:
        moments = [(f"closed ({req.state})", req.closed_at)]
    rows = []
    for label, at in moments:
        for metric_id, slug in sorted(metrics.items(), key=lambda m: m[1]):
            sample = (Signal.objects.filter(plan=plan, metric_id=metric_id, observed_at__lte=at)
                      .order_by("-observed_at").values_list("observed_at", "value").first())
            if sample:
                rows.append({"decision": label, "metric": slug, "value": sample[1], "at": sample[0]})
            elif rolled := retention.value_at(plan.pk, metric_id, at):  # older than SIGNAL_RETENTION_DAYS
                rows.append({"decision": label, "metric": slug, "value": rolled[1], "at": rolled[0],
                             "rolled_up": True})
    return rows
