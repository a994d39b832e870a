"""`{% sign_in_options as options %}`: what the sign-in page offers (the identity provider by name, the
password form unless LOCAL_LOGIN=false)."""

from __future__ import annotations

from django import template
from django.conf import settings

from governance import oidc

register = template.Library()


@register.simple_tag
def sign_in_options() -> dict:
    return {"provider": oidc.provider_name() if oidc.enabled() else "", "local_login": settings.LOCAL_LOGIN}
