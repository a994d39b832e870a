from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.middleware import HtmxDetails

from governance import denials, selectors, services
from governance.errors import TransitionRefused
from governance.forms import PauseForm, ResumeForm
from governance.models import Workflow
from governance.permissions import CONTAIN, perm


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def workflow_in_scope(request: HttpRequest, slug: str) -> Workflow:
    """The workflow if the user may see it; 404 otherwise, so existence is never confirmed."""
    return denials.get_in_scope(request, selectors.workflows_visible_to(request.user), "workflow", slug=slug)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    from governance.context_processors import navigation

    items = navigation(request)["nav_items"]
    return redirect(items[0]["url"] if items else "governance:workflow_list")


@login_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    workflows = selectors.workflows_visible_to(request.user).prefetch_related("containment")
    return render(request, "governance/workflow_list.html", {"workflows": workflows})


def _detail_context(request: HttpRequest, workflow: Workflow, **extra: object) -> dict:
    may_contain = request.user.has_perm(perm(CONTAIN), workflow)
    return {
        "workflow": workflow,
        "containment": selectors.containment_for(workflow),
        "actions": workflow.actions.all(),
        "events": selectors.audit_events_for(workflow),
        "may_contain": may_contain,
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
    if form.is_valid():
        try:
            change = services.pause_workflow if pausing else services.resume_workflow
            workflow = change(workflow.pk, actor=request.user, reason=form.cleaned_data["reason"])
        except TransitionRefused as refusal:
            denials.refused(request, refusal, f"workflow={slug}")
            form.add_error(None, refusal.message)
    if not form.errors and not request.htmx:
        return redirect(workflow)
    context = _detail_context(request, workflow, **{"pause_form" if pausing else "resume_form": form})
    template = "governance/workflow_detail.html" + ("#kill-switch" if request.htmx else "")
    return render(request, template, context, status=422 if form.errors else 200)


@require_POST
@login_required
def pause(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    return _kill_switch(request, slug, pausing=True)


@require_POST
@login_required
def resume(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    return _kill_switch(request, slug, pausing=False)
