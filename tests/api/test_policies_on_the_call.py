"""Policies on the call, through the API: rules decide dispatch, one approval buys one execution,
and the kill switch holds everything in flight."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest
import time_machine
from django.conf import settings

from approvals import executions
from approvals import services as approval_services
from approvals.models import ApprovalRequest, Execution, ShadowDifference
from audit.models import AuditEvent
from configuration import demo as configuration_demo
from core.errors import TransitionRefused
from governance import services
from governance.models import GovernedAction
from governance.permissions import Role
from rollouts import containment as rollout_containment
from rollouts import executors
from rollouts import tags as rollout_tags
from rollouts.models import ActionReview
from tests import factories
from tests.api.conftest import assert_problem, dispatch

TUESDAY_10 = dt.datetime(2030, 1, 8, 10, 0, tzinfo=dt.UTC)   # business hours of the workflow (9–17 UTC)


@pytest.fixture
def clock():
    with time_machine.travel(TUESDAY_10, tick=False) as traveller:
        yield traveller


def demo_rules(admin_user, workflow, name: str) -> GovernedAction:
    """The rules examples/ringfence.yaml gives the demo's refund agent."""
    action = GovernedAction.objects.get(workflow=workflow, name=name)
    declared = next(a for wf in configuration_demo.document().workflows if wf.slug == "refund-agent"
                    for a in wf.actions if a.name == name)
    approval_services.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": r.when, "outcome": r.then, "reason": r.reason, "quorum": r.quorum,
         "approver_roles": r.approver_roles} for r in declared.rules])
    return action


@pytest.fixture
def refunds(actions, admin_user, workflow):
    """refund_customer (high risk) with the demo's rules: ≤ 50 allow, ≤ 5,000 one approver, else
    two people incl. a senior approver."""
    return demo_rules(admin_user, workflow, "refund_customer")


def post(client, path: str, body: dict | None = None, **headers):
    return client.post(path, json.dumps(body or {}), content_type="application/json", headers=headers)


def refund(api, amount, **fields):
    return dispatch(api, "refund_customer", parameters={"order": "A-1", "amount": amount}, **fields)


@pytest.mark.django_db
def test_the_demo_rules_answer_4_400_and_40000_differently(api, refunds, clock, approver, senior_approver,
                                                           agent):
    small = refund(api, 4).json()
    assert (small["decision"], small["code"]) == ("allow", "allowed_by_rule")
    assert small["rule"]["position"] == 0 and small["rule"]["values"] == {"params.amount": 4}
    assert small["execution"]["state"] == "granted" and small["execution"]["approval_id"] is None
    allowed = AuditEvent.objects.get(action="dispatch.allowed")
    assert allowed.data["rule"]["condition"] == "double(params.amount) <= 50.0"
    assert allowed.data["execution"] == small["execution"]["id"]

    medium = refund(api, "400.00").json()
    assert (medium["decision"], medium["quorum"], medium["approver_roles"]) == ("pending", 1, [])
    assert medium["rule"]["position"] == 1 and medium["rule"]["values"] == {"params.amount": "400.00"}
    request = ApprovalRequest.objects.get(pk=medium["approval_id"])
    assert request.rule["position"] == 1 and request.quorum == 1
    assert AuditEvent.objects.get(action="approval.requested", subject_id=str(request.pk)).data["rule"]["id"] == (
        medium["rule"]["id"])

    large = refund(api, 40_000).json()
    assert (large["decision"], large["quorum"], large["approver_roles"]) == ("pending", 2, ["senior_approver"])
    big = ApprovalRequest.objects.get(pk=large["approval_id"])
    from approvals import selectors

    assert big in selectors.decidable_by(senior_approver)  # the senior is asked from the first level
    assert request not in selectors.decidable_by(senior_approver)  # not where no rule asks for a senior
    bob = factories.make_user("bob", role=Role.APPROVER)
    factories.scope(bob, big.workflow)
    approval_services.record_decision(big.pk, actor=approver, verdict="approve")
    approval_services.record_decision(big.pk, actor=bob, verdict="approve")
    big.refresh_from_db()
    assert big.state == "pending"  # two approvals, but no senior approver among them
    approval_services.record_decision(big.pk, actor=senior_approver, verdict="approve")
    big.refresh_from_db()
    assert big.state == "approved" and big.closed_by_label == "alice and bob and sam"


@pytest.mark.django_db
def test_a_rule_that_cannot_be_decided_denies_naming_the_rule(api, refunds, clock):
    body = refund(api, "a lot").json()
    assert (body["decision"], body["code"]) == ("deny", "rule_error")
    assert "Rule 1 (double(params.amount) <= 50.0)" in body["reason"] and body["execution"] is None
    assert dispatch(api, "refund_customer", parameters={"order": "A-1"}).json()["code"] == "rule_error"
    assert AuditEvent.objects.filter(action="dispatch.denied", data__code="rule_error").count() == 2
    assert not Execution.objects.exists() and not ApprovalRequest.objects.exists()


@pytest.mark.django_db
def test_a_rule_that_does_not_compile_is_refused_with_its_position_and_nothing_changes(refunds, admin_user):
    before = list(refunds.rules.values_list("condition", flat=True))
    with pytest.raises(TransitionRefused) as refused:
        approval_services.set_action_rules(refunds.pk, actor=admin_user, rules=[
            {"condition": "params.amount <= 50", "outcome": "allow"},
            {"condition": "params.amount <=", "outcome": "deny", "reason": "x"}])
    assert refused.value.field == "rules[1].condition"
    assert refused.value.message.startswith("rules[1].condition: line 1, column 17: ")
    assert list(refunds.rules.values_list("condition", flat=True)) == before
    with pytest.raises(TransitionRefused, match="a deny says why"):
        approval_services.set_action_rules(refunds.pk, actor=admin_user,
                                           rules=[{"condition": "true", "outcome": "deny"}])
    with pytest.raises(TransitionRefused, match="unknown role"):
        approval_services.set_action_rules(refunds.pk, actor=admin_user, rules=[
            {"condition": "true", "outcome": "approve", "quorum": 1, "approver_roles": ["cfo"]}])


@pytest.mark.django_db
def test_shadow_rules_change_nothing_and_count_where_they_differ(api, refunds, admin_user, clock):
    approval_services.set_action_rules(refunds.pk, actor=admin_user, shadow=True, rules=[
        {"condition": "double(params.amount) <= 20.0", "outcome": "allow"},
        {"condition": "true", "outcome": "approve", "quorum": 1}])
    answers = [refund(api, amount).json() for amount in (4, 30, 400)]
    assert [a["decision"] for a in answers] == ["allow", "allow", "pending"]  # the live rules decided
    difference = ShadowDifference.objects.get()
    assert difference.parameters == {"order": "A-1", "amount": 30}
    assert difference.live["decision"] == "allow" and difference.live["rule"] == 1
    assert difference.shadow["decision"] == "pending" and difference.shadow["rule"] == 2
    assert AuditEvent.objects.filter(action="action.rules_set", data__shadow=True).count() == 1


@pytest.mark.django_db
def test_a_window_tag_lowers_dispatch_to_gated_and_rules_read_tags(api, actions, admin_user, workflow, clock,
                                                                  containment_owner):
    assert dispatch(api, "send_receipt").json()["decision"] == "allow"  # low risk at tier 2
    rollout_tags.create_context_tag(actor=containment_owner, workflow=workflow, kind="migration_window",
                                    ends_at=TUESDAY_10 + dt.timedelta(hours=2), reason="database migration")
    body = dispatch(api, "send_receipt").json()
    assert (body["decision"], body["tier"]) == ("pending", 3)
    assert "by the migration window tag until 12:00: database migration" in body["reason"]
    action = GovernedAction.objects.get(workflow=workflow, name="issue_credit")
    approval_services.set_action_rules(action.pk, actor=admin_user, rules=[
        {"condition": "'migration_window' in tags", "outcome": "deny", "reason": "No credits during migrations."}])
    denied = dispatch(api, "issue_credit").json()
    assert (denied["code"], denied["reason"]) == ("denied_by_rule", "Rule 1: No credits during migrations.")
    assert denied["rule"]["values"] == {}


@pytest.mark.django_db
def test_read_only_fallback_denies_agent_actions(api, actions, live_plan, containment_owner, clock):
    executors.run(rollout_containment.engage_fallback(live_plan.pk, actor=containment_owner, reason="slow answers",
                                                      mode="read_only").pk)
    body = dispatch(api, "send_receipt").json()
    assert (body["decision"], body["code"]) == ("deny", "fallback_read_only")
    assert "read-only fallback" in body["reason"] and "Prompt v2" in body["reason"]


@pytest.mark.django_db
def test_a_tier_1_allow_lands_in_the_review_list(api, actions, workflow, admin_user, clock):
    services.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=1)
    body = dispatch(api, "issue_credit").json()
    assert body["decision"] == "allow"
    review = ActionReview.objects.get()
    assert review.execution_id == body["execution"]["id"] and review.action_id is None and review.is_pending


# -- one approval, one execution ----------------------------------------------------------------

def approved(api, approver, amount="400.00") -> int:
    approval_id = refund(api, amount).json()["approval_id"]
    approval_services.record_decision(approval_id, actor=approver, verdict="approve")
    return approval_id


@pytest.mark.django_db
def test_an_approval_is_claimed_once_and_its_outcome_reported_once(api, refunds, approver, clock):
    pending_id = refund(api, 400).json()["approval_id"]
    assert_problem(post(api, f"/api/v1/approvals/{pending_id}/execute"), 409, "not_approved")
    approval_services.record_decision(pending_id, actor=approver, verdict="approve")
    claimed = post(api, f"/api/v1/approvals/{pending_id}/execute")
    assert claimed.status_code == 201
    execution = claimed.json()["execution"]
    assert execution["state"] == "granted" and execution["approval_id"] == pending_id
    again = assert_problem(post(api, f"/api/v1/approvals/{pending_id}/execute"), 409, "already_executed")
    assert f"execution {execution['id']}" in again["detail"]

    # A crash between claim and outcome leaves the execution granted and visible, never a second grant.
    status = api.get(f"/api/v1/approvals/{pending_id}").json()
    assert status["execution"]["state"] == "granted" and status["execution"]["reported_at"] is None

    outcome = f"/api/v1/executions/{execution['id']}/outcome"
    first = post(api, outcome, {"status": "succeeded", "detail": "refund R-9 issued"})
    assert first.status_code == 200 and first.json()["state"] == "succeeded"
    assert post(api, outcome, {"status": "succeeded", "detail": "refund R-9 issued"}).json() == first.json()
    assert_problem(post(api, outcome, {"status": "failed", "detail": "gateway"}), 409, "outcome_reported")
    assert_problem(post(api, outcome, {"status": "maybe"}), 422)
    assert AuditEvent.objects.filter(action="execution.succeeded").count() == 1

    rejected = refund(api, 401).json()["approval_id"]
    approval_services.record_decision(rejected, actor=approver, verdict="reject", justification="duplicate")
    assert_problem(post(api, f"/api/v1/approvals/{rejected}/execute"), 409, "not_approved")


@pytest.mark.django_db
def test_an_unclaimed_approval_expires_on_the_clock(api, refunds, approver, clock):
    approval_id = approved(api, approver)
    clock.shift(dt.timedelta(seconds=settings.APPROVAL_EXECUTION_WINDOW_SECONDS - 1))
    assert executions.expire_unclaimed() == 0
    clock.shift(dt.timedelta(seconds=2))
    assert executions.expire_unclaimed() == 1
    body = assert_problem(post(api, f"/api/v1/approvals/{approval_id}/execute"), 409, "approval_expired")
    assert "expired unclaimed" in body["detail"]
    assert api.get(f"/api/v1/approvals/{approval_id}").json()["claim_expired"] is True
    assert AuditEvent.objects.filter(action="approval.claim_expired", subject_id=str(approval_id)).count() == 1


@pytest.mark.django_db
def test_an_execution_is_the_claiming_agents_alone(api, refunds, approver, workflow, agent_owner, clock):
    from tests.api.conftest import Agent, issue

    approval_id = approved(api, approver)
    other = factories.make_service_account("other-bot", owner=agent_owner, workflows=[workflow])
    from django.test import Client

    stranger = Client(headers=Agent(other, issue(other)).headers)
    assert_problem(post(stranger, f"/api/v1/approvals/{approval_id}/execute"), 404, "not_found")
    assert_problem(post(stranger, f"/api/v1/approvals/{approval_id}/cancel", {"reason": "mine"}), 404)
    assert post(api, f"/api/v1/approvals/{approval_id}/execute").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_sixteen_concurrent_claims_of_one_approval_grant_exactly_one(live_server, agent, refunds, approver):
    approval_id = approved(Client(agent), approver)
    url = f"{live_server.url}/api/v1/approvals/{approval_id}/execute"
    barrier = threading.Barrier(16)
    results: list[tuple[int, dict]] = []

    def claim() -> None:
        request = urllib.request.Request(url, data=b"{}", method="POST", headers={
            "Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"})
        barrier.wait()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                results.append((response.status, json.loads(response.read())))
        except urllib.error.HTTPError as error:
            results.append((error.code, json.loads(error.read())))

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = Counter(status for status, _ in results)
    print(f"\n16 concurrent claims of approval {approval_id}: {dict(statuses)}")
    assert statuses == {201: 1, 409: 15}
    assert {body["code"] for status, body in results if status == 409} == {"already_executed"}
    assert Execution.objects.filter(request_id=approval_id).count() == 1
    assert AuditEvent.objects.filter(action="execution.claimed").count() == 1


def Client(agent):  # noqa: N802 - a test client for an agent
    from django.test import Client as DjangoClient

    return DjangoClient(headers=agent.headers)


# -- the kill switch ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_pause_holds_everything_in_flight_and_resume_gives_the_time_back(api, refunds, approver, agent,
                                                                        containment_owner, clock):
    ready = approved(api, approver)  # approved, not claimed yet
    held = [refund(api, 400 + i).json()["approval_id"] for i in range(3)]
    clock.shift(dt.timedelta(minutes=4))
    services.pause_workflow(refunds.workflow_id, actor=containment_owner, reason="incident 42")
    assert ApprovalRequest.objects.filter(pk__in=held, held_at__isnull=False).count() == 3
    assert AuditEvent.objects.filter(action="approval.held").count() == 3
    due = {r.pk: r.due_at for r in ApprovalRequest.objects.filter(pk__in=held)}

    with pytest.raises(TransitionRefused) as refused:
        approval_services.record_decision(held[0], actor=approver, verdict="approve")
    assert refused.value.code == "paused" and "paused by olivia" in refused.value.message
    assert "incident 42" in refused.value.message
    assert_problem(post(api, f"/api/v1/approvals/{ready}/execute"), 409, "paused")
    assert dispatch(api, "refund_customer", parameters={"amount": 4}).json()["code"] == "paused"

    # A request opened while paused (a rollback proposed by a trigger, say) is held from the start.
    late = approval_services.create_request(workflow=refunds.workflow, kind="rollback", action="rollback",
                                            requester="system:evaluator", mode="override_window")
    assert late.is_held and AuditEvent.objects.filter(action="approval.held").count() == 4
    held.append(late.pk)
    due[late.pk] = late.due_at

    clock.shift(dt.timedelta(hours=1))  # far past every deadline: nothing escalates or expires
    assert approval_services.handle_all_due() == 0
    assert {approval_services.handle_due(pk) for pk in held} == {"held"}
    assert api.get(f"/api/v1/approvals/{held[0]}").json()["held"] is True

    services.resume_workflow(refunds.workflow_id, actor=containment_owner, reason="fixed")
    for req in ApprovalRequest.objects.filter(pk__in=held):
        assert req.state == "pending" and req.level == 0 and req.held_at is None
        # 6 of the first level's 10 minutes were left at the pause: the deadline moved by the hour paused.
        assert req.due_at == due[req.pk] + dt.timedelta(hours=1)
    assert AuditEvent.objects.filter(action="approval.released").count() == 4
    clock.shift(dt.timedelta(minutes=1, seconds=59))  # the late window had its 2 minutes left
    assert approval_services.handle_all_due() == 0
    clock.shift(dt.timedelta(seconds=2))
    assert approval_services.handle_all_due() == 1
    assert ApprovalRequest.objects.get(pk=late.pk).state == "auto_approved"
    clock.shift(dt.timedelta(minutes=3, seconds=58))  # the gates had 6 minutes left
    assert approval_services.handle_all_due() == 0
    clock.shift(dt.timedelta(seconds=2))
    assert approval_services.handle_all_due() == 3
    assert set(ApprovalRequest.objects.filter(pk__in=held[:3]).values_list("level", flat=True)) == {1}
    # The approval granted before the pause was not claimable while paused, and its window ran out.
    assert_problem(post(api, f"/api/v1/approvals/{ready}/execute"), 409, "approval_expired")


# -- discovery and withdrawal ---------------------------------------------------------------------

@pytest.mark.django_db
def test_an_agent_discovers_its_workflows_and_actions_and_withdraws_its_request(api, refunds, clock, other_workflow):
    workflows = api.get("/api/v1/workflows").json()
    assert [w["slug"] for w in workflows] == ["refund-agent"]  # only the token's scope
    assert workflows[0]["tier"] == 2 and workflows[0]["actions_url"] == "/api/v1/workflows/refund-agent/actions"
    listed = {a["name"]: a for a in api.get("/api/v1/workflows/refund-agent/actions").json()}
    assert listed["refund_customer"]["rules"] == [
        "double(params.amount) <= 50.0 → allow", "double(params.amount) <= 5000.0 → approve by 1",
        "true → approve by 2 incl. senior_approver"]
    assert listed["send_receipt"]["rules"] == [] and listed["send_receipt"]["risk"] == "low"
    assert_problem(api.get("/api/v1/workflows/account-disable-agent/actions"), 404)

    approval_id = refund(api, 400).json()["approval_id"]
    withdrawn = post(api, f"/api/v1/approvals/{approval_id}/cancel", {"reason": "the customer withdrew"})
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "cancelled"
    assert_problem(post(api, f"/api/v1/approvals/{approval_id}/cancel", {"reason": "again"}), 409, "not_pending")
    assert AuditEvent.objects.get(action="approval.cancelled").reason == "the customer withdrew"
