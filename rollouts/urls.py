from __future__ import annotations

app_name = "rollouts"
urlpatterns: list = []
