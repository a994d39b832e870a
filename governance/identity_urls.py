"""Sign-in beyond the password form (included at the site's root by config/urls.py, before the admin)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from governance import identity_views, oidc

urlpatterns = [
    path("oidc/authenticate/", oidc.SignInView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.CallbackView.as_view(), name="oidc_authentication_callback"),
    path("accounts/break-glass/<str:token>/", identity_views.break_glass, name="break_glass"),
    path("admin/identity/", admin.site.admin_view(identity_views.identity_mappings), name="identity_mappings"),
]
