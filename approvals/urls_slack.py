"""Slack's requests to Ringfence, under /integrations/slack/ (approvals.slack_views)."""

from __future__ import annotations

from django.urls import path

from approvals import slack_views

app_name = "slack"
urlpatterns = [
    path("interactions", slack_views.interactions, name="interactions"),
]
