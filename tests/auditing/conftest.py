from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.db import transaction

from audit import log as audit
from governance.permissions import Role
from tests import factories
from tests.governance.conftest import figures  # noqa: F401  (measured figures, listed at the end of a run)

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def manager(workflow):
    user = factories.make_user("maya", role=Role.MANAGER)
    factories.scope(user, workflow)
    return user


@pytest.fixture
def decision_log(workflow, other_workflow, approver):
    """A small decision log over two workflows, one event an hour from T0, with justifications."""
    entries = [
        (approver, "approval.decided", ("approvals.approvalrequest", "7"), workflow,
         "Customer double-charged; refund is right."),
        (approver, "approval.decided", ("approvals.approvalrequest", "8"), workflow, "Amount above the policy limit."),
        ("system:rollouts", "rollout.rollback_executed", ("rollouts.rolloutplan", "3"), workflow,
         "error_rate above 5% for 10 min"),
        (approver, "approval.decided", ("approvals.approvalrequest", "9"), other_workflow,
         "Abuse confirmed by two reports."),
        ("system:timers", "approval.escalated", ("approvals.approvalrequest", "9"), other_workflow, ""),
    ]
    events = []
    for hour, (actor, action, subject, wf, reason) in enumerate(entries):
        with time_machine.travel(T0 + dt.timedelta(hours=hour), tick=False), transaction.atomic():
            events.append(audit.record(actor, action, subject, data={"n": hour}, reason=reason, workflow=wf))
    return events


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
