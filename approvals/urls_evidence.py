"""The evidence bundle's pages, under /audit/evidence/ where auditors find them."""

from __future__ import annotations

from django.urls import path

from approvals import evidence

app_name = "evidence"
urlpatterns = [
    path("<int:pk>/", evidence.page, name="page"),
    path("<int:pk>.json", evidence.json_file, name="json"),
]
