"""ACL-04 (superusers pass scope and escalation level, never four-eyes) and IN-06 (decision forms
refuse bad input with a message and change nothing) of RELIABILITY.md's test plan."""

from __future__ import annotations

import pytest
from django.test import Client

from approvals import services
from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from core.errors import TransitionRefused
from tests import factories
from tests.approvals.figures import report


def _ask(workflow, requester, key: str, mode: str = "gate") -> ApprovalRequest:
    return services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": key}, requester=requester, mode=mode, idempotency_key=key)


def test_acl04_superusers_pass_scope_and_level_but_never_four_eyes(client: Client, request, workflow, agent):
    root = factories.make_user("root", is_superuser=True, is_staff=True)  # no role, no object permission
    client.force_login(root)

    # Outside any assignment: the documented superuser rule lets them decide.
    theirs = _ask(workflow, agent, "agent-asked")
    assert services.record_decision(theirs.pk, actor=root, verdict="approve").state == ApprovalRequest.State.APPROVED

    # Their own request, and one asked by a service account they own: never, by any door.
    own = _ask(workflow, root, "root-asked")
    bot = factories.make_service_account("root-bot", owner=root, workflows=[workflow])
    owned = _ask(workflow, bot, "root-bot-asked")
    refused = []
    for req in (own, owned):
        with pytest.raises(TransitionRefused) as refusal:
            services.record_decision(req.pk, actor=root, verdict="approve")
        refused.append(refusal.value.code)
        page = client.post(f"/approvals/{req.pk}/decide/", {"verdict": "approve"})
        refused.append(page.status_code)
        client.post("/admin/approvals/approvalrequest/", {"action": "approve_selected", "_selected_action": [req.pk]})
    violations = Decision.objects.filter(decided_by=root, request__in=[own, owned]).count()
    states = set(ApprovalRequest.objects.filter(pk__in=[own.pk, owned.pk]).values_list("state", flat=True))
    report(request, "ACL-04 superuser: decided outside any assignment (allowed by policy); own request and own "
                    "service account's request refused by service, page and admin action", refused=refused,
           violations=violations)
    assert refused == ["four_eyes", 403, "four_eyes", 403]
    assert violations == 0 and states == {ApprovalRequest.State.PENDING}


def test_in06_decision_forms_refuse_bad_input_with_a_message_and_change_nothing(client: Client, request, workflow,
                                                                                agent, approver):
    gate = _ask(workflow, agent, "gate")
    window = _ask(workflow, agent, "window", mode="override_window")
    client.force_login(approver)
    cases = [
        ("reject without justification", gate, {"verdict": "reject", "justification": "  "}, "Say why"),
        ("100 KB justification", gate, {"verdict": "reject", "justification": "x" * 100_000}, "at most 5000"),
        ("override without a reason category", window, {"verdict": "override", "justification": "planned"},
         "Choose why you override"),
        ("a verdict the mode does not offer", gate, {"verdict": "override", "justification": "x", "reason": "noise"},
         "can be answered with"),
    ]

    def snapshot() -> tuple:
        return (list(ApprovalRequest.objects.order_by("pk").values_list("state", "level")), Decision.objects.count(),
                AuditEvent.objects.count())

    changed = 0
    for what, req, form, message in cases:
        before = snapshot()
        response = client.post(f"/approvals/{req.pk}/decide/", form)
        assert response.status_code == 422, (what, response.status_code)
        assert message in response.content.decode(), (what, message)
        changed += snapshot() != before

    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    assert client.post(f"/approvals/{gate.pk}/decide/",
                       {"verdict": "reject", "justification": script}).status_code == 302
    page = client.get(f"/approvals/{gate.pk}/").content.decode()
    assert Decision.objects.get(request=gate).justification == script  # stored as typed
    report(request, "IN-06 bad decision forms answered 422 with a message; markup in a justification stored as typed "
                    "and escaped on the page", cases=len(cases), changed=changed)
    assert changed == 0
    assert script not in page and "&lt;script&gt;" in page

