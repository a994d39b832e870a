"""What is published, and when (TMR-09): messages leave only with a committed transaction."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.db import transaction

from approvals import services
from approvals.models import ApprovalRequest
from tests.support.celery_processes import purge_broker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def ask(workflow, agent, key: str) -> ApprovalRequest:
    return services.create_request(workflow=workflow, kind="agent_action", action="refund_customer",
                                   parameters={"order": key}, requester=agent, idempotency_key=key)


def test_no_timer_is_published_for_a_request_that_rolled_back(workflow, agent):
    """No worker runs here, so whatever is published stays in the broker's list to be counted."""
    purge_broker()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with pytest.raises(RuntimeError), transaction.atomic():
        ask(workflow, agent, key="rolled-back")
        raise RuntimeError("the caller's transaction fails after asking")
    assert not ApprovalRequest.objects.exists()
    assert broker.llen("celery") == 0
    ask(workflow, agent, key="committed")  # the control: a committed request does publish
    wait_until(lambda: broker.llen("celery") == 2, 5, "the timer and the notice were published")
    purge_broker()
