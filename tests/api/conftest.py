from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from core.problems import CONTENT_TYPE
from governance import services
from governance.models import ServiceAccount
from tests import factories


@dataclass
class Agent:
    account: ServiceAccount
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def issue(account: ServiceAccount) -> str:
    from django.contrib.auth.models import User

    admin = User.objects.filter(is_staff=True, groups__name="administrator").first()
    return services.issue_token(account.pk, actor=admin).raw


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Every test starts with empty rate-limit windows in its own Redis database."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("ringfence:ratelimit:*"):
        client.delete(key)
    yield


@pytest.fixture
def agent_owner(db):
    return factories.make_user("owen")


@pytest.fixture
def agent(workflow, agent_owner, admin_user) -> Agent:
    account = factories.make_service_account("refund-bot", owner=agent_owner, workflows=[workflow])
    return Agent(account, issue(account))


@pytest.fixture
def api(agent) -> Client:
    return Client(headers=agent.headers)


@pytest.fixture
def actions(workflow, admin_user):
    """The refund workflow's declared actions, one per risk level."""
    for name, risk, quorum in (("send_receipt", "low", 1), ("issue_credit", "medium", 1),
                               ("refund_customer", "high", 1), ("close_account", "critical", 2)):
        services.define_action(workflow.pk, actor=admin_user, name=name, risk=risk, quorum=quorum)
    return workflow


def dispatch(client: Client, action: str, *, key: str | None = "auto", workflow: str = "refund-agent", **fields):
    import uuid

    body = {"workflow": workflow, "action": action, **fields}
    headers = {} if key is None else {"Idempotency-Key": uuid.uuid4().hex if key == "auto" else key}
    return client.post("/api/v1/dispatch", json.dumps(body), content_type="application/json", headers=headers)


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """The error contract (IN-04): problem+json with every member, no trace."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].split(";")[0] == CONTENT_TYPE
    body = json.loads(response.content)
    assert set(body) >= {"type", "title", "status", "detail", "instance", "code", "errors"}
    assert body["status"] == status and body["type"].endswith(body["code"])
    assert isinstance(body["errors"], list)
    for error in body["errors"]:
        assert set(error) == {"in", "field", "message", "type"}
    assert "Traceback" not in response.content.decode("utf-8", "replace")
    if code:
        assert body["code"] == code, body
    return body


@pytest.fixture
def live_plan(workflow, admin_user, containment_owner):
    """A rollout of the refund workflow started at ring 0, every containment duty owned."""
    from governance.models import ContainmentAssignment
    from governance.permissions import Role
    from rollouts import plans as rollout_plans
    from tests.rollouts.conftest import plan_spec

    for duty in ContainmentAssignment.Duty:
        services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty=duty)
    manager = factories.make_user("rhea", role=Role.RELEASE_MANAGER)
    factories.scope(manager, workflow)
    plan = rollout_plans.create_plan(actor=manager, workflow=workflow, **plan_spec())
    return rollout_plans.start_rollout(plan.pk, actor=manager)


@pytest.fixture
def page(monkeypatch):
    """A headless Chromium page (Debian's /usr/bin/chromium; no browser is downloaded)."""
    from playwright.sync_api import expect, sync_playwright

    from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

    # The ORM is used from the test thread while Playwright's sync API holds an event loop there.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    expect.set_options(timeout=TIMEOUT_MS)  # as tests/e2e: the same wait for assertions as for actions
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()
            # ORM calls made while Playwright's loop runs get their own connection: close it here.
            connections.close_all()


@pytest.fixture
def url(live_server, agent, actions, settings) -> str:
    """The live server's URL for the clients' tests, with `agent` and its actions, and long-polls that
    look every 50 ms."""
    settings.API_LONG_POLL_INTERVAL_SECONDS = 0.05
    return live_server.url


@pytest.fixture
def rf(url, agent):
    """The sync client, as an agent holds it, against the live server (`url`)."""
    from ringfence_client import RingfenceClient

    return RingfenceClient(url, agent.token, timeout=10, backoff=0.05)


def decide(approval_id: int, actor, verdict: str, justification: str = "not this one") -> None:
    """A person decides; callable from any thread (its database connection is closed afterwards)."""
    from approvals import services as approval_services

    try:
        approval_services.record_decision(approval_id, actor=actor, verdict=verdict,
                                          justification="" if verdict == "approve" else justification)
    finally:
        connection.close()
