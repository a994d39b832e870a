"""Every governance transition writes exactly the audit events it promises, in the same transaction.

Walks each service once (in the manner of zulip's test_audit_log and
tests/approvals/test_audit_actions.py) and checks that together they write every action in
services.AUDIT_ACTIONS, that the list names exactly the events the module's code writes, and
that a refusal writes nothing. A new transition without an event, or an event nobody lists or
tests, fails here.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
from axes.models import AccessAttempt

import governance
from audit import log as audit
from audit.models import AuditEvent
from governance import services
from governance.models import ContainmentAssignment
from governance.permissions import APPROVE, VIEW, Role
from tests import factories
from tests.governance.support import refused

pytestmark = pytest.mark.django_db


class Walk:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.mark = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0

    def new(self, subject=None) -> list[str]:
        events = list(AuditEvent.objects.filter(seq__gt=self.mark).order_by("seq"))
        self.mark = events[-1].seq if events else self.mark
        if subject is not None:
            assert {(e.subject_type, e.subject_id) for e in events} == {audit.describe_subject(subject)}
        self.seen.update(e.action for e in events)
        return [e.action for e in events]


def test_every_transition_writes_its_audit_events(admin_user, containment_owner, outsider):
    walk = Walk()
    workflow = services.create_workflow(actor=admin_user, slug="triage-agent", name="Triage agent", autonomy_tier=2)
    assert walk.new(workflow) == ["workflow.created"]
    services.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=3)
    assert walk.new(workflow) == ["workflow.updated"]
    services.update_workflow(workflow.pk, actor=admin_user, autonomy_tier=3)  # nothing changed: nothing written
    assert walk.new() == []

    assignment = services.assign_containment(workflow.pk, actor=admin_user, user=containment_owner, duty="pause")
    assert walk.new(assignment) == ["containment.assigned"]
    services.pause_workflow(workflow.pk, actor=containment_owner, reason="refunds doubled overnight")
    assert walk.new(workflow) == ["workflow.paused"]
    services.resume_workflow(workflow.pk, actor=containment_owner, reason="the cause is fixed")
    assert walk.new(workflow) == ["workflow.resumed"]
    services.remove_containment(assignment.pk, actor=admin_user)
    assert walk.new() == ["containment.removed"]
    assert not ContainmentAssignment.objects.filter(pk=assignment.pk).exists()

    services.grant_scope(workflow.pk, actor=admin_user, user=outsider, permissions=[VIEW, APPROVE])
    assert walk.new(workflow) == ["scope.granted"]
    services.revoke_scope(workflow.pk, actor=admin_user, user=outsider, permissions=[APPROVE])
    assert walk.new(workflow) == ["scope.revoked"]
    services.set_role(actor=admin_user, user=outsider, role=Role.SENIOR_APPROVER)
    assert walk.new(outsider) == ["role.granted"]
    services.set_role(actor=admin_user, user=outsider, role=Role.SENIOR_APPROVER, member=False)
    assert walk.new(outsider) == ["role.revoked"]
    services.set_user_groups(outsider.pk, actor=admin_user, groups=[Role.APPROVER, Role.AUDITOR])
    assert walk.new(outsider) == ["user.roles_changed"]
    services.set_user_flags(outsider.pk, actor=admin_user, is_staff=True)
    assert walk.new(outsider) == ["user.flags_changed"]

    action = services.define_action(workflow.pk, actor=admin_user, name="refund_customer", risk="high")
    assert walk.new(action) == ["workflow.action_defined"]
    services.remove_action(action.pk, actor=admin_user)
    assert walk.new() == ["workflow.action_removed"]

    owner = factories.make_user("otto", role=Role.RELEASE_MANAGER)
    account = services.create_service_account(actor=admin_user, name="triage-bot", owner=owner, workflows=[workflow])
    assert walk.new(account) == ["service_account.created"]
    services.update_service_account(account.pk, actor=admin_user, description="the triage agent's CI")
    assert walk.new(account) == ["service_account.updated"]
    issued = services.issue_token(account.pk, actor=admin_user, label="ci")
    assert walk.new(issued.token) == ["token.issued"]
    successor = services.rotate_token(issued.token.pk, actor=admin_user)
    assert walk.new(issued.token) == ["token.rotated"]
    services.revoke_token(successor.token.pk, actor=admin_user, reason="the CI job was retired")
    assert walk.new(successor.token) == ["token.revoked"]

    services.record_login_lockout(username="mallory", ip_address="203.0.113.9", failures=5,
                                  locked_by=["username", "ip_address"], until=None)
    assert walk.new(outsider) == ["login.locked_out"]
    AccessAttempt.objects.create(username="mallory", ip_address="203.0.113.9", user_agent="probe", get_data="",
                                 post_data="", http_accept="", path_info="/accounts/login/", failures_since_start=5)
    assert services.unlock_login(actor=admin_user, username="mallory") == 5
    assert walk.new(outsider) == ["login.unlocked"]

    mapping = services.define_group_mapping(actor=admin_user, group="sre", roles=[Role.CONTAINMENT_OWNER],
                                            scope={workflow.slug: [VIEW]})
    assert walk.new(mapping) == ["identity.mapping_defined"]
    services.sign_in_with_identity(issuer="https://login.example.com", groups_claim="groups",
                                   claims={"sub": "00u-ivy", "preferred_username": "ivy", "groups": ["sre"]})
    assert walk.new() == ["user.created", "role.granted", "scope.granted"]
    services.sign_in_with_identity(issuer="https://login.example.com", groups_claim="groups", claims={
        "sub": "00u-mallory", "preferred_username": "mallory", "email": outsider.email, "email_verified": True})
    assert walk.new(outsider) == ["user.identity_linked"]
    services.remove_group_mapping(actor=admin_user, group="sre")
    assert walk.new() == ["identity.mapping_removed"]
    _, raw = services.issue_breakglass_link(username="breakglass", reason="the provider is down", issued_by="root@h")
    assert walk.new() == ["user.created", "user.breakglass_issued"]
    services.use_breakglass_link(raw)
    assert walk.new() == ["user.breakglass_used"]

    assert walk.seen == set(services.AUDIT_ACTIONS)
    assert audit.verify_database().ok


def test_the_list_names_exactly_the_events_the_code_writes():
    """Read from the code: `audit.record(actor, "<action>", …)`, or a choice between two actions."""
    written = {}
    for info in pkgutil.iter_modules(governance.__path__):
        if info.ispkg:
            continue
        module = importlib.import_module(f"governance.{info.name}")
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "audit.record":
                action = node.args[1]
                choices = [action.body, action.orelse] if isinstance(action, ast.IfExp) else [action]
                assert all(isinstance(c, ast.Constant) for c in choices), ast.unparse(node)
                written.setdefault(info.name, set()).update(c.value for c in choices)
    assert written == {"services": set(services.AUDIT_ACTIONS)}


def test_refused_transitions_write_nothing(admin_user, workflow, approver, outsider):
    with refused("forbidden"):
        services.create_workflow(actor=approver, slug="shadow-agent", name="Shadow agent")
    with refused("forbidden"):
        services.pause_workflow(workflow.pk, actor=outsider, reason="not mine")
    with refused("forbidden"):
        services.resume_workflow(workflow.pk, actor=approver)
    with refused("forbidden"):
        services.grant_scope(workflow.pk, actor=approver, user=outsider, permissions=[VIEW])
    with refused("forbidden"):
        services.set_role(actor=approver, user=approver, role=Role.ADMINISTRATOR)
    with refused("forbidden"):
        services.set_user_flags(admin_user.pk, actor=admin_user, is_active=False)
    with refused("invalid"):
        services.assign_containment(workflow.pk, actor=admin_user, user=approver, duty="juggle")
