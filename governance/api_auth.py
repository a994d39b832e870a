"""Who is calling the API: service accounts by bearer token, people by their browser session.

Agents and CI send `Authorization: Bearer rf_…`; no CSRF token is needed because a browser
never attaches that header on its own. Pages that call the API from a signed-in browser use
the session cookie and must send `X-CSRFToken` (htmx does, from `hx-headers` on `<body>`);
a cookie without it is refused with 403. Every authenticated call is counted against the
caller's rate limit.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from core import ratelimit
from core.problems import Problem
from governance import selectors, services
from governance.models import ApiToken, ServiceAccount, Workflow


class ServiceTokenAuth(HttpBearer):
    """Bearer token of a service account; `request.auth` is the ApiToken."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        try:
            api_token = services.authenticate_token(token.strip())
        except services.TokenRefused as refused:  # a known token that ended: say why (401)
            raise Problem(401, refused.code, refused.detail) from None
        if api_token is None:
            return None
        ratelimit.enforce(f"token:{api_token.pk}")
        return api_token


class BrowserSessionAuth(APIKeyCookie):
    """A signed-in person's session cookie, with Django's CSRF check; `request.auth` is the User."""

    param_name: str = settings.SESSION_COOKIE_NAME

    def _get_key(self, request: HttpRequest) -> str | None:
        key = request.COOKIES.get(self.param_name)
        user = getattr(request, "user", None)
        if not key or user is None or not user.is_authenticated or not user.is_active:
            return None  # no signed-in session: the caller gets 401, not a confusing CSRF 403
        if self.csrf and not getattr(request, "_ninja_csrf_exempt", False) and check_csrf(request):
            raise HttpError(403, "CSRF check Failed")
        return key

    def authenticate(self, request: HttpRequest, key: str | None) -> AbstractBaseUser | None:
        if key is None:
            return None
        ratelimit.enforce(f"user:{request.user.pk}")
        return request.user


TOKEN = ServiceTokenAuth()
TOKEN_OR_SESSION = [TOKEN, BrowserSessionAuth()]


def actor_of(request: HttpRequest) -> ServiceAccount | AbstractBaseUser:
    """The service account or the person on whose behalf the request acts."""
    auth: Any = request.auth  # type: ignore[attr-defined]
    return auth.service_account if isinstance(auth, ApiToken) else auth


def service_account_of(request: HttpRequest) -> ServiceAccount | None:
    auth: Any = getattr(request, "auth", None)
    return auth.service_account if isinstance(auth, ApiToken) else None


def require_account_permission(account: ServiceAccount, name: str) -> None:
    """A service account may do what lies beyond its workflows (ServiceAccount.PERMISSIONS) only when
    it holds that permission: 403 problem otherwise."""
    if name not in (account.permissions or []):
        raise Problem(403, "forbidden", f"This token's service account does not hold the {name} permission.")


def workflows_in_scope(request: HttpRequest) -> QuerySet[Workflow]:
    """Workflows the caller may read: a token's workflows, or a person's guardian scope."""
    actor = actor_of(request)
    if isinstance(actor, ServiceAccount):
        return selectors.workflows_visible_to_service(actor)
    return selectors.workflows_visible_to(actor)
