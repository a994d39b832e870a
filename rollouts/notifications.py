"""Notices to containment owners: an action that ran without a person before it (tier 1, or an
override window that ran out), with its evidence and the review that is due; and "signals lost",
the moment a trigger's samples stop arriving, with what was done about it."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage

from governance.models import ContainmentAssignment, Workflow
from rollouts import services
from rollouts.models import DUTY_FOR_ACTION, RolloutAction, SignalLoss

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
        lines.append(f"Rule: {trigger.get('rule')}; {trigger.get('note') or 'breached'} "
                     f"(mean {trigger.get('value')} over {trigger.get('samples')} samples).")
    for tag in action.evidence.get("context_tags") or ([action.evidence["context_tag"]]
                                                       if action.evidence.get("context_tag") else []):
        lines.append(f"Context tag: {tag.get('label')} "
                     f"({tag.get('effect')}{': ' + tag['detail'] if tag.get('detail') else ''})")
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


def owners_of(workflow: Workflow) -> list[str]:
    """Every containment owner of the workflow (any duty, primary or backup) with an address."""
    return sorted({a.user.email for a in ContainmentAssignment.objects.filter(workflow=workflow).select_related("user")
                   if a.user.email and a.user.is_active})


def describe_loss(loss: SignalLoss) -> tuple[str, str]:
    plan = loss.plan
    subject = f"{plan.workflow.slug}: signals lost on {plan.release_version} ({loss.metric.slug})"
    trigger = loss.evidence.get("trigger", {})
    lines = [
        (f"{plan.name} ({plan.workflow.slug}, {plan.get_state_display().lower()} at ring {plan.current_ring}) has had "
         f"too few samples of {loss.metric.slug} for its trigger \"{loss.rule}\" "
         f"(at least {loss.evidence.get('min_samples')} within {loss.evidence.get('no_data_after'):g} s)."),
        f"Last sample received: {loss.since:%Y-%m-%d %H:%M:%S %Z}.",
        "",
        (f"Done: {loss.outcome}. No ring opens until samples are back, and the expansion criteria count only "
         "samples that arrive after that."),
    ]
    if loss.evidence.get("late_samples"):
        lines.append(f"{loss.evidence['late_samples']} samples arrived too late to count.")
    if trigger.get("status") == "fired":
        lines.append(f"Its last window breached: {trigger.get('note')}.")
    elif trigger.get("samples"):
        lines.append(f"Its last window: mean {trigger.get('value')} over {trigger.get('samples')} samples.")
    lines += ["", f"{settings.SITE_URL}{plan.get_absolute_url()}"]
    return subject, "\n".join(lines)


def notify_signals_lost(loss_id: int) -> int:
    """Email every containment owner of the workflow; returns how many were sent. Once: the loss is
    claimed before sending (a second caller sends nothing) and released if sending fails."""
    if not services.claim_loss_notice(loss_id):
        return 0
    loss = SignalLoss.objects.select_related("plan__workflow", "metric").get(pk=loss_id)
    addresses = owners_of(loss.plan.workflow)
    subject, body = describe_loss(loss)
    try:
        for address in addresses:
            EmailMessage(f"[Ringfence] {subject}", body, settings.DEFAULT_FROM_EMAIL, [address]).send()
    except Exception:
        services.release_loss_notice(loss_id)
        raise
    services.note_loss_notified(loss_id, len(addresses))
    return len(addresses)
