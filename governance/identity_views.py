"""Pages and doors of sign-in beyond the password form: the break-glass link, the administrators' view of the
identity provider's group mappings, and the gate that closes password sign-in when LOCAL_LOGIN=false."""

from __future__ import annotations

import logging
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import sync_and_async_middleware
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from core import denials
from core.errors import TransitionRefused
from governance import oidc, services
from governance.models import GroupMapping, IdentityGrant, IdentityLink

security_log = logging.getLogger("ringfence.security")

SHORT = {"view_workflow": "view", "approve_workflow": "approve", "contain_workflow": "contain",
         "manage_rollouts": "manage_rollouts"}


# --- LOCAL_LOGIN=false --------------------------------------------------------------------------

def _login_paths() -> tuple[str, str]:
    return reverse("login"), reverse("admin:login")


def _gated(request: HttpRequest) -> bool:
    return not settings.LOCAL_LOGIN and request.path_info in _login_paths()


def _gate(request: HttpRequest) -> HttpResponse | None:
    site_login, admin_login = _login_paths()
    if request.method == "POST":
        security_log.info("password sign-in refused (LOCAL_LOGIN=false) path=%s", request.path)
        name = oidc.provider_name()
        return oidc.problem_page(request, "Password sign-in is turned off",
                                 f"This Ringfence signs people in through {name} only. Use “Sign in with {name}”.",
                                 403)
    if request.path_info == admin_login:  # the admin's own password form: to the site's sign-in page instead
        query = f"?{urlencode({'next': request.GET['next']})}" if request.GET.get("next") else ""
        return redirect(f"{site_login}{query}")
    return None


@sync_and_async_middleware
def local_login_gate(get_response: Callable) -> Callable:
    """With LOCAL_LOGIN=false a password never signs anyone in: a POST to the sign-in page or the admin's is
    refused (403) before any backend sees it, and the admin's sign-in page sends people to the site's, which
    offers the identity provider only."""
    if iscoroutinefunction(get_response):
        async def gate_async(request: HttpRequest) -> Any:
            if _gated(request):
                response = await sync_to_async(_gate)(request)
                if response is not None:
                    return response
            return await get_response(request)

        return gate_async

    def gate(request: HttpRequest) -> Any:
        if _gated(request):
            response = _gate(request)
            if response is not None:
                return response
        return get_response(request)

    return gate


# --- break-glass ------------------------------------------------------------------------------------

@never_cache
@require_http_methods(["GET", "POST"])
def break_glass(request: HttpRequest, token: str) -> HttpResponse:
    """The one-time link `manage.py breakglass` prints. GET only asks to confirm (a link scanner that fetches
    it spends nothing); POST spends it and signs its superuser in."""
    if request.method == "POST":
        try:
            user = services.use_breakglass_link(token)
        except TransitionRefused as refusal:
            security_log.warning("break-glass link refused: %s", refusal.code)
            return oidc.problem_page(request, "Break-glass link refused", refusal.message, refusal.status)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/break_glass.html")


# --- the administrators' page ------------------------------------------------------------------------

def identity_mappings(request: HttpRequest) -> HttpResponse:
    """`/admin/identity/`: the identity provider, the group mappings ringfence.yaml declares (read-only: the
    file changes them) and who signed in through the provider with what the mappings gave them."""
    if not services.is_administrator(request.user):
        raise denials.forbidden(request, "Only administrators see the identity provider's group mappings.")
    mappings = [{"group": m.group, "roles": m.roles,
                 "scope": [(slug, [SHORT.get(c, c) for c in codenames]) for slug, codenames in m.scope.items()]}
                for m in GroupMapping.objects.all()]
    given: dict[int, list[str]] = {}
    for grant in IdentityGrant.objects.select_related("workflow").order_by("role", "workflow__slug", "permission"):
        label = grant.role or f"{SHORT.get(grant.permission, grant.permission)} on {grant.workflow.slug}"
        given.setdefault(grant.user_id, []).append(label)
    people = [{"link": link, "given": given.get(link.user_id, [])}
              for link in IdentityLink.objects.select_related("user").order_by("-last_signed_in_at")[:200]]
    context = {**admin.site.each_context(request), "title": "Sign-in through the identity provider",
               "enabled": oidc.enabled(), "provider": oidc.provider_name(), "issuer": settings.OIDC_ISSUER,
               "groups_claim": settings.OIDC_GROUPS_CLAIM, "local_login": settings.LOCAL_LOGIN,
               "mappings": mappings, "people": people}
    return render(request, "admin/identity_mappings.html", context)
