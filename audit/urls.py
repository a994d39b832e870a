from __future__ import annotations

from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.search, name="log"),
    path("events/<int:seq>/", views.event_detail, name="event"),
    path("export.<str:fmt>", views.export, name="export"),
    path("export/progress/<str:token>/", views.export_progress, name="export_progress"),
    path("checkpoints/", views.sign_checkpoint, name="sign_checkpoint"),
    path("verify/", views.verify_page, name="verify"),
    path("verify/chain/", views.verify_start, name="verify_start"),
    path("verify/chain/<str:job>/", views.verify_job, name="verify_job"),
]
