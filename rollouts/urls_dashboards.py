"""The managers' dashboards and the containment owners' reviews, included into the rollouts namespace."""

from __future__ import annotations

from django.urls import path

from rollouts import dashboards, reviews

urlpatterns = [
    path("dashboards/", dashboards.dashboard, name="dashboard"),
    path("dashboards/plans/<int:pk>/", dashboards.plan_dashboard, name="dashboard_plan"),
    path("dashboards/charts/<slug:key>.csv", dashboards.chart_csv, name="dashboard_chart_csv"),
    path("reviews/", reviews.review_list, name="reviews"),
    path("reviews/<int:pk>/", reviews.review, name="review"),
]
