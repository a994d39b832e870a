"""Ringfence as code: manage.py config plan / apply / export / schema on a real database."""

from __future__ import annotations

import json

import pytest

from approvals.models import ActionRule, EscalationPolicy
from audit import log as audit
from audit.models import AuditEvent
from configuration import exporting, loading, planning
from governance.models import ContainmentAssignment, GovernedAction, ServiceAccount, Workflow
from governance.permissions import Role
from rollouts.models import Metric
from tests import factories
from tests.support.config_files import run, write

pytestmark = pytest.mark.django_db

NEW_AGENT = """\
version: 1
metrics:
  - {slug: refund_latency_ms, label: Refund latency, unit: ms}
service_accounts:
  - name: voucher-bot
    owner: rhea
    workflows: [voucher-agent]
workflows:
  - slug: voucher-agent
    name: Voucher agent
    environment: production
    tier: 2
    off_hours_tier: 3
    business_hours: {timezone: Europe/Berlin, days: [0, 1, 2, 3, 4], start: 08:00, end: 18:00}
    actions:
      - name: issue_voucher
        risk: high
        rules:
          - {when: "double(params.amount) <= 20.0", then: allow}
          - {when: "true", then: approve, quorum: 2, approver_roles: [senior_approver]}
    escalation_policies:
      - mode: gate
        levels:
          - {roles: [approver], timeout_seconds: 300}
          - {roles: [senior_approver], people: [sam], timeout_seconds: 900}
    containment:
      pause: {primary: olivia, backup: [oscar]}
      rollback: {primary: olivia}
    scope:
      alice: [view, approve]
      sam: [view, approve]
"""


@pytest.fixture
def people(admin_user):
    users = {"ada": admin_user}
    for username, role in (("rhea", Role.RELEASE_MANAGER), ("alice", Role.APPROVER), ("sam", Role.SENIOR_APPROVER),
                           ("olivia", Role.CONTAINMENT_OWNER), ("oscar", Role.CONTAINMENT_OWNER)):
        users[username] = factories.make_user(username, role=role)
    return users


def test_a_new_agent_in_30_lines_is_planned_applied_and_audited_through_the_services(tmp_path, people):
    path = write(tmp_path, NEW_AGENT)
    code, out, _ = run("plan", path)
    assert code == 2
    assert "+ workflow/voucher-agent" in out and "+ rules/voucher-agent/issue_voucher" in out
    assert "+ containment/voucher-agent/pause" in out and "+ scope/voucher-agent/alice" in out
    assert out.strip().endswith("Plan: 10 to create, 0 to update, 0 to delete.")
    assert not Workflow.objects.filter(slug="voucher-agent").exists()  # a plan changes nothing

    code, out, _ = run("apply", path, "--as", "ada")
    assert code == 0 and out.strip().endswith("Applied.")
    workflow = Workflow.objects.get(slug="voucher-agent")
    assert (workflow.autonomy_tier, workflow.off_hours_tier, workflow.timezone) == (2, 3, "Europe/Berlin")
    assert str(workflow.business_start) == "08:00:00"
    rules = list(ActionRule.objects.filter(action__workflow=workflow).order_by("position"))
    assert [r.condition for r in rules] == ["double(params.amount) <= 20.0", "true"]
    assert rules[1].approver_roles == ["senior_approver"] and rules[1].quorum == 2
    policy = EscalationPolicy.objects.get(workflow=workflow, mode="gate")
    assert [lv.timeout_seconds for lv in policy.levels.order_by("position")] == [300, 900]
    assert ContainmentAssignment.objects.get(workflow=workflow, duty="pause", position="primary").user.username == (
        "olivia")
    assert people["alice"].has_perm("governance.approve_workflow", workflow)
    assert ServiceAccount.objects.get(name="voucher-bot").owner.username == "rhea"
    assert Metric.objects.get(slug="refund_latency_ms").unit == "ms"

    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"workflow.created", "workflow.action_defined", "action.rules_set", "approval.policy_defined",
            "containment.assigned", "scope.granted", "service_account.created", "metric.defined",
            "config.applied"} <= actions
    applied = AuditEvent.objects.get(action="config.applied")
    assert applied.actor_label == "ada" and applied.data["sha256"] == planning.sha256(open(path, "rb").read())
    assert applied.data["summary"] == {"create": 10, "update": 0, "delete": 0}
    assert audit.verify_database().ok

    assert run("plan", path)[0] == 0  # applied: nothing left to change
    assert run("apply", path, "--as", "ada")[1].strip().endswith("Nothing to apply.")
    assert AuditEvent.objects.filter(action="config.applied").count() == 1


def test_export_then_plan_shows_no_change_on_the_demo(tmp_path, settings):
    from importlib import import_module

    settings.VAR_DIR = tmp_path
    for name in ("governance.demo", "configuration.demo", "approvals.demo", "rollouts.demo"):
        import_module(name).seed()
    code, exported, _ = run("export")
    assert code == 0 and "refund-agent" in exported and "double(params.amount) <= 50.0" in exported
    assert "rf_" not in exported  # no token
    path = write(tmp_path, exported)
    code, out, err = run("plan", path)
    assert (code, out.strip(), err) == (0, "No changes: the live configuration matches the file.", "")
    assert run("plan", path, "--prune")[0] == 0
    assert run("plan", "examples/ringfence.yaml", "--prune")[0] == 0  # the demo is the example file


def test_plan_names_updates_field_by_field_and_prune_deletes(tmp_path, people):
    path = write(tmp_path, NEW_AGENT)
    run("apply", path, "--as", "ada")
    changed = (NEW_AGENT.replace("tier: 2\n", "tier: 1\n").replace("{roles: [approver], timeout_seconds: 300}",
                                                                  "{roles: [approver], timeout_seconds: 600}")
               .replace("      rollback: {primary: olivia}\n", "").replace("      sam: [view, approve]\n", ""))
    path = write(tmp_path, changed, "changed.yaml")
    code, out, _ = run("plan", path)
    assert code == 2
    assert "~ workflow/voucher-agent  (tier: 2 → 1)" in out
    assert "~ policy/voucher-agent/gate/any  (levels:" in out
    assert "- containment" not in out  # left alone without --prune
    code, out, _ = run("plan", path, "--prune")
    assert "- containment/voucher-agent/rollback" in out and "- scope/voucher-agent/sam" in out
    assert out.strip().endswith("Plan: 0 to create, 2 to update, 2 to delete.")
    run("apply", path, "--prune", "--as", "ada")
    workflow = Workflow.objects.get(slug="voucher-agent")
    assert not ContainmentAssignment.objects.filter(workflow=workflow, duty="rollback").exists()
    assert not people["sam"].has_perm("governance.view_workflow", workflow)
    assert run("plan", path, "--prune")[0] == 0


def test_apply_is_all_or_nothing_when_the_seventh_of_ten_objects_is_refused(tmp_path, people):
    # latency_p95_ms is a built-in metric: the service refuses to change it, after six objects went in
    # (workflow, account, action, rules, policy, scope) and before three containment duties.
    text = (NEW_AGENT.replace("refund_latency_ms, label: Refund latency", "latency_p95_ms, label: Latency")
            .replace("      sam: [view, approve]\n", "")
            .replace("      rollback: {primary: olivia}\n",
                     "      rollback: {primary: olivia}\n      narrow: {primary: olivia}\n"))
    path = write(tmp_path, text)
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    plan_code, plan_out, _ = run("plan", path)
    assert plan_code == 2 and plan_out.strip().endswith("Plan: 10 to create, 0 to update, 0 to delete.")
    assert plan_out.splitlines()[6] == "+ metric/latency_p95_ms"
    code, _, err = run("apply", path, "--as", "ada")
    assert code == 1
    assert "metric/latency_p95_ms" in err and "built-in metric" in err and "nothing was changed" in err
    assert not Workflow.objects.filter(slug="voucher-agent").exists()
    assert not ServiceAccount.objects.filter(name="voucher-bot").exists()
    assert AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() == head


@pytest.mark.parametrize(("broken", "line", "field", "words"), [
    (("    tier: 2\n", "    tier: 2\n    autonomy: high\n"), 13, "workflows[0].autonomy", "unknown key 'autonomy'"),
    (("    tier: 2\n", "    tier: two\n"), 12, "workflows[0].tier", "must be one of 1, 2 or 3"),
    (('"double(params.amount) <= 20.0"', '"double(params.amount) <="'), 19,
     "workflows[0].actions[0].rules[0].when", "line 1, column 25: Syntax error"),
    (("{roles: [senior_approver], people: [sam], timeout_seconds: 900}", "{timeout_seconds: 900}"), 25,
     "workflows[0].escalation_policies[0].levels[1]", "names nobody"),
    (("    owner: rhea\n", "    owner: nobody\n"), 6, "service_accounts[0].owner", "no active user 'nobody'"),
    (("    workflows: [voucher-agent]\n", "    workflows: [ghost-agent]\n"), 7,
     "service_accounts[0].workflows[0]", "no workflow 'ghost-agent'"),
    (("      pause: {primary: olivia, backup: [oscar]}\n", "      pause: {primary: olivia, backup: [nobody]}\n"), 27,
     "workflows[0].containment.pause", "no active user 'nobody'"),
    (("start: 08:00, end: 18:00", "start: 18:00, end: 08:00"), 14, "workflows[0].business_hours.end",
     "must end after they start"),
])
def test_invalid_input_names_file_line_and_field_and_changes_nothing(tmp_path, people, broken, line, field, words):
    old, new = broken
    assert old in NEW_AGENT
    path = write(tmp_path, NEW_AGENT.replace(old, new))
    for verb in (("plan", path), ("apply", path, "--as", "ada")):
        code, _, err = run(*verb)
        assert code == 1, err
        first = err.splitlines()[0]
        assert first.startswith(f"{path}:{line}: {field}: "), first
        assert words in first
    assert not Workflow.objects.filter(slug="voucher-agent").exists()
    assert not AuditEvent.objects.filter(action="config.applied").exists()


def test_a_folder_of_files_is_one_configuration_and_duplicate_keys_are_refused(tmp_path, people):
    folder = tmp_path / "ringfence"
    folder.mkdir()
    head, workflows = NEW_AGENT.split("workflows:\n")
    (folder / "accounts.yaml").write_text(head)
    (folder / "workflows.yaml").write_text("workflows:\n" + workflows)
    code, out, _ = run("plan", str(folder))
    assert code == 2 and out.strip().endswith("Plan: 10 to create, 0 to update, 0 to delete.")
    (folder / "workflows.yaml").write_text("workflows:\n"
                                           + workflows.replace("    tier: 2\n", "    tier: 2\n    tier: 3\n"))
    code, _, err = run("plan", str(folder))
    assert code == 1 and err.startswith(f"{folder / 'workflows.yaml'}:6: workflows[0].tier: 'tier' is given twice")


def test_the_schema_is_published_and_checks_a_file(tmp_path):
    out = tmp_path / "schema.json"
    assert run("schema", "--output", str(out))[0] == 0
    schema = json.loads(out.read_text())
    assert schema["title"] == "ringfence.yaml" and schema["additionalProperties"] is False
    assert "Rule" in schema["$defs"] and schema["$defs"]["Rule"]["properties"]["then"]["enum"] == [
        "allow", "deny", "approve", "tier"]


def test_only_an_administrator_applies(tmp_path, people):
    code, _, err = run("apply", write(tmp_path, NEW_AGENT), "--as", "rhea")
    assert code == 1 and "only administrators apply configuration" in err
    assert not GovernedAction.objects.exists()


def test_the_exported_document_loads_as_a_valid_file():
    doc, _ = loading.load_text(exporting.export_yaml())
    assert doc.version == 1


def test_a_level_that_replaces_the_previous_one_takes_the_first_approvers_away(tmp_path, people):
    from approvals import eligibility
    from approvals import services as approval_services

    text = NEW_AGENT.replace("{roles: [senior_approver], people: [sam], timeout_seconds: 900}",
                             "{roles: [senior_approver], people: [sam], timeout_seconds: 900, replaces: true}")
    assert run("apply", write(tmp_path, text), "--as", "ada")[0] == 0
    workflow = Workflow.objects.get(slug="voucher-agent")
    agent = ServiceAccount.objects.get(name="voucher-bot")
    req = approval_services.create_request(workflow=workflow, kind="agent_action", action="issue_voucher",
                                           requester=agent)
    alice, sam = people["alice"], people["sam"]
    assert eligibility.named_by_level(alice, req) and not eligibility.named_by_level(sam, req)
    approval_services.escalate_request(req.pk, actor=alice, reason="needs the senior")
    req.refresh_from_db()
    assert req.level == 1
    assert eligibility.named_by_level(sam, req) and not eligibility.named_by_level(alice, req)
    from approvals import selectors

    assert req in selectors.decidable_by(sam) and req not in selectors.decidable_by(alice)
    exported = exporting.export_yaml()
    assert "replaces: true" in exported
    assert run("plan", write(tmp_path, exported, "exported.yaml"))[0] == 0


def test_holidays_are_off_hours_all_day(tmp_path, people):
    import datetime as dt

    text = NEW_AGENT.replace("start: 08:00, end: 18:00}", "start: 08:00, end: 18:00, holidays: [2030-12-25]}")
    assert run("apply", write(tmp_path, text), "--as", "ada")[0] == 0
    workflow = Workflow.objects.get(slug="voucher-agent")
    assert workflow.holidays == ["2030-12-25"]
    christmas, boxing_day = (dt.datetime(2030, 12, d, 10, 0, tzinfo=dt.UTC) for d in (25, 26))  # a Wednesday, Thursday
    assert not workflow.in_business_hours(christmas) and workflow.tier_at(christmas) == 3
    assert workflow.in_business_hours(boxing_day) and workflow.tier_at(boxing_day) == 2
    exported = exporting.export_yaml()
    assert "2030-12-25" in exported and run("plan", write(tmp_path, exported, "exported.yaml"))[0] == 0
    code, _, err = run("plan", write(tmp_path, text.replace("[2030-12-25]", "[2030-13-25]"), "bad.yaml"))
    assert code == 1 and "business_hours.holidays[0]" in err


PLAN = """\
    rollout_plans:
      - release_version: voucher-v2
        name: Voucher v2
        stable_version: voucher-v1
        fallback_mode: human_review
        ready: true
        rings:
          - {segment_kind: internal_team, segment_value: support-ops, min_soak_seconds: 600}
          - {segment_kind: traffic_slice, segment_value: all, exposure_percent: 25, approval_point: true}
        criteria:
          - {metric: quality_score, operator: gte, threshold: 0.8, window_seconds: 600, min_samples: 5}
          - {metric: cost_per_task, operator: lte, threshold: 0.05}
          - {metric: latency_p95_ms, operator: lte, threshold: 900}
        triggers:
          - {metric: latency_p95_ms, operator: gt, threshold: 800, sustained_for_seconds: 120, breach_share: 60}
          - {metric: error_rate, operator: gt, threshold: 0.05, severity: warning, on_no_data: notify}
"""
ALL_DUTIES = """\
    containment:
      pause: {primary: olivia, backup: [oscar]}
      narrow: {primary: olivia}
      fallback: {primary: olivia}
      rollback: {primary: olivia}
      escalate: {primary: olivia}
      approve_expansion: {primary: olivia}
"""


def test_a_rollout_plan_in_the_file_is_created_marked_ready_and_round_trips(tmp_path, people):
    from rollouts.models import RolloutPlan

    text = NEW_AGENT.replace("""    containment:
      pause: {primary: olivia, backup: [oscar]}
      rollback: {primary: olivia}
""", ALL_DUTIES) + PLAN
    code, out, err = run("apply", write(tmp_path, text), "--as", "ada")
    assert code == 0, err
    assert "+ plan/voucher-agent/voucher-v2" in out
    plan = RolloutPlan.objects.get(workflow__slug="voucher-agent", release_version="voucher-v2")
    assert plan.state == "ready" and plan.rings.count() == 2
    trigger = plan.triggers.get(metric__slug="latency_p95_ms")
    assert (trigger.breach_share, trigger.sustained_for.total_seconds(), str(trigger.threshold)) == (
        60, 120, "800.000000")
    assert {"rollout.plan_created", "rollout.plan_ready"} <= set(AuditEvent.objects.values_list("action", flat=True))
    exported = exporting.export_yaml()
    assert "voucher-v2" in exported and run("plan", write(tmp_path, exported, "exported.yaml"))[0] == 0

    changed = text.replace("breach_share: 60", "breach_share: 70")
    code, out, _ = run("apply", write(tmp_path, changed, "changed.yaml"), "--as", "ada")
    assert code == 0 and "~ plan/voucher-agent/voucher-v2" in out
    plan.refresh_from_db()
    assert plan.state == "ready" and plan.triggers.get(metric__slug="latency_p95_ms").breach_share == 70


def test_a_plan_marked_ready_without_an_owner_for_every_duty_is_refused_naming_the_line(tmp_path, people):
    path = write(tmp_path, NEW_AGENT + PLAN)
    code, _, err = run("plan", path)
    assert code == 1
    assert err.splitlines()[0] == (f"{path}:37: workflows[0].rollout_plans[0].ready: a plan marked ready needs an "
                                   "owner for every duty; voucher-agent has none for narrow, fallback, escalate, "
                                   "approve_expansion")
