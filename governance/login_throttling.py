"""Sign-in throttling: how Ringfence plugs into django-axes (the AXES_* settings; README "Sign-in throttling").

axes counts failed password sign-ins in its own tables, per account and per address (LOGIN_LOCKOUT_BY),
and refuses an account or an address that reached LOGIN_FAILURE_LIMIT within LOGIN_COOLOFF_MINUTES until
that long has passed since those failures. Here:

- `AuditedDatabaseHandler` audits the failure that locks out, in the transaction that counted it
  (services.record_login_lockout), writes one `ringfence.security` record per failure, and after a
  successful sign-in forgets only that account's failures (never other accounts' from the same address);
- `lockout_response` answers with the site's page, 429, saying when to try again: the same page
  whether or not the password was right;
- `client_ip` is the address failures count against: the peer's, or the one a trusted proxy names;
- `is_not_a_password_login` leaves sign-ins through the identity provider to the provider.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from datetime import datetime
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off, get_failure_limit, get_lockout_parameters
from axes.models import AccessAttempt
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from governance import services

security_log = logging.getLogger("ringfence.security")


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The peer's address, unless LOGIN_CLIENT_IP_HEADER names the header the proxy in front of
    Ringfence sets. Of a list (X-Forwarded-For) the last entry counts: the one that proxy added;
    those before it are whatever the client sent."""
    header = settings.LOGIN_CLIENT_IP_HEADER
    if header and (named := _address(request.headers.get(header, "").rsplit(",", 1)[-1])) is not None:
        return named
    return _address(request.META.get("REMOTE_ADDR") or "")


def is_not_a_password_login(request: HttpRequest, credentials: dict | None) -> bool:
    """Only password sign-ins are counted and refused here; a sign-in through the identity provider
    carries no password, and the provider throttles its own."""
    return not (credentials or {}).get(settings.AXES_PASSWORD_FORM_FIELD)


def locked_until(request: HttpRequest, credentials: dict | None) -> datetime | None:
    """When this attempt's account and address may both sign in again: for each counter at the limit,
    the moment its newest LOGIN_FAILURE_LIMIT failures have aged past the cool-off."""
    AxesProxyHandler.update_request(request)
    handler = AxesProxyHandler.get_implementation()
    limit, cool_off = get_failure_limit(request, credentials), get_cool_off(request)
    ends = []
    for attempts in handler.get_user_attempts(request, credentials):
        counted = 0
        for attempt_time, failures in attempts.order_by("-attempt_time").values_list("attempt_time",
                                                                                     "failures_since_start"):
            counted += failures
            if counted >= limit:
                ends.append(attempt_time + cool_off)
                break
    return max(ends, default=None)


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    """The answer to an attempt while locked out, and to the failure that locked: 429 and when to try
    again. It depends only on the failures counted, so a right and a wrong password read the same."""
    now = timezone.now()
    until = locked_until(request, credentials) or now + get_cool_off(request)
    response = render(request, "registration/locked_out.html", {"until": until}, status=429)
    response["Retry-After"] = str(max(1, math.ceil((until - now).total_seconds())))
    return response


class AuditedDatabaseHandler(AxesDatabaseHandler):
    """axes' database handler (AXES_HANDLER), with Ringfence's record of what it does."""

    def user_login_failed(self, sender: Any, credentials: dict, request: HttpRequest | None = None,
                          **kwargs: Any) -> None:
        if request is None:
            return super().user_login_failed(sender, credentials, request, **kwargs)
        username = get_client_username(request, credentials) or ""
        with transaction.atomic():
            super().user_login_failed(sender, credentials, request, **kwargs)
            # Counted (None: refused while locked, or not a password sign-in), and locked by this very failure.
            counted = request.axes_failures_since_start
            if counted is not None and request.axes_locked_out:
                services.record_login_lockout(username=username, ip_address=request.axes_ip_address or "",
                                              failures=counted, locked_by=self._locked_by(request, credentials),
                                              until=locked_until(request, credentials))
        if counted is not None:
            security_log.info("sign-in failed user=%r address=%s failures=%s/%s%s", username,
                              request.axes_ip_address, counted, get_failure_limit(request, credentials),
                              " locked out" if request.axes_locked_out else "")
        elif request.axes_locked_out:
            security_log.info("sign-in refused, locked out user=%r address=%s", username, request.axes_ip_address)

    def _locked_by(self, request: HttpRequest, credentials: dict | None) -> list[str]:
        """Which counters (LOGIN_LOCKOUT_BY) are at the limit: username, ip_address or username+ip_address."""
        limit = get_failure_limit(request, credentials)
        reached = []
        for parameter, attempts in zip(get_lockout_parameters(request, credentials),
                                       self.get_user_attempts(request, credentials), strict=True):
            if (attempts.aggregate(n=Sum("failures_since_start"))["n"] or 0) >= limit:
                reached.append(parameter if isinstance(parameter, str) else "+".join(parameter))
        return reached

    def user_logged_in(self, sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
        super().user_logged_in(sender, request, user, **kwargs)
        # This account's failures only (axes' own reset also forgets every failure from the address,
        # which would let someone with an account wipe what they tried against another one).
        AccessAttempt.objects.filter(username=user.get_username()).delete()
