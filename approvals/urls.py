from __future__ import annotations

app_name = "approvals"
urlpatterns: list = []
