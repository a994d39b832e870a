"""Notice to the owners of a duty when an action ran without a person before it (tier 1, or an
override window that ran out): what happened, on what evidence, and that a review is due."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage

from governance.models import ContainmentAssignment
from rollouts.models import DUTY_FOR_ACTION, RolloutAction

PAST = {"rollback": "rolled back", "fallback": "switched to its fallback mode", "expand": "opened its next ring"}


def describe(action: RolloutAction) -> tuple[str, str]:
    plan = action.plan
    what = PAST.get(action.kind, action.kind)
    subject = f"{plan.workflow.slug}: {plan.release_version} {what} automatically"
    trigger = action.evidence.get("trigger", {})
    lines = [
        f"{plan.name} ({plan.workflow.slug}) {what} without a person deciding first "
        f"(autonomy tier {action.tier}, {action.handling.replace('_', ' ')}).",
        "",
        f"Why: {action.reason or 'see the evidence'}",
    ]
    if trigger:
        lines.append(f"Rule: {trigger.get('rule')}; worst value {trigger.get('value')} over {trigger.get('samples')} samples.")
    if action.evidence.get("context_tag"):
        lines.append(f"Context tag: {action.evidence['context_tag'].get('label')}")
    lines += ["", "Review it (correct, or a false positive and why):",
              f"{settings.SITE_URL}{plan.get_absolute_url()}"]
    return subject, "\n".join(lines)


def notify_autonomous_action(action_id: int) -> int:
    """Email the primary and backup owners of the action's duty; returns how many were sent."""
    action = RolloutAction.objects.select_related("plan__workflow").filter(pk=action_id).first()
    if action is None:
        return 0
    duty = DUTY_FOR_ACTION[action.kind]
    addresses = sorted({a.user.email for a in ContainmentAssignment.objects.filter(
        workflow=action.plan.workflow, duty=duty).select_related("user") if a.user.email and a.user.is_active})
    if not addresses:
        return 0
    subject, body = describe(action)
    for address in addresses:
        EmailMessage(f"[Ringfence] {subject}", body, settings.DEFAULT_FROM_EMAIL, [address]).send()
    return len(addresses)
