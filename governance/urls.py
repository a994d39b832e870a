from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from governance import views
from governance.api import api

governance_patterns = (
    [
        path("workflows/", views.workflow_list, name="workflow_list"),
        path("workflows/<slug:slug>/", views.workflow_detail, name="workflow_detail"),
        path("workflows/<slug:slug>/pause/", views.pause, name="pause"),
        path("workflows/<slug:slug>/resume/", views.resume, name="resume"),
        path("audit/", views.audit_log, name="audit_log"),
    ],
    "governance",
)

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", include(governance_patterns)),
    path("approvals/", include("approvals.urls")),
    path("rollouts/", include("rollouts.urls")),
]
