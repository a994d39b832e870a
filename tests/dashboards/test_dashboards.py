from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from governance.permissions import Role
from tests import factories
from tests.dashboards.conftest import figures, table

DASHBOARD = reverse("rollouts:dashboard")
UTC_TIME = "%Y-%m-%d %H:%M:%S"


@pytest.fixture
def manager_client(client, manager):
    client.force_login(manager)
    return client


def test_manager_sees_every_rollout_sla_health_and_time_to_containment(manager_client, story):
    before = AuditEvent.objects.count()
    page = manager_client.get(DASHBOARD).content.decode()

    rows = table(page, "Exposure of live rollouts")
    assert rows == [["refund-agent", "prompt-v2", "rolled_back", "reached ring 1 of 2 · customer_group:partners", "—",
                     "rolled back", story.plan.signals.latest("observed_at").observed_at.strftime(UTC_TIME)]]

    pending = {r[0]: int(r[1]) for r in table(page, "Pending requests by time left")}
    assert pending["overdue"] == 2 and pending["5–15 min"] == 1 and sum(pending.values()) == 3
    assert sum(int(r[2]) for r in table(page, "SLA breaches per day")) == 1
    assert table(page, "Escalations per level") == [["level 2", "1"]]
    assert table(page, "Time to decision (minutes)") == [["refund-agent", "2", "2.0", "2.8"]]

    assert table(page, "Time to containment (minutes)") == [[
        "refund-agent", "prompt-v2", str(story.rollback.pk), story.first_breach.strftime(UTC_TIME),
        story.rollback.closed_at.strftime(UTC_TIME), "90.0"]]

    charts = figures(page)
    assert set(charts) == {"rollouts", "sla-pending", "sla-breaches", "sla-escalations", "sla-time-to-decision",
                           "false-positives", "false-positives-over-time", "time-to-containment"}
    for key, fig in charts.items():
        if key != "rollouts":  # the only rollout in scope rolled back: nothing is exposed
            assert any(len(trace.get("y") or []) for trace in fig["data"]), key
    assert charts["time-to-containment"]["data"][0]["y"] == [1.5]
    assert AuditEvent.objects.count() == before  # dashboards only read


def test_false_positive_count_moves_with_reviews_and_override_reasons(manager_client, manager, story, containment_owner,
                                                                   client):
    page = manager_client.get(DASHBOARD).content.decode()
    assert table(page, "False-positive rollbacks by workflow") == [
        ["refund-agent", "0", "0", "0", "1", "1", "100.0", "noise 1"]]
    client.force_login(containment_owner)
    response = client.post(reverse("rollouts:review", args=[story.review.pk]),
                           {"verdict": "false_positive", "reason": "known_change", "note": "the tag ended too early"})
    assert response.status_code == 302
    client.force_login(manager)
    page = client.get(DASHBOARD).content.decode()
    assert table(page, "False-positive rollbacks by workflow") == [
        ["refund-agent", "1", "0", "1", "1", "2", "100.0", "known_change 1, noise 1"]]
    per_day = figures(page)["false-positives-over-time"]["data"]
    assert [sum(trace["y"]) for trace in per_day] == [1, 1]


def test_plan_charts_draw_each_signal_against_its_thresholds_rings_and_tags(manager_client, story):
    page = manager_client.get(reverse("rollouts:dashboard_plan", args=[story.plan.pk])).content.decode()
    charts = figures(page)
    assert set(charts) == {"exposure", "signal-cost_per_task", "signal-error_rate", "signal-latency_p95_ms",
                           "signal-quality_score"}
    latency = charts["signal-latency_p95_ms"]
    traces = {trace["name"]: trace for trace in latency["data"]}
    assert len(traces["mean"]["y"]) == story.latency_samples
    assert traces["critical trigger > 800"]["y"] == [800, 800]
    labels = [a["text"] for a in latency["layout"]["annotations"]]
    assert labels[0].startswith("expected_latency_increase: 10%")
    assert labels[1:] == ["ring 0 opened", "ring 1 opened", "rolled back"]
    assert [s["type"] for s in latency["layout"]["shapes"]] == ["rect", "line", "line", "line"]
    assert "criterion ≥ 0.8" in {trace["name"] for trace in charts["signal-quality_score"]["data"]}
    assert [r[:4] for r in table(page, "Exposure by ring")] == [
        ["0", "internal_team:support-ops", "100", "0"], ["1", "customer_group:partners", "100", "0"],
        ["2", "traffic_slice:all", "25", "0"]]

    response = manager_client.get(reverse("rollouts:dashboard_chart_csv", args=["signal-latency_p95_ms"]),
                                  {"plan": story.plan.pk})
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert response["Content-Disposition"].startswith("attachment")
    assert rows[0] == ["time (UTC)", "mean", "min", "max", "samples"] and len(rows) == 1 + story.latency_samples
    assert rows[-1][1:] == ["990.0", "990.0", "990.0", "1"]
    escalations = manager_client.get(reverse("rollouts:dashboard_chart_csv", args=["sla-escalations"]), {"days": 7})
    assert escalations.content.decode().splitlines() == ["escalated to,escalations", "level 2,1"]


def test_scope_holds_on_every_dashboard(client, story, other_workflow):
    outsider = factories.make_user("mo", role=Role.MANAGER)
    factories.scope(outsider, other_workflow)
    client.force_login(outsider)
    page = client.get(DASHBOARD).content.decode()
    assert [r[:2] for r in table(page, "Exposure of live rollouts")] == [["account-disable-agent", "disable-v7"]]
    assert "prompt-v2" not in page
    assert table(page, "False-positive rollbacks by workflow") == []
    assert table(page, "Time to containment (minutes)") == [] and table(page, "Escalations per level") == []
    assert sum(int(r[1]) for r in table(page, "Pending requests by time left")) == 0
    assert client.get(reverse("rollouts:dashboard_plan", args=[story.plan.pk])).status_code == 404
    for key in ("exposure", "signal-latency_p95_ms"):
        url = reverse("rollouts:dashboard_chart_csv", args=[key])
        assert client.get(url, {"plan": story.plan.pk}).status_code == 404
    assert client.get(reverse("rollouts:dashboard_plan", args=[story.other_plan.pk])).status_code == 200
