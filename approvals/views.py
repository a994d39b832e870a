"""The approver's pages: the queue, a request with its decision panel, and a governed action's
rules. Thin: selectors read, services decide; htmx gets the named partial of the same template,
everyone else the page."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from approvals import eligibility, explain, selectors, services
from approvals.forms import DecisionForm, QueueFilterForm
from approvals.models import ApprovalRequest, Decision
from governance import clock, denials
from governance.errors import TransitionRefused

QUEUE_REFRESH_SECONDS = 5
SOON_SECONDS = 120


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _request_in_scope(request: HttpRequest, pk: int) -> ApprovalRequest:
    """The request if the person may see its workflow; 404 otherwise, so existence is never confirmed."""
    approval = selectors.request_for(request.user, pk)
    if approval is None:
        raise denials.out_of_scope(request, "approval request", pk)
    return approval


@require_GET
@login_required
@vary_on_headers("HX-Request")
def queue(request: HtmxHttpRequest) -> HttpResponse:
    workflows = selectors.queue_workflows(request.user)
    form = QueueFilterForm(request.GET or None, workflows=[w.slug for w in workflows])
    filters = form.filters()
    pending = selectors.queue_for(request.user, filters)
    now = clock.now()
    context = {
        "form": form,
        "rows": list(pending[: selectors.QUEUE_LIMIT]),
        "total": pending.count(),
        "limit": selectors.QUEUE_LIMIT,
        "recent": selectors.recently_closed(request.user),
        "now": now,
        "soon_before": SOON_SECONDS,
        "refresh_seconds": QUEUE_REFRESH_SECONDS,
    }
    template = "approvals/queue.html"
    if request.htmx and not request.htmx.boosted:
        template += "#queue-results"
    return render(request, template, context)


def _detail_context(request: HttpRequest, approval: ApprovalRequest, form: DecisionForm | None = None) -> dict:
    refusal = eligibility.refusal(request.user, approval) if approval.is_pending else None
    mine = approval.decisions.filter(decided_by=request.user).first()
    return {
        "approval": approval,
        "form": form or DecisionForm(approval=approval),
        # A held request cannot be decided (the service refuses it): no form is offered.
        "may_decide": approval.is_pending and not approval.is_held and refusal is None and mine is None,
        "refusal": refusal,
        "mine": mine,
        "approvals": approval.decisions.filter(verdict=Decision.Verdict.APPROVE).count(),
        "rule_line": explain.rule_line(approval.rule) if approval.rule else "",
        "rule_values": explain.values_read(approval.rule) if approval.rule else [],
        "execution": explain.execution_status(approval, selectors.execution_of(approval), clock.now()),
        "history": selectors.history_of(approval),
        "reasons": Decision.Reason.choices,
    }


@require_GET
@login_required
def detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    approval = _request_in_scope(request, pk)
    return render(request, "approvals/request_detail.html", _detail_context(request, approval))


@require_POST
@login_required
def decide(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Approve, reject or override. Errors: 422 (what to fix), 409 (someone else was first: says
    who and when, changes nothing), 403 (not yours to decide). No JavaScript: POST, redirect, GET."""
    approval = _request_in_scope(request, pk)
    form = DecisionForm(request.POST, approval=approval)
    status = 200
    if not form.is_valid():
        status = 422
    else:
        try:
            approval = services.record_decision(approval.pk, actor=request.user, **form.cleaned_data)
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"approval={pk}")
            form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
            status = refusal.status
            approval = selectors.request_for(request.user, pk) or approval
    if status == 200 and not request.htmx:
        return redirect(approval)
    context = _detail_context(request, approval, form if status != 200 else None)
    if not request.htmx:
        return render(request, "approvals/request_detail.html", context, status=status)
    # The panel answers in place; the history below it is refreshed out of band.
    html = render_to_string("approvals/request_detail.html#decision-panel", context, request=request)
    html += render_to_string("approvals/request_detail.html#history", {**context, "oob": True}, request=request)
    return HttpResponse(html, status=status)


@require_GET
@login_required
def action_detail(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """A governed action's live and shadow rules, and where the shadow rules would have answered
    otherwise. Outside the person's workflows: a recorded 404."""
    action = denials.get_in_scope(request, selectors.actions_visible_to(request.user), "governed action",
                                  workflow__slug=slug, name=name)
    live, shadow = selectors.rules_of(action)
    differences = selectors.shadow_differences_of(action)
    recent = list(differences[: selectors.DIFFERENCES_SHOWN])
    context = {
        "action": action,
        "workflow": action.workflow,
        "tier_now": action.workflow.tier_at(clock.now()),
        "tier_line": explain.tier_line(action),
        "live": [(rule, explain.rule_line(rule)) for rule in live],
        "shadow": [(rule, explain.rule_line(rule)) for rule in shadow],
        "live_set": selectors.rules_last_set(action, shadow=False),
        "shadow_set": selectors.rules_last_set(action, shadow=True),
        "differences_total": differences.count() if len(recent) == selectors.DIFFERENCES_SHOWN else len(recent),
        "differences": [(d, json.dumps(d.parameters, ensure_ascii=False, sort_keys=True), explain.answer_line(d.live),
                         explain.answer_line(d.shadow)) for d in recent],
        "differences_shown": selectors.DIFFERENCES_SHOWN,
    }
    return render(request, "approvals/action_detail.html", context)
