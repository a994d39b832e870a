"""Sign-in through the company's identity provider with OpenID Connect: mozilla-django-oidc does the
authorization-code flow (state, nonce and PKCE kept in the session, the ID token's signature checked against
the provider's keys); this module gives it the provider's endpoints from its discovery document, checks what
the library leaves out (the ID token's issuer and audience, userinfo's subject), and hands the person to
`services.sign_in_with_identity`, which creates or finds them and makes their roles follow their groups.

Off while OIDC_ISSUER is empty: the views answer 404 and the backend signs nobody in.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from core.errors import TransitionRefused
from governance import services

security_log = logging.getLogger("ringfence.security")

# The discovery document is read once and kept this long (a provider rotates endpoints rarely; its signing
# keys are read on every sign-in by the library).
DISCOVERY_TTL_SECONDS = 3600.0


class ProviderUnavailable(Exception):
    """The identity provider's discovery document could not be read, or does not describe the issuer."""


def enabled() -> bool:
    return bool(settings.OIDC_ISSUER)


def provider_name() -> str:
    return settings.OIDC_PROVIDER_NAME


_discovered: dict[str, tuple[float, dict[str, Any]]] = {}
_discovery_lock = threading.Lock()


def discovery() -> dict[str, Any]:
    """The issuer's `/.well-known/openid-configuration`, fetched on first use and kept DISCOVERY_TTL_SECONDS;
    when a refresh fails the last good copy is used."""
    issuer = settings.OIDC_ISSUER.rstrip("/")
    with _discovery_lock:
        cached = _discovered.get(issuer)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
        try:
            response = requests.get(f"{issuer}/.well-known/openid-configuration",
                                    timeout=settings.OIDC_TIMEOUT_SECONDS)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            if cached is not None:
                return cached[1]
            raise ProviderUnavailable(f"cannot read {issuer}/.well-known/openid-configuration: {exc}") from None
        if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
            # OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it was fetched from.
            raise ProviderUnavailable(f"the discovery document at {issuer} names another issuer")
        missing = [key for key in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(key)]
        if missing:
            raise ProviderUnavailable(f"the discovery document at {issuer} lacks {', '.join(missing)}")
        _discovered[issuer] = (time.monotonic(), document)
        return document


def forget_discovery() -> None:
    """Read the discovery document afresh on next use (a test starts a new provider)."""
    with _discovery_lock:
        _discovered.clear()


def _sign_algorithm() -> str:
    offered = [alg for alg in discovery().get("id_token_signing_alg_values_supported", ["RS256"]) if alg != "none"]
    return "RS256" if "RS256" in offered or not offered else offered[0]


def _basic_auth() -> bool:
    # The discovery default is client_secret_basic; post the secret only to a provider that asks for it.
    methods = discovery().get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
    return "client_secret_basic" in methods or "client_secret_post" not in methods


_FROM_DISCOVERY = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_FROM_SETTINGS = {
    "OIDC_RP_CLIENT_ID": "OIDC_CLIENT_ID",
    "OIDC_RP_CLIENT_SECRET": "OIDC_CLIENT_SECRET",
    "OIDC_RP_SCOPES": "OIDC_SCOPES",
    "OIDC_TIMEOUT": "OIDC_TIMEOUT_SECONDS",
}
_FIXED = {
    "OIDC_USE_PKCE": True,
    "OIDC_PKCE_CODE_CHALLENGE_METHOD": "S256",
    "OIDC_USE_NONCE": True,
    "OIDC_VERIFY_SSL": True,
    "OIDC_ALLOW_UNSECURED_JWT": False,
    "OIDC_STORE_ACCESS_TOKEN": False,
    "OIDC_STORE_ID_TOKEN": False,
    "OIDC_AUTHENTICATION_CALLBACK_URL": "oidc_authentication_callback",
}


def setting(attr: str, *default: Any) -> Any:
    """What mozilla-django-oidc asks its settings for: Ringfence's OIDC_* settings, the discovery document, and
    the choices made here (PKCE with S256, nonce, verified TLS, no unsigned tokens)."""
    if attr in _FROM_DISCOVERY:
        return discovery().get(_FROM_DISCOVERY[attr], *default)
    if attr in _FROM_SETTINGS:
        return getattr(settings, _FROM_SETTINGS[attr])
    if attr in _FIXED:
        return _FIXED[attr]
    if attr == "OIDC_RP_SIGN_ALGO":
        return _sign_algorithm()
    if attr == "OIDC_TOKEN_USE_BASIC_AUTH":
        return _basic_auth()
    return import_from_settings(attr, *default)


class IdentityProviderBackend(OIDCAuthenticationBackend):
    """Signs in the person the provider vouched for, only from the callback (which passes the nonce it kept).
    It answers no permission question: roles and scope are Django groups and guardian's object permissions."""

    get_settings = staticmethod(setting)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The library reads every endpoint here; this backend is built for each password sign-in too, so the
        # provider is only asked when a callback arrives.
        ModelBackend.__init__(self, *args, **kwargs)
        self.UserModel = get_user_model()

    OIDC_OP_TOKEN_ENDPOINT = property(lambda self: setting("OIDC_OP_TOKEN_ENDPOINT"))
    OIDC_OP_USER_ENDPOINT = property(lambda self: setting("OIDC_OP_USER_ENDPOINT", None))
    OIDC_OP_JWKS_ENDPOINT = property(lambda self: setting("OIDC_OP_JWKS_ENDPOINT"))
    OIDC_RP_CLIENT_ID = property(lambda self: settings.OIDC_CLIENT_ID)
    OIDC_RP_CLIENT_SECRET = property(lambda self: settings.OIDC_CLIENT_SECRET)
    OIDC_RP_SIGN_ALGO = property(lambda self: setting("OIDC_RP_SIGN_ALGO"))
    OIDC_RP_IDP_SIGN_KEY = None

    def authenticate(self, request: HttpRequest | None, **kwargs: Any) -> Any:
        if request is None or "nonce" not in kwargs or not enabled():
            return None  # a password sign-in, or the provider is off
        return super().authenticate(request, **kwargs)

    def verify_token(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """The library checks the signature, expiry and nonce; the issuer and audience are checked here
        (OpenID Connect Core §3.1.3.7)."""
        try:
            payload = super().verify_token(token, **kwargs)
        except jwt.InvalidTokenError as exc:
            raise SuspiciousOperation(f"ID token refused: {exc}") from None
        issuer = discovery()["issuer"].rstrip("/")
        if str(payload.get("iss", "")).rstrip("/") != issuer:
            raise SuspiciousOperation(f"ID token issued by {payload.get('iss')!r}, not {issuer!r}")
        audience = payload.get("aud")
        audience = [audience] if isinstance(audience, str) else audience or []
        if settings.OIDC_CLIENT_ID not in audience:
            raise SuspiciousOperation("ID token issued for another client")
        if len(audience) > 1 and payload.get("azp") != settings.OIDC_CLIENT_ID:
            raise SuspiciousOperation("ID token authorized for another party")
        return payload

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> dict[str, Any]:
        if not self.OIDC_OP_USER_ENDPOINT:
            return {}
        return super().get_userinfo(access_token, id_token, payload)

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo and userinfo.get("sub") != payload.get("sub"):
            raise TransitionRefused("invalid", "The identity provider's user information names another person "
                                               "than its ID token.", status=400)
        claims = {**payload, **userinfo}
        return services.sign_in_with_identity(issuer=discovery()["issuer"].rstrip("/"), claims=claims,
                                              groups_claim=settings.OIDC_GROUPS_CLAIM)

    def get_user(self, user_id: Any) -> Any:
        return ModelBackend.get_user(self, user_id)  # refuses deactivated accounts, as password sessions are

    def get_user_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        return set()

    def get_group_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        return set()

    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> set[str]:
        return set()

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        return False

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        return False

    def with_perm(self, *args: Any, **kwargs: Any) -> Any:
        return self.UserModel._default_manager.none()


def problem_page(request: HttpRequest, title: str, message: str, status: int) -> HttpResponse:
    return render(request, "registration/sign_in_problem.html",
                  {"title": title, "message": message, "provider": provider_name() if enabled() else ""},
                  status=status)


class SignInView(OIDCAuthenticationRequestView):
    """`/oidc/authenticate/`: to the provider's authorization endpoint, with state, nonce and a PKCE challenge."""

    get_settings = staticmethod(setting)

    def __init__(self, **kwargs: Any) -> None:
        View.__init__(self, **kwargs)  # not the library's: the endpoints are read in get(), where failure is answered

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("Sign-in through an identity provider is not set up.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = setting("OIDC_OP_AUTHORIZATION_ENDPOINT")
        except ProviderUnavailable as exc:
            security_log.warning("identity provider unavailable: %s", exc)
            return problem_page(request, f"{provider_name()} cannot be reached",
                                f"Ringfence cannot reach {provider_name()} right now. Try again in a minute.", 503)
        self.OIDC_RP_CLIENT_ID = settings.OIDC_CLIENT_ID
        return super().get(request)


class CallbackView(OIDCAuthenticationCallbackView):
    """`/oidc/callback/`: the provider's answer. A state this browser did not start, a nonce or token that does
    not match, or an account Ringfence refuses, signs nobody in and says why."""

    get_settings = staticmethod(setting)

    def get(self, request: HttpRequest) -> HttpResponse:
        if not enabled():
            raise Http404("Sign-in through an identity provider is not set up.")
        name = provider_name()
        try:
            return super().get(request)
        except SuspiciousOperation as exc:
            security_log.warning("identity provider sign-in refused: %s path=%s", exc, request.path)
            return problem_page(request, "Sign-in refused",
                                f"The answer from {name} does not belong to a sign-in this browser started, or did "
                                "not check out. Nobody was signed in; start again.", 400)
        except TransitionRefused as refusal:
            security_log.warning("identity provider sign-in refused: %s path=%s", refusal.code, request.path)
            return problem_page(request, "Sign-in refused", refusal.message, refusal.status)
        except (requests.RequestException, ProviderUnavailable) as exc:
            security_log.warning("identity provider sign-in failed: %s", exc)
            return problem_page(request, f"{name} did not complete the sign-in",
                                f"Ringfence could not complete the sign-in with {name}. Try again in a minute.", 502)

    def login_failure(self) -> HttpResponse:
        error = self.request.GET.get("error", "")
        security_log.info("identity provider sign-in failed: error=%s", error[:64] or "none")
        if error == "access_denied":
            message = f"{provider_name()} did not let you in."
        else:
            message = f"The sign-in with {provider_name()} did not complete. Start again from the sign-in page."
        return problem_page(self.request, "Not signed in", message, 401)
