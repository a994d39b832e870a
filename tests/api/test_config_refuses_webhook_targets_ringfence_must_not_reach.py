"""ringfence.yaml over the config API refuses a rollout plan whose webhook URL Ringfence would refuse
to send to (issue 18, item 8): 422 problem+json naming the field and line; nothing is changed."""

from __future__ import annotations

import pytest
from django.test import Client

from governance import services
from governance.models import Workflow
from governance.permissions import Role
from rollouts.models import RolloutPlan
from tests import factories
from tests.api.conftest import assert_problem, issue

pytestmark = pytest.mark.django_db

CONFIG = """\
version: 1
workflows:
  - slug: voucher-agent
    name: Voucher agent
    containment:
      pause: {primary: olivia}
    rollout_plans:
      - release_version: voucher-v2
        name: Voucher v2
        stable_version: voucher-v1
        executor: webhook
        webhook_url: WEBHOOK_URL
        rings:
          - {segment_kind: internal_team, segment_value: support-ops}
"""


@pytest.fixture
def ci(admin_user, workflow, settings):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    factories.make_user("olivia", role=Role.CONTAINMENT_OWNER)
    account = factories.make_service_account("gitops", owner=admin_user, workflows=[workflow])
    services.update_service_account(account.pk, actor=admin_user, permissions=["config"])
    return Client(headers={"Authorization": f"Bearer {issue(account)}"})


def plan(client: Client, url: str):
    return client.post("/api/v1/config/plan", CONFIG.replace("WEBHOOK_URL", url), content_type="application/yaml")


@pytest.mark.parametrize(("url", "message"), [
    ("http://169.254.169.254/latest/meta-data/",
     "webhook target 169.254.169.254 is a link-local address; allow it with WEBHOOK_ALLOWED_NETWORKS"),
    ("http://[::ffff:10.0.0.1]:8080/hook",
     "webhook target ::ffff:10.0.0.1 is an IPv4-mapped private address; allow it with WEBHOOK_ALLOWED_NETWORKS"),
    ("ftp://deploy.example.com/hook", "a webhook plan needs its http(s) address"),
])
def test_a_plan_with_a_refused_webhook_url_is_422_naming_the_field(ci, url, message):
    body = assert_problem(plan(ci, url), 422, "invalid_configuration")
    assert [e["field"] for e in body["errors"]] == ["workflows[0].rollout_plans[0].webhook_url"]
    line = next(n for n, text in enumerate(CONFIG.splitlines(), 1) if "webhook_url:" in text)
    assert body["errors"][0]["message"] == f"line {line}: {message}"
    assert not Workflow.objects.filter(slug="voucher-agent").exists() and not RolloutPlan.objects.exists()


def test_a_name_or_an_allowed_address_is_accepted(ci, settings):
    assert plan(ci, "https://deploy.example.com/hook").status_code == 200
    settings.WEBHOOK_ALLOWED_NETWORKS = ["169.254.0.0/16"]
    assert plan(ci, "http://169.254.10.10/hook").status_code == 200
