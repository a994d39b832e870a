"""Rollout pages: the plan list, the plan editor, the plan page with its containment panel, the
context tag form and the metrics. Thin: selectors read, services decide; htmx gets named partials."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from approvals import eligibility
from approvals.models import Decision
from core import clock, denials
from core.errors import TransitionRefused
from governance import selectors as governance_selectors
from rollouts import containment, selectors, tags
from rollouts import plans as rollout_plans
from rollouts.forms import (
    ContainmentForm,
    ContextTagForm,
    CriterionForm,
    CriterionFormSet,
    MetricForm,
    PlanForm,
    RingForm,
    RingFormSet,
    TriggerForm,
    TriggerFormSet,
)
from rollouts.metrics import define_metric
from rollouts.models import FallbackMode, RolloutAction, RolloutPlan


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _plan_in_scope(request: HttpRequest, pk: int) -> RolloutPlan:
    """The plan if the person may see its workflow; 404 otherwise, so existence is never confirmed."""
    return denials.get_in_scope(request, selectors.plans_visible_to(request.user), "rollout plan", pk=pk)


@require_GET
@login_required
def plan_list(request: HttpRequest) -> HttpResponse:
    plans = list(selectors.plans_visible_to(request.user).prefetch_related("rings"))
    live = [p for p in plans if p.is_live]
    return render(request, "rollouts/plan_list.html", {
        "live": live,
        "drafts": [p for p in plans if p.is_editable],
        "closed": [p for p in plans if not p.is_live and not p.is_editable][:30],
        "may_write": selectors.workflows_user_manages(request.user).exists(),
    })


# -- the plan editor ---------------------------------------------------------------------------

def _editor(request: HttpRequest, plan: RolloutPlan | None) -> HttpResponse:
    workflows = selectors.workflows_user_manages(request.user)
    if plan is not None and not workflows.filter(pk=plan.workflow_id).exists():
        raise denials.out_of_scope(request, "rollout plan", plan.pk)
    if plan is None and not workflows.exists():  # no empty form for people who cannot write a plan
        raise denials.forbidden(request, "Rollout plans are written by the release managers of a workflow; "
                                         "no workflow's rollouts are yours to manage.")
    data = request.POST if request.method == "POST" else None
    adding = data.get("add") if data is not None else None
    if adding in ("rings", "criteria", "triggers"):
        data = data.copy()  # "Add a row": the same form again with one more empty row, nothing saved
        data[f"{adding}-TOTAL_FORMS"] = str(int(data.get(f"{adding}-TOTAL_FORMS", 0)) + 1)
    plan_form = PlanForm(data, instance=plan, workflows=workflows if plan is None else None)
    if plan is None:
        initial = ([{"segment_kind": "internal_team", "exposure_percent": 100, "min_soak_minutes": 60}], [], [])
    else:
        initial = (RingForm.initial_of(plan), CriterionForm.initial_of(plan), TriggerForm.initial_of(plan))
    rings = RingFormSet(data, initial=initial[0], prefix="rings")
    criteria = CriterionFormSet(data, initial=initial[1], prefix="criteria")
    triggers = TriggerFormSet(data, initial=initial[2], prefix="triggers")
    status = 200
    if data is not None and not adding:
        valid = all([plan_form.is_valid(), rings.is_valid(), criteria.is_valid(), triggers.is_valid()])
        if valid and not rings.rows():
            rings._non_form_errors = rings.error_class(["Add at least the first ring."])  # noqa: SLF001
            valid = False
        if valid:
            children = {"rings": rings.rows(), "criteria": criteria.rows(), "triggers": triggers.rows()}
            try:
                if plan is None:
                    plan = rollout_plans.create_plan(actor=request.user, workflow=plan_form.cleaned_data["workflow"],
                                                     fields=plan_form.plan_fields(), **children)
                else:
                    plan = rollout_plans.update_plan(plan.pk, actor=request.user, fields=plan_form.plan_fields(),
                                                     **children)
                return redirect(plan)
            except TransitionRefused as refusal:
                denials.refused(request, refusal, f"plan edit {plan.pk if plan else 'new'}")
                plan_form.add_error(None, refusal.message)
                status = refusal.status
        else:
            status = 422
    return render(request, "rollouts/plan_form.html", {
        "plan": plan, "form": plan_form, "rings": rings, "criteria": criteria, "triggers": triggers,
    }, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def plan_create(request: HttpRequest) -> HttpResponse:
    return _editor(request, None)


@require_http_methods(["GET", "POST"])
@login_required
def plan_edit(request: HttpRequest, pk: int) -> HttpResponse:
    plan = _plan_in_scope(request, pk)
    if not plan.is_editable:
        return redirect(plan)
    return _editor(request, plan)


# -- the plan page -----------------------------------------------------------------------------

def _ring_rows(plan: RolloutPlan, evaluation: selectors.PlanEvaluation | None) -> list[dict]:
    rows = []
    for ring in plan.rings.all():
        status = "upcoming"
        if plan.current_ring is not None and plan.state != RolloutPlan.State.ROLLED_BACK:
            status = "done" if ring.order < plan.current_ring else ("current" if ring.order == plan.current_ring
                                                                     else "upcoming")
        if plan.state == RolloutPlan.State.COMPLETED:
            status = "done"
        exposure = ring.exposure_percent
        if status == "current" and plan.exposure_override is not None:
            exposure = min(exposure, plan.exposure_override)
        soak = None
        if status == "current" and evaluation and evaluation.soak_ends_at and plan.ring_opened_at:
            total = max((evaluation.soak_ends_at - plan.ring_opened_at).total_seconds(), 1)
            done = min(max((evaluation.at - plan.ring_opened_at).total_seconds(), 0), total)
            soak = {"percent": round(100 * done / total), "ends_at": evaluation.soak_ends_at,
                    "complete": evaluation.soak_complete}
        rows.append({"ring": ring, "status": status, "exposure": exposure, "soak": soak})
    return rows


def _what_it_does(plan: RolloutPlan, action: RolloutAction) -> tuple[str, str]:
    """What a pending action does when it goes ahead, and what overriding it keeps, in words."""
    release = plan.release_version
    if action.kind == RolloutAction.Kind.ROLLBACK:
        return f"roll back to {action.parameters.get('to_version') or plan.stable_version}", f"keep {release} live"
    if action.kind == RolloutAction.Kind.FALLBACK:
        mode = action.parameters.get("mode") or plan.fallback_mode
        label = FallbackMode(mode).label if mode in FallbackMode.values else "the plan's"
        return f"engage the fallback mode ({label})", f"keep {release} as it is"
    if action.kind == RolloutAction.Kind.EXPAND:
        ring = action.parameters.get("to_ring", (plan.current_ring or 0) + 1)
        return f"open ring {ring}", f"stay at ring {plan.current_ring}"
    if action.parameters.get("from") == "fallback":
        return "leave the fallback mode", "stay in the fallback mode"
    return action.get_kind_display().lower(), "leave the rollout as it is"


def _pending_rows(request: HttpRequest, plan: RolloutPlan, open_actions: list[RolloutAction]) -> list[dict]:
    """The plan's open actions, each with what it does, its deadline and whether this person may
    decide it here (the approval service checks again when they do)."""
    rows = []
    for action in open_actions:
        effect, keep = _what_it_does(plan, action)
        title = ("Leaving the fallback mode" if action.parameters.get("from") == "fallback"
                 else action.get_kind_display().capitalize())
        row = {"action": action, "request": action.approval_request, "effect": effect, "keep": keep, "title": title,
               "may_decide": False, "mine": None, "refusal": None}
        req = action.approval_request
        if req is not None and req.is_pending:
            row["refusal"] = eligibility.refusal(request.user, req)
            row["mine"] = req.decisions.filter(decided_by=request.user).first()
            row["may_decide"] = not req.is_held and row["refusal"] is None and row["mine"] is None
        rows.append(row)
    return rows


def _panels(plan: RolloutPlan, context: dict) -> str:
    """A fingerprint of what the containment and pending panels show: the page's refresh redraws
    them only when it changed, so a reason being typed is never wiped for nothing."""
    exit_ = context["fallback_exit"]
    shown = (plan.state, plan.current_ring, plan.exposure_override, plan.active_fallback_mode,
             [a.action for a in context["available"]], context["duties"],
             [(r["action"].pk, r["action"].state, r["action"].attempts, r["may_decide"], bool(r["mine"]),
               r["request"] and (r["request"].state, r["request"].level, r["request"].due_at.isoformat(),
                                 r["request"].held_at is not None)) for r in context["pending_rows"]],
             exit_ and (exit_.pk, exit_.state))
    return hashlib.sha256(repr(shown).encode()).hexdigest()[:16]


def _detail_context(request: HttpRequest, plan: RolloutPlan, **extra: object) -> dict:
    now = clock.now()
    evaluation = selectors.evaluate(plan, now) if plan.state not in (RolloutPlan.State.DRAFT,) else None
    workflow = plan.workflow
    fallback_exit = selectors.fallback_exit(plan)
    open_actions = list(selectors.open_actions(plan))
    context = {
        "plan": plan,
        "workflow": workflow,
        "now": now,
        "readiness": selectors.readiness(plan),
        "evaluation": evaluation,
        "ring_rows": _ring_rows(plan, evaluation),
        "tags": selectors.tags_in_force(workflow, plan, now),
        "losses": list(selectors.recent_losses(plan)),
        "open_actions": open_actions,
        "pending_rows": _pending_rows(request, plan, open_actions),
        "under_way": [a for a in open_actions if a.state != RolloutAction.State.PENDING_APPROVAL],
        "reasons": Decision.Reason.choices,
        "recent_actions": list(selectors.recent_actions(plan, 15)),
        "fallback_exit": fallback_exit,
        "available": selectors.available_actions(plan, request.user,
                                                 exit_running=bool(fallback_exit and fallback_exit.is_open)),
        "duties": sorted(d.replace("_", " ") for d in selectors.duties_of(request.user, workflow)),
        "owners": governance_selectors.owners_by_duty(workflow),
        "may_manage": selectors.may_manage(request.user, workflow),
        "may_tag": selectors.may_tag(request.user, workflow),
        "form": ContainmentForm(),
        "events": selectors.plan_events(plan),
        "refresh_seconds": settings.ROLLOUT_PAGE_REFRESH_SECONDS,
        **extra,
    }
    context["panels"] = _panels(plan, context)
    return context


def _panels_out_of_band(request: HttpRequest, context: dict) -> str:
    """The pending and containment panels, to be swapped in wherever they are on the page."""
    context = {**context, "oob": True}
    return (render_to_string("rollouts/plan_detail.html#pending", context, request=request)
            + render_to_string("rollouts/plan_detail.html#containment", context, request=request))


@require_GET
@login_required
@vary_on_headers("HX-Request")
def plan_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The plan page. htmx's refresh gets the live part, and the pending and containment panels
    too when what they show changed (`panels`: the fingerprint the page was drawn with)."""
    plan = _plan_in_scope(request, pk)
    context = _detail_context(request, plan)
    if not request.htmx or request.htmx.boosted:
        return render(request, "rollouts/plan_detail.html", context)
    html = render_to_string("rollouts/plan_detail.html#live", context, request=request)
    if request.GET.get("panels") != context["panels"]:
        html += _panels_out_of_band(request, context)
    return HttpResponse(html)


def _plan_answer(request: HtmxHttpRequest, plan: RolloutPlan, context: dict, status: int) -> HttpResponse:
    """htmx: the containment panel in place, the live status and the pending panel out of band;
    otherwise the page."""
    if not request.htmx:
        if status == 200:
            return redirect(plan)
        return render(request, "rollouts/plan_detail.html", context, status=status)
    html = render_to_string("rollouts/plan_detail.html#containment", context, request=request)
    html += render_to_string("rollouts/plan_detail.html#live", {**context, "oob": True}, request=request)
    html += render_to_string("rollouts/plan_detail.html#pending", {**context, "oob": True}, request=request)
    return HttpResponse(html, status=status)


@require_POST
@login_required
def plan_action(request: HtmxHttpRequest, pk: int, action: str) -> HttpResponse:
    """A containment action: 200 (done or scheduled), 422 (what to fix), 409 (the state moved on),
    403 (not the owner of that duty: in the panel for htmx, else the site's 403 page). Nothing changes
    unless the service accepts it."""
    plan = _plan_in_scope(request, pk)
    if action not in containment.CONTAINMENT:
        raise Http404("No such action.")
    form = ContainmentForm(request.POST)
    status = 422
    if form.is_valid():
        data = form.cleaned_data
        kwargs: dict = {"actor": request.user, "reason": data["reason"]}
        if action == "fallback":
            kwargs["mode"] = data["mode"]
        if action == "narrow":
            kwargs.update(to_ring=data["to_ring"], exposure_percent=data["exposure_percent"])
        try:
            done = containment.CONTAINMENT[action](plan.pk, **kwargs)
            status = 200
            form = ContainmentForm()
            form.done = done
        except TransitionRefused as refusal:
            if refusal.status == 403 and not request.htmx:  # the site's 403 page, saying which duty it takes
                raise denials.forbidden(request, refusal.message) from None
            denials.refused(request, refusal, f"{action} plan={pk}")
            form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
            status = refusal.status
    plan.refresh_from_db()
    return _plan_answer(request, plan, _detail_context(request, plan, form=form, attempted=action), status)


@require_POST
@login_required
def plan_launch(request: HtmxHttpRequest, pk: int, step: str) -> HttpResponse:
    """Mark ready, or start. Refused with the readiness items that are missing."""
    plan = _plan_in_scope(request, pk)
    change = {"ready": rollout_plans.mark_ready, "start": rollout_plans.start_rollout}.get(step)
    if change is None:
        raise Http404("No such step.")
    try:
        plan = change(plan.pk, actor=request.user)
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"{step} plan={pk}")
        plan.refresh_from_db()
        context = _detail_context(request, plan, launch_error=refusal.message)
        return render(request, "rollouts/plan_detail.html", context, status=refusal.status)
    return redirect(plan)


# -- context tags ------------------------------------------------------------------------------

@require_http_methods(["GET", "POST"])
@login_required
def tag_create(request: HttpRequest, pk: int) -> HttpResponse:
    plan = _plan_in_scope(request, pk)
    if not selectors.may_tag(request.user, plan.workflow):
        raise denials.out_of_scope(request, "rollout plan", pk)
    form = ContextTagForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 422
        if form.is_valid():
            data = form.cleaned_data
            now = clock.now()
            try:
                tags.create_context_tag(
                    actor=request.user, workflow=plan.workflow, plan=None if data["all_plans"] else plan,
                    kind=data["kind"], metric=data["metric"].slug if data["metric"] else None,
                    expected_change_percent=data["expected_change_percent"], starts_at=now,
                    ends_at=now + timedelta(hours=float(data["hours"])), reason=data["reason"],
                )
                return redirect(plan)
            except TransitionRefused as refusal:
                denials.refused(request, refusal, f"tag plan={pk}")
                form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
                status = refusal.status
    return render(request, "rollouts/tag_form.html", {"plan": plan, "form": form}, status=status)


@require_POST
@login_required
def tag_withdraw(request: HttpRequest, pk: int, tag_id: int) -> HttpResponse:
    plan = _plan_in_scope(request, pk)
    tag = denials.get_in_scope(request, plan.workflow.context_tags.all(), "tag", pk=tag_id)
    try:
        tags.withdraw_context_tag(tag.pk, actor=request.user, reason=request.POST.get("reason", ""))
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"withdraw tag={tag_id}")
        return render(request, "rollouts/plan_detail.html",
                      _detail_context(request, plan, launch_error=refusal.message), status=refusal.status)
    return redirect(plan)


# -- metrics -----------------------------------------------------------------------------------

@require_http_methods(["GET", "POST"])
@login_required
def metrics(request: HttpRequest) -> HttpResponse:
    """The metric names signals, criteria and triggers may use; administrators and release managers
    register custom ones (define_metric: metric.defined). `?slug=` opens a custom metric to change."""
    custom = selectors.custom_metric(request.GET.get("slug", ""))
    form = MetricForm(request.POST or None, initial=custom and {
        "slug": custom.slug, "label": custom.label, "unit": custom.unit, "direction": custom.direction})
    status = 200
    if request.method == "POST":
        status = 422
        if form.is_valid():
            try:
                metric = define_metric(actor=request.user, **form.cleaned_data)
                return redirect(f"{reverse('rollouts:metrics')}#metric-{metric.slug}")
            except TransitionRefused as refusal:
                denials.refused(request, refusal, "define metric")
                form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
                status = refusal.status
    return render(request, "rollouts/metrics.html", {
        "metrics": selectors.all_metrics(), "form": form, "editing": custom,
        "may_define": selectors.may_define_metrics(request.user),
    }, status=status)
