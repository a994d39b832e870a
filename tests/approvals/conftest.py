"""Approval fixtures: requests in each mode, asked by a service account owned by a requester."""

from __future__ import annotations

import pytest

from approvals import services
from approvals.models import ApprovalRequest
from governance.permissions import Role
from tests import factories


@pytest.fixture
def requester(workflow):
    """Owns the service account that asks; four-eyes keeps them out of the decision."""
    user = factories.make_user("rhea", role=Role.RELEASE_MANAGER, first_name="Rhea")
    factories.scope(user, workflow)
    return user


@pytest.fixture
def agent(requester, workflow):
    return factories.make_service_account("refund-bot", owner=requester, workflows=[workflow])


@pytest.fixture
def second_approver(workflow):
    user = factories.make_user("bob", role=Role.APPROVER, first_name="Bob")
    factories.scope(user, workflow)
    return user


@pytest.fixture
def make_request(workflow, agent):
    """Open a request through the service; keyword overrides for any create_request argument."""

    def make(**overrides) -> ApprovalRequest:
        fields = {
            "workflow": workflow, "kind": "agent_action", "action": "refund_customer",
            "parameters": {"order": "A-1001", "amount": "120.00"},
            "evidence": {"summary": "refund above the automatic limit",
                         "metrics": [{"metric": "refund_amount", "value": 120, "operator": ">", "threshold": 50}]},
            "requester": agent, "confidence": "0.82",
        }
        return services.create_request(**{**fields, **overrides})

    return make
