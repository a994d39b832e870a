"""The configuration over the API, for CI and GitOps: schema, plan and apply."""

from __future__ import annotations

import json

import pytest
import yaml
from django.test import Client

from audit.models import AuditEvent
from configuration import planning
from governance import services
from governance.models import Workflow
from governance.permissions import Role
from tests import factories
from tests.api.conftest import _fresh_rate_limits, agent, agent_owner, api, assert_problem, issue  # noqa: F401
from tests.configuration.test_config_as_code import NEW_AGENT

pytestmark = pytest.mark.django_db


@pytest.fixture
def ci(admin_user, workflow):
    """A CI service account owned by the administrator, holding the config permission."""
    for username, role in (("rhea", Role.RELEASE_MANAGER), ("alice", Role.APPROVER), ("sam", Role.SENIOR_APPROVER),
                           ("olivia", Role.CONTAINMENT_OWNER), ("oscar", Role.CONTAINMENT_OWNER)):
        factories.make_user(username, role=role)
    account = factories.make_service_account("gitops", owner=admin_user, workflows=[workflow])
    services.update_service_account(account.pk, actor=admin_user, permissions=["config"])
    return Client(headers={"Authorization": f"Bearer {issue(account)}"})


def post(client, path, body: str, media="application/yaml", key: str | None = None):
    return client.post(path, body, content_type=media, headers={"Idempotency-Key": key} if key else {})


def test_the_schema_is_published_without_a_token(client):
    response = client.get("/api/v1/config/schema.json")
    assert response.status_code == 200 and response.json()["title"] == "ringfence.yaml"


def test_plan_then_apply_with_the_config_permission(ci):
    planned = post(ci, "/api/v1/config/plan", NEW_AGENT)
    assert planned.status_code == 200, planned.content
    body = planned.json()
    assert body["summary"] == {"create": 10, "update": 0, "delete": 0} and body["applied"] is False
    assert {"op": "create", "object": "workflow/voucher-agent"} == {k: body["changes"][0][k] for k in ("op", "object")}
    assert not Workflow.objects.filter(slug="voucher-agent").exists()

    assert_problem(post(ci, "/api/v1/config/apply", NEW_AGENT), 400, "idempotency_key_missing")
    applied = post(ci, "/api/v1/config/apply", NEW_AGENT, key="deploy-1")
    assert applied.status_code == 200 and applied.json()["applied"] is True
    assert Workflow.objects.filter(slug="voucher-agent").exists()
    event = AuditEvent.objects.get(action="config.applied")
    assert event.actor_label == "ada" and event.data["via"] == "api: service account gitops"
    assert event.data["sha256"] == planning.sha256(NEW_AGENT)

    as_json = json.dumps(yaml.safe_load(NEW_AGENT.replace("08:00", '"08:00"').replace("18:00", '"18:00"')))
    again = post(ci, "/api/v1/config/plan", as_json, media="application/json")
    assert again.status_code == 200 and again.json()["changes"] == []


def test_without_the_permission_or_with_bad_input_nothing_changes(api, ci, admin_user):  # noqa: F811
    assert_problem(post(api, "/api/v1/config/plan", NEW_AGENT), 403, "forbidden")
    assert_problem(post(api, "/api/v1/config/apply", NEW_AGENT, key="k"), 403, "forbidden")
    broken = NEW_AGENT.replace("    tier: 2\n", "    tier: two\n")
    problem = assert_problem(post(ci, "/api/v1/config/plan", broken), 422, "invalid_configuration")
    assert problem["errors"][0]["field"] == "workflows[0].tier"
    assert problem["errors"][0]["message"] == "line 12: must be one of 1, 2 or 3"
    assert_problem(post(ci, "/api/v1/config/plan", NEW_AGENT, media="text/plain"), 415)
    assert_problem(post(ci, "/api/v1/config/plan", "a: [1", media="application/yaml"), 422)
    assert not Workflow.objects.filter(slug="voucher-agent").exists()


def test_apply_acts_as_an_administrator_owner_only(admin_user, workflow):
    owner = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    account = factories.make_service_account("ci", owner=owner, workflows=[workflow])
    services.update_service_account(account.pk, actor=admin_user, permissions=["config"])
    client = Client(headers={"Authorization": f"Bearer {issue(account)}"})
    assert post(client, "/api/v1/config/plan", "version: 1\n").status_code == 200
    body = assert_problem(post(client, "/api/v1/config/apply", "version: 1\n", key="k"), 403)
    assert "rhea, who is not an administrator" in body["detail"]
