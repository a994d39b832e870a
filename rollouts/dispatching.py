"""What rollouts add to an agent's dispatch (registered in RolloutsConfig.ready):

- the workflow's context tags in force, for rules (`tags`), and the tier they ask for: a migration
  or maintenance window lowers dispatch to tier 3 (gated), as it turns automatic rollbacks into
  recommendations;
- the fallback mode of a plan in fallback: `read_only` and `manual_path` deny agent actions,
  `human_review` sends every one of them to a person;
- a post-facto review for every action dispatch allowed at tier 1, beside the reviews of
  autonomous rollout actions.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from approvals.dispatch import Situation
from approvals.models import Execution
from core import clock
from governance.models import Workflow
from rollouts.models import ActionReview, ContextTag, PlanState, RolloutPlan

GATED = 3


def situation(workflow: Workflow, at: datetime) -> Situation:
    tags: dict[str, object] = {}
    lowered_by = ""
    in_force = (ContextTag.objects.filter(workflow=workflow, withdrawn_at__isnull=True, starts_at__lte=at,
                                          ends_at__gt=at).order_by("starts_at", "pk"))
    for tag in in_force:
        if tag.kind in ContextTag.WINDOW_KINDS:
            tags[tag.kind] = True
            if not lowered_by:
                until = timezone.localtime(tag.ends_at).strftime("%H:%M")
                lowered_by = f"tier lowered to {GATED} by the {tag.get_kind_display()} tag until {until}: {tag.reason}"
        else:
            percent = float(tag.expected_change_percent)
            tags[tag.kind] = max(percent, float(tags.get(tag.kind, 0.0)))  # type: ignore[arg-type]
    plan = (RolloutPlan.objects.filter(workflow=workflow, state=PlanState.FALLBACK).exclude(active_fallback_mode="")
            .order_by("-updated_at").first())
    return Situation(
        tags=tags, lowered_tier=GATED if lowered_by else None, lowered_by=lowered_by,
        fallback_mode=plan.active_fallback_mode if plan else "",
        fallback_of=f"plan {plan.name}, {plan.release_version}" if plan else "",
    )


def file_review(execution: Execution) -> None:
    """An agent action allowed with no person before it waits for a containment owner's review."""
    ActionReview.objects.get_or_create(execution=execution,
                                       defaults={"workflow_id": execution.workflow_id, "created_at": clock.now()})
