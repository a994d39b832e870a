from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config.api import api
from governance import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("governance.identity_urls")),  # identity provider, break-glass, /admin/identity/ (before admin/)
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include("governance.urls")),
    path("audit/evidence/", include("approvals.urls_evidence")),
    path("audit/", include("audit.urls")),
    path("approvals/", include("approvals.urls")),
    path("integrations/slack/", include("approvals.urls_slack")),
    path("rollouts/", include("rollouts.urls")),
]
