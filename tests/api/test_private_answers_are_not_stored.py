"""`Cache-Control: no-store` on every page a signed-in person is shown and on every API answer,
problems included, so that no shared cache or browser history keeps a copy; what an anonymous visitor
is shown and static files are left as they are."""

from __future__ import annotations

import pytest
from django.test import Client

from core.problems import CONTENT_TYPE

pytestmark = pytest.mark.django_db


def no_store(response) -> bool:
    return "no-store" in response.get("Cache-Control", "")


def test_pages_and_their_partials_for_a_signed_in_person_are_not_stored(approver, workflow):
    client = Client()
    client.force_login(approver)
    page = client.get("/workflows/")
    assert page.status_code == 200 and no_store(page)
    detail = client.get(f"/workflows/{workflow.slug}/")
    assert detail.status_code == 200 and no_store(detail)
    missing = client.get("/workflows/no-such-agent/")  # the site's 404 page, to a signed-in person
    assert missing.status_code == 404 and no_store(missing)


def test_an_api_answer_is_not_stored(api, workflow):
    response = api.get("/api/v1/workflows")
    assert response.status_code == 200 and [w["slug"] for w in response.json()] == [workflow.slug]
    assert no_store(response)


def test_api_problems_are_not_stored(api):
    unauthenticated = Client().get("/api/v1/workflows")
    missing = api.get("/api/v1/approvals/999999")
    nowhere = api.get("/api/v1/no-such-endpoint")
    for response, status in ((unauthenticated, 401), (missing, 404), (nowhere, 404)):
        assert response.status_code == status and response["Content-Type"] == CONTENT_TYPE
        assert no_store(response), (status, response.get("Cache-Control"))


def test_what_an_anonymous_visitor_is_shown_and_static_files_are_left_alone():
    """(The sign-in page itself is Django's LoginView, which sends its own never-cache headers.)"""
    client = Client()
    asked_to_sign_in = client.get("/workflows/")
    assert asked_to_sign_in.status_code == 302 and not no_store(asked_to_sign_in)
    missing = client.get("/no-such-page/")
    assert missing.status_code == 404 and not no_store(missing)
    css = client.get("/static/css/ringfence.css")
    assert css.status_code == 200 and not no_store(css)
