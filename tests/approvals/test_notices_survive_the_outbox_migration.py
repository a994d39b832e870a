"""approvals 0005: notices become the one outbox of approvals and rollouts. A notice and its
deliveries written before it keep every value and are named as an approval notice about their
request, in its workflow; the database then refuses a notice that names nothing."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from approvals.models import Delivery, Notice

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = ("approvals", "0004_callbacks"), ("approvals", "0005_one_notification_outbox")


def migrate(target: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


@pytest.fixture(autouse=True)
def _back_to_the_latest_migration():
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_a_notice_and_its_deliveries_keep_their_rows_and_name_their_request(make_request, approver, workflow):
    req = make_request()
    Notice.objects.all().delete()
    Notice.objects.create(source="rollout", workflow=workflow, subject_type="rollouts.signalloss", subject_id="1",
                          event="signals_lost", title="refund-agent: signals lost", created_at=req.created_at)
    migrate(BEFORE)  # undone, a rollout's notice cannot stay: the old schema needs a request
    with connection.cursor() as cursor:  # written by the old code: a request, an event, a level
        cursor.execute("SELECT count(*) FROM approvals_notice")
        assert cursor.fetchone()[0] == 0
        cursor.execute("INSERT INTO approvals_notice (request_id, event, level, created_at, attempted_at, delivered_at)"
                       " VALUES (%s, 'escalated', 1, now() - interval '2 minutes', now(), NULL) RETURNING id",
                       [req.pk])
        notice_id = cursor.fetchone()[0]
        cursor.execute("INSERT INTO approvals_delivery (notice_id, channel, recipient, status, attempts, last_error)"
                       " VALUES (%s, 'email', 'alice@example.com', 'failed', 2, 'SMTP 451')", [notice_id])
    migrate(AFTER)
    notice = Notice.objects.get(pk=notice_id)
    assert (notice.source, notice.request_id, notice.workflow_id, notice.event, notice.level) == (
        "approval", req.pk, workflow.pk, "escalated", 1)
    assert (notice.subject_type, notice.subject_id) == ("approvals.approvalrequest", str(req.pk))
    assert notice.attempted_at is not None and notice.delivered_at is None
    delivery = Delivery.objects.get(notice=notice)
    assert (delivery.recipient, delivery.status, delivery.attempts, delivery.last_error) == (
        "alice@example.com", "failed", 2, "SMTP 451")
    with pytest.raises(IntegrityError):  # neither a request nor a text: a notice that names nothing
        Notice.objects.create(source="rollout", workflow=workflow, subject_type="rollouts.signalloss", subject_id="1",
                              event="signals_lost", created_at=notice.created_at)
