"""IN-04 and IN-05: every error is problem JSON, whatever the transport throws at the API."""

from __future__ import annotations

import json

import pytest

from audit.models import AuditEvent
from governance.models import Workflow
from tests.api.conftest import assert_problem

pytestmark = pytest.mark.django_db

PAUSE = "/api/v1/workflows/refund-agent/pause"


def post(client, path, body, content_type="application/json", **headers):
    return client.generic("POST", path, body, content_type=content_type, headers=headers)


def test_unknown_endpoint_is_404_problem(api):
    assert_problem(api.get("/api/v1/nothing/here"), 404, "not_found")
    assert_problem(api.post("/api/v1/nothing"), 404, "not_found")


def test_missing_or_wrong_token_is_401_with_bearer_challenge(client, workflow):
    for headers in ({}, {"Authorization": "Bearer rf_not-a-token"}, {"Authorization": "Basic YTpi"}):
        response = post(client, PAUSE, json.dumps({"reason": "x"}), **headers)
        assert_problem(response, 401, "unauthenticated")
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_method_is_405_problem_with_allow(api, workflow):
    response = api.get(PAUSE)
    body = assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response["Allow"] and "POST" in body["detail"]


def test_schema_error_replaces_ninja_422_with_field_paths(api, workflow):
    body = assert_problem(post(api, PAUSE, json.dumps({"reason": ""})), 422, "invalid")
    assert [(e["in"], e["field"]) for e in body["errors"]] == [("body", "reason")]
    body = assert_problem(post(api, PAUSE, json.dumps({"reason": "x", "extra": 1})), 422, "invalid")
    assert ("body", "extra") in [(e["in"], e["field"]) for e in body["errors"]]


@pytest.mark.parametrize("raw", [b'{"reason": NaN}', b'{"reason": Infinity}', b'{"reason": -Infinity}',
                                 b'{"reason": 1e309}'])
def test_non_finite_numbers_are_refused_naming_the_field(api, workflow, raw):
    body = assert_problem(post(api, PAUSE, raw), 422, "non_finite_number")
    assert body["errors"][0]["field"] == "reason"
    assert not Workflow.objects.get(slug="refund-agent").paused


@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b'{"reason": "x"', "application/json", 400, "malformed_body"),
    (b'{"reason": "\xff\xfe"}', "application/json", 400, "malformed_body"),
    (b"[" * 10_000 + b"]" * 10_000, "application/json", 400, "malformed_body"),
    (b"reason=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b'{"reason": "x"}', "text/plain", 415, "unsupported_media_type"),
])
def test_malformed_transport_is_4xx_problem_and_changes_nothing(api, workflow, raw, content_type, status, code):
    events = AuditEvent.objects.count()
    assert_problem(post(api, PAUSE, raw, content_type=content_type), status, code)
    assert AuditEvent.objects.count() == events
    assert not Workflow.objects.get(slug="refund-agent").paused


def test_body_over_upload_limit_is_413(api, workflow, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    assert_problem(post(api, PAUSE, json.dumps({"reason": "x" * 5000})), 413, "payload_too_large")


def test_refusal_of_the_service_maps_to_its_status_and_code(api, workflow):
    assert post(api, PAUSE, json.dumps({"reason": "incident 42"})).status_code == 200
    body = assert_problem(post(api, PAUSE, json.dumps({"reason": "again"})), 409, "already_paused")
    assert "incident 42" in body["detail"]


def test_workflow_outside_the_token_scope_is_404(api, other_workflow):
    assert_problem(post(api, "/api/v1/workflows/account-disable-agent/pause", json.dumps({"reason": "x"})), 404,
                   "not_found")
    assert not Workflow.objects.get(slug="account-disable-agent").paused


def test_openapi_documents_problem_responses_and_docs_are_served_offline(client):
    schema = client.get("/api/v1/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    operation = schema["paths"]["/api/v1/workflows/{slug}/pause"]["post"]
    assert "application/problem+json" in operation["responses"]["422"]["content"]
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn" not in html.lower() and "/static/ninja/swagger-ui-bundle.js" in html
    assert client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200
