"""The demo's manager (maya) reads on her dashboards the story the demo tells: the billing summary's
2 AM migration, rolled back when untagged and riding out the same rise when tagged."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from configuration import demo as configuration_demo
from governance import demo as governance_demo
from governance.models import Workflow
from governance.permissions import MANAGE_ROLLOUTS, VIEW, perm
from rollouts import demo as rollouts_demo
from rollouts.models import RolloutPlan
from tests.dashboards.conftest import figures, table

pytestmark = pytest.mark.django_db

MIGRATION = "billing-summary-staging"


@pytest.fixture
def maya(client) -> User:
    governance_demo.seed()
    configuration_demo.seed()
    rollouts_demo.seed()
    user = User.objects.get(username="maya")
    client.force_login(user)
    return user


def test_the_demos_manager_sees_both_runs_of_the_billing_migration_on_the_overview(client, maya):
    page = client.get(reverse("rollouts:dashboard")).content.decode()
    rows = {(row[0], row[1]): row for row in table(page, "Exposure of live rollouts")}
    assert rows[(MIGRATION, "billing-v5-migration")][2] == "active"
    assert rows[(MIGRATION, "billing-v5-migration-r1")][2:6] == [
        "rolled_back", "reached ring 0 of 1 · internal_team:finance-ops", "—", "rolled back"]
    contained = [row[:2] for row in table(page, "Time to containment (minutes)")]
    assert [MIGRATION, "billing-v5-migration-r1"] in contained
    assert {slug for slug, _ in rows} == {MIGRATION, "support-reply-prompt", "refund-agent", "account-disable-agent"}


def test_the_manager_opens_both_runs_pages_with_their_latency_against_its_trigger(client, maya):
    for plan in RolloutPlan.objects.filter(workflow__slug=MIGRATION):
        response = client.get(reverse("rollouts:dashboard_plan", args=[plan.pk]))
        assert response.status_code == 200, plan.release_version
        page = response.content.decode()
        assert plan.release_version in page
        latency = figures(page)["signal-latency_p95_ms"]["data"]
        assert any(trace.get("y") for trace in latency), plan.release_version


def test_the_manager_reads_the_migration_but_does_not_run_it(maya):
    workflow = Workflow.objects.get(slug=MIGRATION)
    assert maya.has_perm(perm(VIEW), workflow)
    assert not maya.has_perm(perm(MANAGE_ROLLOUTS), workflow)
