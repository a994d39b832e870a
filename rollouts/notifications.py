"""Notices to containment owners: an action that ran without a person before it (tier 1, or an
override window that ran out), with its evidence and the review that is due; and "signals lost",
the moment a trigger's samples stop arriving, with what was done about it; and a rollback that
failed for good, or took effect after one had failed (`open_rollback_notice`).

All go through the one notification outbox (`approvals.notifications.enqueue`): the notice is
opened in a transaction here and, once committed, delivered by this process (a worker: the
evaluation that noticed, or the task the change published), not behind the queue, by email to the
owners and to the notification webhook, or along the workflow's routes; a rollback's notice is
opened in the executor's transaction and delivered by the queue, so that worker never waits on it.
A failed or lost delivery is retried, then given up, by the outbox's sweep. Each is told once: a
notice is unique per (subject, event), and a signal loss is claimed in the transaction that opens
its notice.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from approvals import notifications as outbox
from approvals import routing
from approvals.models import Notice
from governance.models import ContainmentAssignment, Workflow
from rollouts import signals
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
    """Tell the primary and backup owners of the action's duty, once; returns how many people the
    notice is addressed to (0 when there is no such action or it was told already)."""
    action = RolloutAction.objects.select_related("plan__workflow").filter(pk=action_id).first()
    if action is None:
        return 0
    plan = action.plan
    duty = DUTY_FOR_ACTION[action.kind]
    addresses = sorted({a.user.email for a in ContainmentAssignment.objects.filter(
        workflow=plan.workflow, duty=duty).select_related("user") if a.user.email and a.user.is_active})
    subject, body = describe(action)
    with transaction.atomic():
        notice = outbox.enqueue(
            source=Notice.Source.ROLLOUT, event=Notice.Event.AUTONOMOUS_ACTION, subject=action,
            workflow=plan.workflow, recipients=addresses, title=subject, body=body,
            link=f"{settings.SITE_URL}{plan.get_absolute_url()}",
            data={"plan": plan.pk, "action": action.pk, "kind": action.kind, "tier": action.tier,
                  "handling": action.handling, "release_version": plan.release_version, "duty": duty},
            at_once=True)
    return len(addresses) if notice is not None else 0


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
    """Tell every containment owner of the workflow, once; returns how many people the notice is
    addressed to. The loss is claimed in the transaction that opens the notice: a second caller
    tells nobody, and a failure leaves the loss unclaimed for the next evaluation."""
    with transaction.atomic():
        if not signals.claim_loss_notice(loss_id):
            return 0
        loss = SignalLoss.objects.select_related("plan__workflow", "metric").get(pk=loss_id)
        plan = loss.plan
        addresses = owners_of(plan.workflow)
        subject, body = describe_loss(loss)
        notice = outbox.enqueue(
            source=Notice.Source.ROLLOUT, event=Notice.Event.SIGNALS_LOST, subject=loss, workflow=plan.workflow,
            recipients=addresses, title=subject, body=body, link=f"{settings.SITE_URL}{plan.get_absolute_url()}",
            data={"plan": plan.pk, "signal_loss": loss.pk, "metric": loss.metric.slug, "rule": loss.rule,
                  "since": loss.since.isoformat(), "on_no_data": loss.on_no_data, "outcome": loss.outcome},
            at_once=True)
        if notice is None:
            return 0
        signals.note_loss_notified(loss_id, len(addresses))
    return len(addresses)


def open_rollback_notice(action: RolloutAction, *, failed: bool) -> Notice | None:
    """Inside the transaction in which a rollback failed for good or took effect: open its notice
    (`rollback_failed` / `rollback_executed`), delivered after commit. A failure is told to the
    owners of the rollback duty. A success is told when a rollback of the plan had failed before,
    or when the workflow routes its notices (the owners otherwise hear of it as they asked for it,
    or through the autonomous action's notice). Routes send either where the workflow wants it;
    PagerDuty pages on the failure and resolves on the success."""
    plan = action.plan
    event = Notice.Event.ROLLBACK_FAILED if failed else Notice.Event.ROLLBACK_EXECUTED
    failed_before = Notice.objects.filter(workflow=plan.workflow, event=Notice.Event.ROLLBACK_FAILED,
                                          data__plan=plan.pk).exists()
    if not failed and not failed_before and not routing.routes_of(plan.workflow_id):
        return None
    owners = sorted({a.user.email for a in ContainmentAssignment.objects.filter(
        workflow=plan.workflow, duty=ContainmentAssignment.Duty.ROLLBACK).select_related("user")
        if a.user.email and a.user.is_active}) if failed or failed_before else []
    why = action.result.get("failed", "")
    if failed:
        subject = f"{plan.workflow.slug}: rollback of {plan.release_version} failed"
        lines = [f"{plan.name} ({plan.workflow.slug}) could not roll back to {plan.stable_version}: "
                 f"the {action.executor} executor failed after {action.attempts} attempt(s).", "",
                 f"Why: {why or 'see the attempts'}",
                 f"{plan.release_version} still serves; roll back by hand or ask for the rollback again."]
    else:
        subject = f"{plan.workflow.slug}: {plan.release_version} rolled back to {plan.stable_version}"
        lines = [f"{plan.name} ({plan.workflow.slug}) rolled back to {plan.stable_version} "
                 f"({action.executor} executor, {action.attempts} attempt(s))."]
    link = f"{settings.SITE_URL}{plan.get_absolute_url()}"
    return outbox.enqueue(
        source=Notice.Source.ROLLOUT, event=event, subject=action, workflow=plan.workflow, recipients=owners,
        title=subject, body="\n".join([*lines, "", link]), link=link,
        data={"plan": plan.pk, "action": action.pk, "kind": action.kind, "release_version": plan.release_version,
              "stable_version": plan.stable_version, "executor": action.executor, "attempts": action.attempts,
              **({"error": why} if failed else {})})
