"""Signing a user in to a web server subprocess: a real session row and a CSRF cookie/header pair."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.db import SessionStore


def session_headers(user: AbstractBaseUser) -> dict[str, str]:
    """Headers of a browser signed in as `user` (what the login view would have stored)."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"  # a password sign-in's
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    csrf = secrets.token_hex(16)  # a 32-character CSRF secret, sent as cookie and header
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}; {settings.CSRF_COOKIE_NAME}={csrf}",
        "X-CSRFToken": csrf,
    }
