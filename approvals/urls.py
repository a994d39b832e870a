from __future__ import annotations

from django.urls import path

from approvals import views

app_name = "approvals"
urlpatterns = [
    path("", views.queue, name="queue"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/decide/", views.decide, name="decide"),
    path("actions/<slug:slug>/<slug:name>/", views.action_detail, name="action"),
    path("actions/<slug:slug>/<slug:name>/edit/", views.action_edit, name="action_edit"),
    path("actions/<slug:slug>/<slug:name>/remove/", views.action_remove, name="action_remove"),
    path("actions/<slug:slug>/<slug:name>/rules/", views.action_rules, name="action_rules"),
    path("actions/<slug:slug>/<slug:name>/try/", views.action_try, name="action_try"),
    path("workflows/<slug:slug>/escalation/", views.escalation, name="escalation"),
]
