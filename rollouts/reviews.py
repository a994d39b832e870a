"""Review of autonomous actions: containment owners judge each action that ran with no person
before it (a rollout action at tier 1 or after an override window ran out, or an agent action
dispatch allowed at tier 1) as correct or a false positive with a reason category. The judgement
goes through `review_action` (audited as `rollout.action_reviewed`) and feeds the dashboards'
false-positive figures; the reviews page is below it.

Audit actions: `rollout.action_reviewed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from django import forms
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from approvals import explain
from audit import log as audit
from audit.models import AuditEvent
from core import clock, denials
from core.errors import TransitionRefused, require
from governance.models import ContainmentAssignment
from governance.selectors import workflows_visible_to
from rollouts import selectors
from rollouts.actions import MAX_REASON, is_user
from rollouts.models import ActionReview

AUDIT_ACTIONS = ("rollout.action_reviewed",)
RECENT = 20


@transaction.atomic
def review_action(review_id: int, *, actor: AbstractBaseUser, verdict: str, reason: str = "",
                  note: str = "") -> ActionReview:
    """A containment owner judges an autonomous action: correct, or a false positive with a
    reason category. Audit: `rollout.action_reviewed`."""
    review = (ActionReview.objects.select_for_update(of=("self",)).select_related("workflow", "action", "execution")
              .filter(pk=review_id).first())
    require(review is not None, "not_found", "This review does not exist.")
    require(is_user(actor) and bool(selectors.duties_of(actor, review.workflow)), "forbidden",
            f"Only containment owners of {review.workflow.slug} review its autonomous actions.")
    require(review.is_pending, "already_decided",
            f"{review.reviewed_by.get_username() if review.reviewed_by_id else 'Someone'} "
            "already reviewed this action.")
    require(verdict in (ActionReview.Verdict.CORRECT, ActionReview.Verdict.FALSE_POSITIVE), "invalid",
            "Choose correct or false positive.", field="verdict")
    if verdict == ActionReview.Verdict.FALSE_POSITIVE:
        require(reason in ActionReview.Reason.values and reason, "invalid",
                "Say why it was a false positive (expected behaviour, noise, known change, other).", field="reason")
    else:
        reason = ""
    note = (note or "").strip()
    require(len(note) <= MAX_REASON, "invalid", "Keep the note under 2,000 characters.", field="note")
    review.verdict, review.reason, review.note = verdict, reason, note
    review.reviewed_by, review.reviewed_at = actor, clock.now()
    review.save(update_fields=["verdict", "reason", "note", "reviewed_by", "reviewed_at"])
    if review.action_id is not None:
        subject, what = review.action.plan, {"action": review.action_id, "kind": review.action.kind}
    else:
        subject, what = review.execution, {"execution": review.execution_id, "kind": "agent_action"}
    audit.record(actor, "rollout.action_reviewed", subject, workflow=review.workflow,
                 data={"review": review.pk, **what, "verdict": verdict, "reason_category": reason}, reason=note)
    return review


class ReviewForm(forms.Form):
    verdict = forms.ChoiceField(choices=[(v, label) for v, label in ActionReview.Verdict.choices if v],
                                widget=forms.RadioSelect)
    reason = forms.ChoiceField(choices=ActionReview.Reason.choices, required=False,
                               label="Reason category (for a false positive)")
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


def review_form(review_id: int, data: dict | None = None) -> ReviewForm:
    return ReviewForm(data, auto_id=f"id_%s-{review_id}")  # several forms on one page: unique ids


def reviews_for(user) -> QuerySet[ActionReview]:
    """Reviews of the workflows in the person's scope where they hold a containment duty."""
    owned = ContainmentAssignment.objects.filter(user=user).values("workflow_id")
    return (ActionReview.objects.filter(workflow__in=workflows_visible_to(user), workflow_id__in=owned)
            .select_related("workflow", "action__plan", "action__trigger__metric", "reviewed_by",
                            "execution__service_account"))


@dataclass(frozen=True)
class Allowed:
    """What the dispatch that allowed an agent action said: why, at which tier, for which call."""

    reason: str
    tier: int | None
    parameters: str
    rule: str


def with_dispatch(reviews: Iterable[ActionReview]) -> list[ActionReview]:
    """Sets `allowed` on each review of an agent action, from its `dispatch.allowed` event (one query)."""
    reviews = list(reviews)
    executions = [r.execution for r in reviews if r.execution_id is not None]
    events = {}
    if executions:
        # The event is written after the grant, in its transaction: the time bound keeps the scan short.
        found = AuditEvent.objects.filter(action="dispatch.allowed", data__execution__in=[x.pk for x in executions],
                                          occurred_at__gte=min(x.granted_at for x in executions))
        events = {e.data.get("execution"): e for e in found}
    for review in reviews:
        event = events.get(review.execution_id)
        review.allowed = None if event is None else Allowed(
            # "Rule 1 allows it: …" would only repeat the rule line
            reason="" if event.data.get("code") == "allowed_by_rule" else event.reason, tier=event.data.get("tier"),
            parameters=json.dumps(event.data.get("parameters") or {}, ensure_ascii=False, sort_keys=True),
            rule=explain.rule_line(event.data["rule"]) if event.data.get("rule") else "")
    return reviews


def _context(user, forms_by_review: dict | None = None) -> dict:
    pending = with_dispatch(reviews_for(user).filter(verdict="").order_by("created_at", "pk"))
    forms_by_review = forms_by_review or {}
    return {
        "pending": [(r, forms_by_review.get(r.pk) or review_form(r.pk)) for r in pending],
        "recent": reviews_for(user).exclude(verdict="").order_by("-reviewed_at", "-pk")[:RECENT],
    }


@require_GET
@login_required
def review_list(request: HttpRequest) -> HttpResponse:
    return render(request, "rollouts/reviews.html", _context(request.user))


@require_POST
@login_required
@vary_on_headers("HX-Request")
def review(request: HttpRequest, pk: int) -> HttpResponse:
    target = denials.get_in_scope(request, ActionReview.objects.filter(workflow__in=workflows_visible_to(request.user)),
                                  "review", pk=pk)
    form = review_form(target.pk, request.POST)
    status = 200
    if form.is_valid():
        try:
            target = review_action(target.pk, actor=request.user, **form.cleaned_data)
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"review={pk}")
            form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
            status = refusal.status
    else:
        status = 422
    if status == 200 and not request.htmx:
        return redirect("rollouts:reviews")
    if not request.htmx:
        return render(request, "rollouts/reviews.html", _context(request.user, {target.pk: form}), status=status)
    target.refresh_from_db()
    with_dispatch([target])
    return render(request, "rollouts/reviews.html#review-card", {"review": target, "form": form}, status=status)
