from __future__ import annotations

from django.urls import include, path

from rollouts import views

app_name = "rollouts"
urlpatterns = [
    path("", views.plan_list, name="plan_list"),
    path("new/", views.plan_create, name="plan_create"),
    path("<int:pk>/", views.plan_detail, name="plan_detail"),
    path("<int:pk>/edit/", views.plan_edit, name="plan_edit"),
    path("<int:pk>/launch/<slug:step>/", views.plan_launch, name="plan_launch"),
    path("<int:pk>/actions/<slug:action>/", views.plan_action, name="plan_action"),
    path("<int:pk>/tags/new/", views.tag_create, name="tag_create"),
    path("<int:pk>/tags/<int:tag_id>/withdraw/", views.tag_withdraw, name="tag_withdraw"),
    path("metrics/", views.metrics, name="metrics"),
    path("", include("rollouts.urls_dashboards")),  # dashboards and reviews
]
