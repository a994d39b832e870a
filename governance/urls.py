from __future__ import annotations

from django.urls import path

from governance import views

app_name = "governance"
urlpatterns = [
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
    path("workflows/<slug:slug>/service-accounts/<int:pk>/tokens/<int:token_id>/rotate/", views.token_rotate,
         name="token_rotate"),
    path("workflows/<slug:slug>/service-accounts/<int:pk>/tokens/<int:token_id>/revoke/", views.token_revoke,
         name="token_revoke"),
    path("people/", views.people, name="people"),
    path("people/<int:pk>/roles/", views.person_roles, name="person_roles"),
]
