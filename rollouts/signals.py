"""Metric signals of a live rollout: bulk ingest, and "signals lost" when a trigger's samples stop.

Samples are stored in one statement (COPY into a staging table, then INSERT … ON CONFLICT DO
NOTHING) and not audited one by one: the decisions they lead to are. Every batch schedules a
debounced evaluation (rollouts.evaluator), which records a loss here and closes it when samples
are back. (Metric samples, not Django signals.)

Audit actions: `rollout.signals_lost` (with `rollout.paused` or a proposal, as the trigger's
`on_no_data` says, and `rollout.action_cancelled` for the expansions it freezes),
`rollout.signals_restored`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, connection, transaction

from audit import log as audit
from core import clock
from core.errors import TransitionRefused, require
from core.publishing import publish
from rollouts import evaluation, messages, selectors
from rollouts.actions import MAX_REASON, SYSTEM, ActionState, Kind, Origin, action_data, cancel_open, new_action
from rollouts.models import DEFAULT_ALLOWED_LATENESS, RollbackTrigger, RolloutPlan, Signal, SignalLoss
from rollouts.plans import lock_plan, move_plan
from rollouts.proposals import propose_action

PlanState = RolloutPlan.State

AUDIT_ACTIONS = ("rollout.signals_lost", "rollout.paused", "rollout.signals_restored")


@dataclass(frozen=True)
class IngestResult:
    received: int
    stored: int
    late: int = 0  # stored, but received too long after they were measured to count

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


def ingest_signals(plan: RolloutPlan, rows: list[tuple[int, int | None, str, datetime, float]]) -> IngestResult:
    """Store samples (metric id, ring, segment, observed_at, value) in one statement.

    Samples already stored under the same (plan, metric, time, segment) are duplicates: the first
    value is kept and the count says how many were skipped. A sample received more than its
    metric's allowed lateness (the largest of its triggers' `allowed_lateness`) after it was
    measured is stored flagged `late`: counted on the plan page, never evaluated. Signals are not
    audited one by one (the decisions they lead to are). Schedules a debounced evaluation after
    commit: every arrival, late or not, re-evaluates.
    """
    require(plan.is_live, "conflict",
            f"Plan {plan.pk} is {plan.get_state_display()}; signals are accepted for live rollouts only.")
    if not rows:
        return IngestResult(0, 0)
    now = clock.now()
    cutoffs = {metric_id: now - lateness for metric_id, lateness in
               selectors.lateness_by_metric(list(plan.triggers.only("metric_id", "allowed_lateness"))).items()}
    default_cutoff = now - DEFAULT_ALLOWED_LATENESS
    with transaction.atomic():
        stored, late = _insert_signals(plan.pk, rows, now, cutoffs, default_cutoff)
        messages.schedule_evaluation(plan.pk)
    return IngestResult(len(rows), stored, late)


_STAGE_TYPES = ("int8", "int2", "text", "timestamptz", "float8")


def _insert_signals(plan_id: int, rows: list[tuple], now: datetime, cutoffs: dict[int, datetime],
                    default_cutoff: datetime) -> tuple[int, int]:
    """Insert the rows, skipping duplicates; returns how many were stored and how many of those late."""
    if connection.vendor == "postgresql":
        # COPY into a transaction-scoped staging table, then one INSERT … SELECT that skips duplicates:
        # COPY moves the rows at near-raw speed and ON CONFLICT keeps the first value of a sample.
        cases = " ".join("WHEN %s THEN observed_at < %s" for _ in cutoffs)
        late = f"CASE metric_id {cases} ELSE observed_at < %s END" if cutoffs else "observed_at < %s"
        params = [value for pair in cutoffs.items() for value in pair] + [default_cutoff]
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS rollouts_signal_stage (metric_id bigint, ring smallint, "
                "segment text, observed_at timestamptz, value float8) ON COMMIT DELETE ROWS")
            with cursor.cursor.copy("COPY rollouts_signal_stage FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_STAGE_TYPES)  # binary: no text to format and parse for each value
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                "WITH stored AS (INSERT INTO rollouts_signal "
                "(plan_id, metric_id, ring, segment, observed_at, value, received_at, late) "
                f"SELECT %s, metric_id, ring, segment, observed_at, value, %s, {late} FROM rollouts_signal_stage "
                "ON CONFLICT (plan_id, metric_id, observed_at, segment) DO NOTHING RETURNING late) "
                "SELECT count(*), count(*) FILTER (WHERE late) FROM stored",
                [plan_id, now, *params],
            )
            stored, late_count = cursor.fetchone()
            return stored, late_count
    before = Signal.objects.filter(plan_id=plan_id).count()
    before_late = Signal.objects.filter(plan_id=plan_id, late=True).count()
    try:
        Signal.objects.bulk_create(
            [Signal(plan_id=plan_id, metric_id=m, ring=r, segment=s, observed_at=t, value=v, received_at=now,
                    late=t < cutoffs.get(m, default_cutoff))
             for m, r, s, t, v in rows], ignore_conflicts=True, batch_size=2000)
    except IntegrityError as exc:
        raise TransitionRefused("invalid", f"A sample was refused by the database: {exc}") from None
    return (Signal.objects.filter(plan_id=plan_id).count() - before,
            Signal.objects.filter(plan_id=plan_id, late=True).count() - before_late)


# -- signals lost ------------------------------------------------------------------------------

@transaction.atomic
def record_signals_lost(plan_id: int, *, trigger_id: int, check: evaluation.Check, tier: int) -> SignalLoss:
    """A trigger of a live plan has had fewer than its minimum samples within its `no_data_after`:
    raise "signals lost" once. Expansion freezes (open expansion proposals are cancelled) and the
    trigger's `on_no_data` is done: notify only; pause an active rollout; or propose a rollback
    handled by the tier. On commit the containment owners are told.

    Audit: `rollout.signals_lost` (and `rollout.paused` or `rollout.action_proposed`)."""
    plan = lock_plan(plan_id)
    require(plan.is_live, "conflict", f"The rollout is {plan.get_state_display()}.")
    trigger = RollbackTrigger.objects.select_related("metric").filter(pk=trigger_id, plan=plan).first()
    require(trigger is not None, "not_found", "This trigger is not one of the plan's.")
    require(not plan.signal_losses.filter(trigger=trigger, restored_at__isnull=True).exists(), "conflict",
            f"Signals of {check.rule} are already recorded as lost.")
    now = clock.now()
    on_no_data = trigger.effective_on_no_data
    late = Signal.objects.filter(plan=plan, metric_id=trigger.metric_id, late=True).count()
    evidence = {"trigger": check.as_evidence(), "no_data_after": trigger.effective_no_data_after.total_seconds(),
                "min_samples": trigger.min_samples, "late_samples": late}
    since = check.last_received_at or plan.started_at or now
    loss = SignalLoss.objects.create(plan=plan, trigger=trigger, metric=trigger.metric, rule=check.rule[:300],
                                     since=min(since, now), detected_at=now, on_no_data=on_no_data, evidence=evidence)
    cancelled = cancel_open(plan, {Kind.EXPAND}, f"signals lost: {check.rule}", actor=SYSTEM)
    reason = f"signals lost: {check.note}"
    audit.record(SYSTEM, "rollout.signals_lost", plan, reason=reason, data={
        "signal_loss": loss.pk, "trigger": trigger.pk, "rule": check.rule, "since": loss.since,
        "on_no_data": on_no_data, "cancelled_expansions": cancelled, "evidence": evidence})
    if on_no_data == RollbackTrigger.NoData.PAUSE:
        if plan.state == PlanState.ACTIVE:
            move_plan(plan, PlanState.PAUSED)
            action = new_action(plan, Kind.PAUSE, state=ActionState.SUCCEEDED, origin=Origin.TRIGGER,
                                handling="on_no_data", reason=reason[:MAX_REASON], trigger=trigger,
                                evidence=evidence)
            audit.record(SYSTEM, "rollout.paused", plan, data=action_data(action, ring=plan.current_ring,
                                                                         signal_loss=loss.pk), reason=reason)
            loss.outcome = f"rollout paused (action {action.pk}); expansion frozen"
        else:
            loss.outcome = f"already {plan.get_state_display().lower()}, so not paused; expansion frozen"
    elif on_no_data == RollbackTrigger.NoData.ROLLBACK:
        handling = evaluation.HANDLING_BY_TIER[tier]
        proposal = propose_action(plan.pk, kind=Kind.ROLLBACK, handling=handling, tier=tier, origin=Origin.TRIGGER,
                                  evidence={**evidence, "signal_loss": loss.pk, "decision": "rollback",
                                            "handling": handling, "reason": reason},
                                  reason=reason, trigger_id=trigger.pk)
        loss.outcome = f"rollback proposed (action {proposal.action.pk}, {handling.replace('_', ' ')})"
    else:
        loss.outcome = "owners notified; expansion frozen"
    loss.save(update_fields=["outcome"])
    loss_id = loss.pk
    transaction.on_commit(lambda: publish("rollouts.tasks.notify_signals_lost", (loss_id,)))
    return loss


@transaction.atomic
def restore_signals(loss_id: int, *, check: evaluation.Check) -> SignalLoss:
    """Samples are back for a trigger whose signals were lost: close the loss. Expansion thaws, but
    criteria count only samples from now on; a pause stays until a person resumes.

    Audit: `rollout.signals_restored`."""
    plan_id = SignalLoss.objects.filter(pk=loss_id).values_list("plan_id", flat=True).first()
    require(plan_id is not None, "not_found", "This signal loss does not exist.")
    plan = lock_plan(plan_id)
    loss = SignalLoss.objects.select_for_update().get(pk=loss_id)
    require(loss.is_open, "conflict", "These signals are already back.")
    loss.restored_at = clock.now()
    loss.save(update_fields=["restored_at"])
    audit.record(SYSTEM, "rollout.signals_restored", plan, data={
        "signal_loss": loss.pk, "rule": loss.rule,
        "lost_for_seconds": (loss.restored_at - loss.detected_at).total_seconds(),
        "samples": check.samples})
    return loss


# Delivery bookkeeping of the "signals lost" notice (not state changes: no audit events).

def claim_loss_notice(loss_id: int) -> bool:
    """Whether this caller is the one to tell the owners (the first to ask)."""
    return SignalLoss.objects.filter(pk=loss_id, notified_at__isnull=True).update(notified_at=clock.now()) == 1


def note_loss_notified(loss_id: int, recipients: int) -> None:
    SignalLoss.objects.filter(pk=loss_id).update(notified_at=clock.now(), notified=recipients)


def untold_losses(plan_id: int | None = None) -> list[int]:
    """Open losses whose owners were not told yet (the notice's message was lost or failed)."""
    losses = SignalLoss.objects.filter(restored_at__isnull=True, notified_at__isnull=True)
    if plan_id is not None:
        losses = losses.filter(plan_id=plan_id)
    return list(losses.values_list("pk", flat=True)[:100])
