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

import datetime as dt
from datetime import datetime

from django.db import connection
from django.utils import timezone

from approvals.dispatch import Situation
from approvals.models import Execution
from core import clock
from governance.models import Workflow
from rollouts.models import ActionReview, ContextTag, PlanState, RolloutPlan

GATED = 3


# Read on every dispatch, allow and pending alike: two plain reads, not two ORM queries, whose
# compilation and model instances cost a dispatch about 7× the reads themselves.
_TAGS_IN_FORCE = (f"SELECT kind, expected_change_percent, ends_at, reason FROM {ContextTag._meta.db_table} "
                  "WHERE workflow_id = %s AND withdrawn_at IS NULL AND starts_at <= %s AND ends_at > %s "
                  "ORDER BY starts_at, id")
_PLAN_IN_FALLBACK = (f"SELECT name, release_version, active_fallback_mode FROM {RolloutPlan._meta.db_table} "
                     f"WHERE workflow_id = %s AND state = '{PlanState.FALLBACK}' AND active_fallback_mode <> '' "
                     "ORDER BY updated_at DESC LIMIT 1")


def situation(workflow: Workflow, at: datetime) -> Situation:
    tags: dict[str, object] = {}
    lowered_by = ""
    moment = connection.ops.adapt_datetimefield_value(at)
    with connection.cursor() as cursor:
        cursor.execute(_TAGS_IN_FORCE, [workflow.pk, moment, moment])
        in_force = cursor.fetchall()
        cursor.execute(_PLAN_IN_FALLBACK, [workflow.pk])
        plan = cursor.fetchone()
    for kind, expected_change_percent, ends_at, reason in in_force:
        if kind in ContextTag.WINDOW_KINDS:
            tags[kind] = True
            if not lowered_by:
                if timezone.is_naive(ends_at):  # SQLite answers UTC without its offset
                    ends_at = timezone.make_aware(ends_at, dt.UTC)
                until = timezone.localtime(ends_at).strftime("%H:%M")
                label = ContextTag.Kind(kind).label
                lowered_by = f"tier lowered to {GATED} by the {label} tag until {until}: {reason}"
        else:
            percent = float(expected_change_percent)
            tags[kind] = max(percent, float(tags.get(kind, 0.0)))  # type: ignore[arg-type]
    name, release_version, fallback_mode = plan or ("", "", "")
    return Situation(
        tags=tags, lowered_tier=GATED if lowered_by else None, lowered_by=lowered_by,
        fallback_mode=fallback_mode, fallback_of=f"plan {name}, {release_version}" if plan else "",
    )


def file_review(execution: Execution) -> None:
    """An agent action allowed with no person before it waits for a containment owner's review."""
    ActionReview.objects.get_or_create(execution=execution,
                                       defaults={"workflow_id": execution.workflow_id, "created_at": clock.now()})
