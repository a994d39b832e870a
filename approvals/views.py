"""The approver's pages: the queue, a request with its decision panel, a governed action's rules
(with their editor and the "try it" box) and a workflow's escalation policies. Thin: selectors
read, services decide; htmx gets the named partial of the same template, everyone else the page."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from approvals import eligibility, explain, selectors, services, trying
from approvals.forms import (
    DecisionForm,
    LevelForm,
    LevelFormSet,
    PolicyForm,
    QueueFilterForm,
    RemoveActionForm,
    RuleForm,
    RuleFormSet,
    TryForm,
)
from approvals.models import ActionRule, ApprovalRequest, Decision, EscalationPolicy, Mode
from core import clock, denials
from core.errors import TransitionRefused
from governance import selectors as governance_selectors
from governance import services as services_of_governance
from governance.forms import ActionForm
from governance.models import GovernedAction, Workflow

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
    rows = list(pending[: selectors.QUEUE_LIMIT])
    owners = governance_selectors.containment_owners_of(r.workflow_id for r in rows)
    for row in rows:
        row.containment_owners = owners.get(row.workflow_id, [])
    context = {
        "form": form,
        "rows": rows,
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


def _words(role: str) -> str:
    return str(role).replace("_", " ")


def _escalation_ladder(approval: ApprovalRequest) -> dict:
    """Who the request's policy asks, level by level, and which of them decide now: a level adds
    its people to the earlier levels' unless it replaces them (EscalationLevel.replaces_previous),
    the rule approvals.eligibility applies."""
    levels = list(approval.policy.levels.prefetch_related("groups", "people").order_by("position"))
    rows = []
    for level in levels:
        who = [_words(g.name) + "s" for g in level.groups.all()] + [p.get_username() for p in level.people.all()]
        rows.append({"number": level.position + 1, "who": ", ".join(who) or "nobody named",
                     "timeout": level.timeout_seconds, "replaces": level.replaces_previous,
                     "current": level.position == approval.level})
    current = next((r for r in rows if r["current"]), None)
    if current is None or not approval.is_pending:
        how = ""
    elif current["number"] == 1:
        how = f"Level 1 asks {current['who']}."
    elif current["replaces"]:
        how = f"Level {current['number']} replaces the earlier levels: only {current['who']} decide now."
    else:
        how = f"Level {current['number']} adds {current['who']} to the earlier levels: all of them can decide."
    if approval.approver_roles:
        roles = " and ".join(f"a {_words(role)}" for role in approval.approver_roles)
        how += f" The rule asks {roles} among the approvers, from the first level on."
    return {"levels": rows, "how": how.strip(), "terminal": approval.policy.get_terminal_action_display()}


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
        "ladder": _escalation_ladder(approval),
    }


@require_GET
@login_required
def detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    approval = _request_in_scope(request, pk)
    return render(request, "approvals/request_detail.html", _detail_context(request, approval))


def _back_to(request: HttpRequest) -> str:
    """`next`: the page of ours a decision was taken from, if it is one."""
    url = request.POST.get("next", "")
    ok = url.startswith("/") and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()})
    return url if ok else ""


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
        back = _back_to(request)
        if back:  # decided from another page (a rollout's override window): back there, saying how it ended
            messages.success(request, f"Request #{approval.pk}: {approval.outcome_summary()}")
            return redirect(back)
        return redirect(approval)
    context = _detail_context(request, approval, form if status != 200 else None)
    if not request.htmx:
        return render(request, "approvals/request_detail.html", context, status=status)
    # The panel answers in place; the history below it is refreshed out of band.
    html = render_to_string("approvals/request_detail.html#decision-panel", context, request=request)
    html += render_to_string("approvals/request_detail.html#history", {**context, "oob": True}, request=request)
    return HttpResponse(html, status=status)


def _action_in_scope(request: HttpRequest, slug: str, name: str) -> GovernedAction:
    """The governed action if the person may see its workflow; a recorded 404 otherwise."""
    return denials.get_in_scope(request, selectors.actions_visible_to(request.user), "governed action",
                                workflow__slug=slug, name=name)


def _rule_formset(action: GovernedAction, *, shadow: bool, data: QueryDict | None = None,
                  live_rules: list[ActionRule] | None = None) -> RuleFormSet:
    prefix = "shadow" if shadow else "live"
    initial = [RuleForm.initial_of(rule) for rule in (live_rules or [])]
    return RuleFormSet(data, initial=initial, prefix=prefix,
                       form_kwargs={"policies": selectors.gate_policies_for(action.workflow)})


def _action_context(request: HttpRequest, action: GovernedAction, **given: object) -> dict:
    workflow = action.workflow
    live, shadow = selectors.rules_of(action)
    differences = selectors.shadow_differences_of(action)
    recent = list(differences[: selectors.DIFFERENCES_SHOWN])
    agents = list(workflow.service_accounts.filter(active=True).values_list("name", flat=True))
    return {
        "action": action,
        "workflow": workflow,
        "tier_now": workflow.tier_at(clock.now()),
        "tier_line": explain.tier_line(action),
        "live": [(rule, explain.rule_line(rule)) for rule in live],
        "shadow": [(rule, explain.rule_line(rule)) for rule in shadow],
        "live_set": selectors.rules_last_set(action, shadow=False),
        "shadow_set": selectors.rules_last_set(action, shadow=True),
        "differences_total": differences.count() if len(recent) == selectors.DIFFERENCES_SHOWN else len(recent),
        "differences": [(d, json.dumps(d.parameters, ensure_ascii=False, sort_keys=True), explain.answer_line(d.live),
                         explain.answer_line(d.shadow)) for d in recent],
        "differences_shown": selectors.DIFFERENCES_SHOWN,
        "may_set_up": governance_selectors.may_set_up(request.user, workflow),
        "edit_form": given.get("edit_form") or ActionForm(instance=action, workflow=workflow, declaring=False),
        "remove_form": given.get("remove_form") or RemoveActionForm(),
        "live_rules": given.get("live_rules") or _rule_formset(action, shadow=False, live_rules=live),
        "shadow_rules": given.get("shadow_rules") or _rule_formset(action, shadow=True, live_rules=shadow),
        "try_form": given.get("try_form") or TryForm(agents=agents, initial={"agent": agents[0] if agents else ""}),
        "trial": given.get("trial"),
        "editing": given.get("editing", ""),
    }


@require_GET
@login_required
def action_detail(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """A governed action's live and shadow rules, where the shadow rules would have answered
    otherwise, and a box to try a call on them; for release managers and administrators, the
    forms that change the action and its rules. Outside the person's workflows: a recorded 404."""
    action = _action_in_scope(request, slug, name)
    return render(request, "approvals/action_detail.html", _action_context(request, action))


def _refused_here(request: HttpRequest, refusal: TransitionRefused, form: forms.Form, what: str) -> int:
    denials.refused(request, refusal, what)
    form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
    return refusal.status


@require_POST
@login_required
def action_edit(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """Change the action's risk, quorum or description (define_action: workflow.action_defined)."""
    action = _action_in_scope(request, slug, name)
    form = ActionForm(request.POST, instance=action, workflow=action.workflow, declaring=False)
    status = 422
    if form.is_valid():
        data = form.cleaned_data
        try:
            services_of_governance.define_action(action.workflow_id, actor=request.user, name=action.name,
                                                 risk=data["risk"], quorum=data["quorum"],
                                                 description=data["description"])
            return redirect("approvals:action", slug, name)
        except TransitionRefused as refusal:
            status = _refused_here(request, refusal, form, f"define action {slug}:{name}")
    action.refresh_from_db()
    return render(request, "approvals/action_detail.html", _action_context(request, action, edit_form=form),
                  status=status)


@require_POST
@login_required
def action_remove(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """Stop governing the action (remove_action: workflow.action_removed); back to the workflow."""
    action = _action_in_scope(request, slug, name)
    form = RemoveActionForm(request.POST)
    status = 422
    if form.is_valid():
        try:
            services_of_governance.remove_action(action.pk, actor=request.user)
            return redirect(action.workflow)
        except TransitionRefused as refusal:
            status = _refused_here(request, refusal, form, f"remove action {slug}:{name}")
    return render(request, "approvals/action_detail.html", _action_context(request, action, remove_form=form),
                  status=status)


RULE_FIELD = re.compile(r"^rules\[(\d+)\](?:\.(\w+))?$")


def _place_refusal(formset: RuleFormSet, ordered: list[RuleForm], refusal: TransitionRefused) -> None:
    """Put the service's refusal next to the rule (and field) it names: `rules[1].condition`."""
    found = RULE_FIELD.match(refusal.field or "")
    if found is None or int(found.group(1)) >= len(ordered):
        formset._non_form_errors = formset.error_class([refusal.message])  # noqa: SLF001
        return
    form, field = ordered[int(found.group(1))], found.group(2)
    message = refusal.message.split(": ", 1)[1] if refusal.message.startswith("rules[") else refusal.message
    form.add_error(field if field in form.fields else None, message)


@require_POST
@login_required
def action_rules(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    """Replace the live or the shadow rule list (set_action_rules: action.rules_set). "Add a rule"
    shows the same form with one more row and saves nothing. A refused list changes nothing; each
    error is shown at the rule that has it."""
    action = _action_in_scope(request, slug, name)
    shadow = request.POST.get("which") == "shadow"
    data = request.POST
    adding = "add" in data
    if adding:
        data = data.copy()
        key = f"{'shadow' if shadow else 'live'}-TOTAL_FORMS"
        data[key] = str(int(data.get(key) or 0) + 1)
    formset = _rule_formset(action, shadow=shadow, data=data)
    status = 200 if adding else 422
    if not adding and formset.is_valid():
        ordered = list(formset.ordered_forms)
        try:
            services.set_action_rules(action.pk, actor=request.user, shadow=shadow,
                                      rules=[form.spec() for form in ordered])
            return redirect(reverse("approvals:action", args=[slug, name]) + ("#shadow-h" if shadow else "#live-h"))
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"rules {slug}:{name}")
            _place_refusal(formset, ordered, refusal)
            status = refusal.status
    context = _action_context(request, action, **{"shadow_rules" if shadow else "live_rules": formset},
                              editing="shadow" if shadow else "live")
    return render(request, "approvals/action_detail.html", context, status=status)


@require_POST
@login_required
def action_try(request: HtmxHttpRequest, slug: str, name: str) -> HttpResponse:
    """Try a call on the action's rules: the answer a dispatch would get now. Writes nothing."""
    action = _action_in_scope(request, slug, name)
    agents = {a.name: a for a in action.workflow.service_accounts.filter(active=True).select_related("owner")}
    form = TryForm(request.POST, agents=list(agents))
    trial = None
    if form.is_valid():
        data = form.cleaned_data
        trial = trying.try_call(action, parameters=data["parameters"], evidence=data["evidence"],
                                confidence=data["confidence"], account=agents.get(data["agent"]), at=clock.now())
    context = _action_context(request, action, try_form=form, trial=trial)
    template = "approvals/action_detail.html" + ("#try-it" if request.htmx else "")
    return render(request, template, context, status=200 if trial else 422)


def _policy_context(request: HttpRequest, workflow: Workflow, form: PolicyForm | None = None,
                    levels: LevelFormSet | None = None) -> dict:
    own, defaults = selectors.policies_of(workflow)
    mode = request.GET.get("mode", Mode.GATE)
    hours = request.GET.get("hours", EscalationPolicy.Hours.ANY)
    editing = next((p for p in own if p.mode == mode and p.hours == hours), None)
    start = editing or next((p for p in defaults if p.mode == mode and p.hours == hours), None)
    if form is None:
        terminal = start.terminal_action if start else ""
        form = PolicyForm(initial={"mode": mode, "hours": hours, "terminal_action": terminal})
    if levels is None:
        initial = [LevelForm.initial_of(level) for level in start.levels.all()] if start else [{"unit": 60}]
        levels = LevelFormSet(initial=initial, prefix="levels")
    covered = {(p.mode, p.hours) for p in own}
    return {
        "workflow": workflow,
        "own": own,
        "defaults": [p for p in defaults if (p.mode, p.hours) not in covered],
        "form": form,
        "levels": levels,
        "editing": editing,
        "may_set_up": governance_selectors.may_set_up(request.user, workflow),
    }


LEVEL_FIELD = re.compile(r"^levels\[(\d+)\](?:\.(\w+))?$")


def _place_level_refusal(form: PolicyForm, levels: LevelFormSet, submitted: list[LevelForm],
                         refusal: TransitionRefused) -> None:
    """Put the service's refusal next to the level (and field) it names: `levels[0].timeout_seconds`."""
    found = LEVEL_FIELD.match(refusal.field or "")
    if found is not None and int(found.group(1)) < len(submitted):
        level, field = submitted[int(found.group(1))], found.group(2)
        field = {"timeout_seconds": "timeout"}.get(field, field)
        level.add_error(field if field in level.fields else None, refusal.message)
    elif refusal.field == "levels":
        levels._non_form_errors = levels.error_class([refusal.message])  # noqa: SLF001
    else:
        form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)


@require_http_methods(["GET", "POST"])
@login_required
def escalation(request: HttpRequest, slug: str) -> HttpResponse:
    """A workflow's escalation policies (and the defaults it falls back on); release managers and
    administrators set one per mode and hours (define_policy: approval.policy_defined)."""
    workflow = denials.get_in_scope(request, governance_selectors.workflows_visible_to(request.user), "workflow",
                                    slug=slug)
    if request.method == "GET":
        return render(request, "approvals/escalation.html", _policy_context(request, workflow))
    data = request.POST
    adding = "add" in data
    if adding:
        data = data.copy()
        data["levels-TOTAL_FORMS"] = str(int(data.get("levels-TOTAL_FORMS") or 0) + 1)
    form, levels = PolicyForm(data), LevelFormSet(data, prefix="levels")
    status = 200 if adding else 422
    if not adding and form.is_valid() and levels.is_valid():
        submitted = [level for level in levels.forms if level not in levels.deleted_forms and level.has_changed()]
        try:
            policy = services.define_policy(actor=request.user, workflow=workflow,
                                            levels=[level.level() for level in submitted], **form.cleaned_data)
            query = urlencode({"mode": policy.mode, "hours": policy.hours})
            return redirect(f"{reverse('approvals:escalation', args=[slug])}?{query}#policy-{policy.pk}")
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"policy workflow={slug}")
            _place_level_refusal(form, levels, submitted, refusal)
            status = refusal.status
    return render(request, "approvals/escalation.html", _policy_context(request, workflow, form, levels),
                  status=status)
