from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from governance import auditing, views
from governance.api import api

governance_patterns = (
    [
        path("workflows/", views.workflow_list, name="workflow_list"),
        # "-" is never a workflow slug, so no workflow can shadow this page.
        path("workflows/-/new/", views.workflow_create, name="workflow_create"),
        path("workflows/<slug:slug>/", views.workflow_detail, name="workflow_detail"),
        path("workflows/<slug:slug>/pause/", views.pause, name="pause"),
        path("workflows/<slug:slug>/resume/", views.resume, name="resume"),
        path("workflows/<slug:slug>/actions/", views.action_create, name="action_create"),
        path("workflows/<slug:slug>/containment/", views.containment, name="containment"),
        path("workflows/<slug:slug>/containment/<int:pk>/remove/", views.containment_remove,
             name="containment_remove"),
        path("workflows/<slug:slug>/scope/", views.scope, name="scope"),
        path("workflows/<slug:slug>/service-accounts/", views.service_accounts, name="service_accounts"),
        path("workflows/<slug:slug>/service-accounts/<int:pk>/tokens/", views.token_issue, name="token_issue"),
        path("workflows/<slug:slug>/service-accounts/<int:pk>/tokens/<int:token_id>/revoke/", views.token_revoke,
             name="token_revoke"),
        path("people/", views.people, name="people"),
        path("people/<int:pk>/roles/", views.person_roles, name="person_roles"),
        path("audit/", auditing.search, name="audit_log"),
        path("audit/events/<int:seq>/", auditing.event_detail, name="audit_event"),
        path("audit/export.<str:fmt>", auditing.export, name="audit_export"),
        path("audit/export/progress/<str:token>/", auditing.export_progress, name="audit_export_progress"),
        path("audit/verify/", auditing.verify_page, name="audit_verify"),
        path("audit/verify/chain/", auditing.verify_start, name="audit_verify_start"),
        path("audit/verify/chain/<str:job>/", auditing.verify_job, name="audit_verify_job"),
        path("audit/evidence/<int:pk>/", auditing.evidence, name="evidence"),
        path("audit/evidence/<int:pk>.json", auditing.evidence_json, name="evidence_json"),
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
