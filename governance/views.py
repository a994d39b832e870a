"""The workflow pages: the list, a workflow with its kill switch, and the pages that set one up
(a new workflow, its governed actions, containment owners, people's scope, service accounts and
tokens) and people's roles. Thin: selectors read, services decide and audit."""

from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from core import denials
from core.errors import TransitionRefused
from governance import selectors, services
from governance.context_processors import navigation
from governance.forms import (
    PERMISSION_LABELS,
    ActionForm,
    ContainmentOwnerForm,
    PauseForm,
    ResumeForm,
    RolesForm,
    ScopeForm,
    ServiceAccountForm,
    TokenForm,
    WorkflowForm,
)
from governance.models import Workflow
from governance.permissions import CONTAIN, SCOPED_PERMISSIONS, perm


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def workflow_in_scope(request: HttpRequest, slug: str) -> Workflow:
    """The workflow if the user may see it; 404 otherwise, so existence is never confirmed."""
    return denials.get_in_scope(request, selectors.workflows_visible_to(request.user), "workflow", slug=slug)


@login_required
def home(request: HttpRequest) -> HttpResponse:

    items = navigation(request)["nav_items"]
    return redirect(items[0]["url"] if items else "governance:workflow_list")


@login_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    workflows = selectors.workflows_visible_to(request.user).prefetch_related("containment")
    return render(request, "governance/workflow_list.html", {
        "workflows": workflows, "may_create": selectors.may_create_workflows(request.user)})


def _detail_context(request: HttpRequest, workflow: Workflow, **extra: object) -> dict:
    may_contain = request.user.has_perm(perm(CONTAIN), workflow)
    return {
        "workflow": workflow,
        "containment": selectors.containment_for(workflow),
        "actions": workflow.actions.all(),
        "events": selectors.audit_events_for(workflow),
        "may_contain": may_contain,
        "may_set_up": selectors.may_set_up(request.user, workflow),
        "administers": selectors.administers(request.user),
        "owners": selectors.owners_by_duty(workflow),
        "action_form": ActionForm(workflow=workflow),
        "pause_form": PauseForm(),
        "resume_form": ResumeForm(),
        **extra,
    }


@login_required
def workflow_detail(request: HttpRequest, slug: str) -> HttpResponse:
    workflow = workflow_in_scope(request, slug)
    return render(request, "governance/workflow_detail.html", _detail_context(request, workflow))


def _kill_switch(request: HtmxHttpRequest, slug: str, *, pausing: bool) -> HttpResponse:
    workflow = workflow_in_scope(request, slug)
    form = (PauseForm if pausing else ResumeForm)(request.POST)
    refused = ""  # not theirs to pull: 403 saying what they lack, on the site's page or in the panel (htmx)
    if form.is_valid():
        try:
            change = services.pause_workflow if pausing else services.resume_workflow
            workflow = change(workflow.pk, actor=request.user, reason=form.cleaned_data["reason"])
        except TransitionRefused as refusal:
            if refusal.status == 403 and not request.htmx:
                raise denials.forbidden(request, refusal.message) from None
            denials.refused(request, refusal, f"workflow={slug}")
            if refusal.status == 403:
                refused = refusal.message
            else:
                form.add_error(None, refusal.message)
    if not form.errors and not refused and not request.htmx:
        return redirect(workflow)
    context = _detail_context(request, workflow, refused=refused, **{"pause_form" if pausing else "resume_form": form})
    template = "governance/workflow_detail.html" + ("#kill-switch" if request.htmx else "")
    return render(request, template, context, status=403 if refused else 422 if form.errors else 200)


@require_POST
@login_required
def pause(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    return _kill_switch(request, slug, pausing=True)


@require_POST
@login_required
def resume(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    return _kill_switch(request, slug, pausing=False)


# -- setting a workflow up -----------------------------------------------------------------------

def refused_on(form: forms.Form, refusal: TransitionRefused) -> None:
    """A service's refusal shown where the person can act: on its field when the form has it."""
    field = refusal.field if refusal.field in form.fields else None
    form.add_error(field, refusal.message)


def _administrators_only(request: HttpRequest) -> None:
    if not selectors.administers(request.user):
        raise denials.forbidden(request, "Only administrators open this page.")


@require_http_methods(["GET", "POST"])
@login_required
def workflow_create(request: HttpRequest) -> HttpResponse:
    """A new workflow (administrators and release managers); its creator sees it afterwards."""
    if not selectors.may_create_workflows(request.user):
        raise denials.forbidden(request, "Only administrators and release managers create workflows.")
    form = WorkflowForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 422
        if form.is_valid():
            data = form.cleaned_data
            try:
                workflow = services.create_workflow(actor=request.user, slug=data["slug"],
                                                    **{f: data[f] for f in services.WORKFLOW_FIELDS})
                return redirect(workflow)
            except TransitionRefused as refusal:
                denials.refused(request, refusal, "workflow create")
                refused_on(form, refusal)
                status = refusal.status
    return render(request, "governance/workflow_form.html", {"form": form}, status=status)


@require_POST
@login_required
def action_create(request: HttpRequest, slug: str) -> HttpResponse:
    """Declare a governed action; its page is next, for its rules."""
    workflow = workflow_in_scope(request, slug)
    form = ActionForm(request.POST, workflow=workflow)
    status = 422
    if form.is_valid():
        data = form.cleaned_data
        try:
            action = services.define_action(workflow.pk, actor=request.user, name=data["name"], risk=data["risk"],
                                            quorum=data["quorum"], description=data["description"])
            return redirect("approvals:action", workflow.slug, action.name)
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"define action workflow={slug}")
            refused_on(form, refusal)
            status = refusal.status
    return render(request, "governance/workflow_detail.html", _detail_context(request, workflow, action_form=form),
                  status=status)


def _containment_page(request: HttpRequest, workflow: Workflow, form: ContainmentOwnerForm | None = None,
                      error: str = "", status: int = 200) -> HttpResponse:
    return render(request, "governance/containment.html", {
        "workflow": workflow,
        "owners": selectors.owners_by_duty(workflow),
        "may_set_up": selectors.may_set_up(request.user, workflow),
        "form": form or ContainmentOwnerForm(initial={"duty": request.GET.get("duty", "")}),
        "error": error,
        "back": _back(request),
    }, status=status)


def _back(request: HttpRequest) -> str:
    """Where the page was opened from (`?next=`, e.g. a rollout plan), if it is one of ours."""
    url = request.GET.get("next", "")
    ok = url.startswith("/") and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()})
    return url if ok else ""


def _containment_url(workflow: Workflow, request: HttpRequest) -> str:
    back = _back(request)
    url = reverse("governance:containment", args=[workflow.slug])
    return f"{url}?{urlencode({'next': back}, safe='/')}" if back else url


@require_http_methods(["GET", "POST"])
@login_required
def containment(request: HttpRequest, slug: str) -> HttpResponse:
    """Who owns each containment duty; release managers and administrators assign owners."""
    workflow = workflow_in_scope(request, slug)
    if request.method == "GET":
        return _containment_page(request, workflow)
    form = ContainmentOwnerForm(request.POST)
    status = 422
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.assign_containment(workflow.pk, actor=request.user, user=data["user"], duty=data["duty"],
                                        position=data["position"])
            return redirect(_containment_url(workflow, request))
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"assign containment workflow={slug}")
            refused_on(form, refusal)
            status = refusal.status
    return _containment_page(request, workflow, form, status=status)


@require_POST
@login_required
def containment_remove(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    workflow = workflow_in_scope(request, slug)
    assignment = denials.get_in_scope(request, workflow.containment.all(), "containment assignment", pk=pk)
    try:
        services.remove_containment(assignment.pk, actor=request.user)
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"remove containment workflow={slug}")
        return _containment_page(request, workflow, error=refusal.message, status=refusal.status)
    return redirect(_containment_url(workflow, request))


def _scope_page(request: HttpRequest, workflow: Workflow, form: ScopeForm | None = None,
                status: int = 200) -> HttpResponse:
    """Each person's row, and the form that gives a new person scope; a refused form is shown in
    the row of the person it was about, or as the new-person form."""
    failed = form.data.get("user", "") if form is not None else None
    held = selectors.scope_of(workflow)
    in_rows = any(user.get_username() == failed for user, _ in held)
    return render(request, "governance/scope.html", {
        "workflow": workflow,
        "held": [(user, codenames, [PERMISSION_LABELS[c] for c in SCOPED_PERMISSIONS if c in codenames],
                  form if user.get_username() == failed else None) for user, codenames in held],
        "permissions": ScopeForm.base_fields["permissions"].choices,
        "form": form if form is not None and not in_rows else ScopeForm(),
        "may_administer": selectors.administers(request.user),
    }, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def scope(request: HttpRequest, slug: str) -> HttpResponse:
    """Who holds which object permissions on the workflow; administrators change them. Saving a
    person's row makes their permissions exactly the ticked ones: scope.granted and scope.revoked."""
    workflow = workflow_in_scope(request, slug)
    if request.method == "GET":
        return _scope_page(request, workflow)
    form = ScopeForm(request.POST)
    status = 422
    if form.is_valid():
        user, chosen = form.cleaned_data["user"], set(form.cleaned_data["permissions"])
        held = selectors.scope_held(workflow, user)
        try:
            with transaction.atomic():  # both or neither
                if chosen - held or not chosen | held:
                    services.grant_scope(workflow.pk, actor=request.user, user=user, permissions=sorted(chosen - held))
                if held - chosen:
                    services.revoke_scope(workflow.pk, actor=request.user, user=user,
                                          permissions=sorted(held - chosen))
            return redirect("governance:scope", workflow.slug)
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"scope workflow={slug}")
            refused_on(form, refusal)
            status = refusal.status
    return _scope_page(request, workflow, form, status)


def _accounts_page(request: HttpRequest, workflow: Workflow, **extra: object) -> HttpResponse:
    status = extra.pop("status", 200)
    return render(request, "governance/service_accounts.html", {
        "workflow": workflow,
        "accounts": selectors.service_accounts_of(workflow),
        "may_administer": selectors.administers(request.user),
        "form": ServiceAccountForm(),
        **extra,
    }, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def service_accounts(request: HttpRequest, slug: str) -> HttpResponse:
    """The agents (service accounts) that call the API for this workflow, with their tokens.
    Administrators create them here, scoped to this workflow."""
    workflow = workflow_in_scope(request, slug)
    if request.method == "GET":
        return _accounts_page(request, workflow)
    form = ServiceAccountForm(request.POST)
    status = 422
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.create_service_account(actor=request.user, name=data["name"], owner=data["owner"],
                                            workflows=[workflow], description=data["description"])
            return redirect("governance:service_accounts", workflow.slug)
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"service account workflow={slug}")
            refused_on(form, refusal)
            status = refusal.status
    return _accounts_page(request, workflow, form=form, status=status)


@require_POST
@login_required
def token_issue(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    """Issue a token; it is shown on this answer only (it is not stored, so not redirected to)."""
    workflow = workflow_in_scope(request, slug)
    account = denials.get_in_scope(request, workflow.service_accounts.all(), "service account", pk=pk)
    form = TokenForm(request.POST)
    if not form.is_valid():
        return _accounts_page(request, workflow, token_form=form, token_account=account.pk, status=422)
    try:
        issued = services.issue_token(account.pk, actor=request.user, label=form.cleaned_data["label"])
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"issue token account={pk}")
        form.add_error(None, refusal.message)
        return _accounts_page(request, workflow, token_form=form, token_account=account.pk, status=refusal.status)
    return _issued_page(request, workflow, issued)


def _issued_page(request: HttpRequest, workflow: Workflow, issued: services.IssuedToken) -> HttpResponse:
    """The page with a new token on it, once: never stored, so never redirected to or cached."""
    response = _accounts_page(request, workflow, issued=issued)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@login_required
def token_rotate(request: HttpRequest, slug: str, pk: int, token_id: int) -> HttpResponse:
    """Issue the token's successor, shown on this answer only; the old one ends after the overlap."""
    workflow = workflow_in_scope(request, slug)
    account = denials.get_in_scope(request, workflow.service_accounts.all(), "service account", pk=pk)
    token = denials.get_in_scope(request, account.tokens.all(), "token", pk=token_id)
    try:
        issued = services.rotate_token(token.pk, actor=request.user)
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"rotate token={token_id}")
        return _accounts_page(request, workflow, error=refusal.message, status=refusal.status)
    return _issued_page(request, workflow, issued)


@require_POST
@login_required
def token_revoke(request: HttpRequest, slug: str, pk: int, token_id: int) -> HttpResponse:
    workflow = workflow_in_scope(request, slug)
    account = denials.get_in_scope(request, workflow.service_accounts.all(), "service account", pk=pk)
    token = denials.get_in_scope(request, account.tokens.all(), "token", pk=token_id)
    try:
        services.revoke_token(token.pk, actor=request.user, reason=request.POST.get("reason", "")[:2000])
    except TransitionRefused as refusal:
        denials.refused(request, refusal, f"revoke token={token_id}")
        return _accounts_page(request, workflow, error=refusal.message, status=refusal.status)
    return redirect("governance:service_accounts", workflow.slug)


def _people_page(request: HttpRequest, failed: tuple[int, RolesForm] | None = None, status: int = 200) -> HttpResponse:
    search = request.GET.get("q", "").strip()[:100]
    return render(request, "governance/people.html", {
        "people": selectors.people_and_roles(search),
        "search": search,
        "roles": RolesForm.base_fields["roles"].choices,
        "failed": failed,
    }, status=status)


@require_GET
@login_required
def people(request: HttpRequest) -> HttpResponse:
    """Everyone's roles (administrators only)."""
    _administrators_only(request)
    return _people_page(request)


@require_POST
@login_required
def person_roles(request: HttpRequest, pk: int) -> HttpResponse:
    """Make a person's roles exactly the ticked ones: user.roles_changed."""
    _administrators_only(request)
    form = RolesForm(request.POST)
    status = 422
    if form.is_valid():
        try:
            services.set_user_groups(pk, actor=request.user, groups=form.cleaned_data["roles"])
            query = f"?{urlencode({'q': request.GET['q']})}" if request.GET.get("q") else ""
            return redirect(f"{reverse('governance:people')}{query}#person-{pk}")
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"roles user={pk}")
            refused_on(form, refusal)
            status = refusal.status
    return _people_page(request, (pk, form), status)
