"""issue_token / revoke_token: a 256-bit token shown once, stored as prefix + SHA-256 digest, never
written anywhere in plain text (not even in the audit trail)."""

from __future__ import annotations

import hashlib

import pytest

from audit import log as audit
from audit.models import AuditEvent
from governance import services
from governance.models import ApiToken
from tests import factories
from tests.governance.support import database_state, events_since, head_seq, refused


@pytest.fixture
def account(admin_user, workflow):
    return factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])


@pytest.mark.django_db
def test_an_issued_token_is_stored_only_as_prefix_and_digest(admin_user, account):
    start = head_seq()
    issued = services.issue_token(account.pk, actor=admin_user, label="ci pipeline")
    token = ApiToken.objects.get(pk=issued.token.pk)

    assert issued.raw.startswith("rf_") and len(issued.raw) >= 3 + 43  # 32 random bytes, base64url
    assert token.prefix == issued.raw[:12]
    assert token.digest == hashlib.sha256(issued.raw.encode()).hexdigest()
    secret = issued.raw[12:]
    assert secret not in repr(database_state()), "the token's secret part is stored somewhere"
    [event] = events_since(start)
    assert event.action == "token.issued" and secret not in event.canonical
    assert audit.event_payload(event)["data"] == {"service_account": "refund-bot", "prefix": token.prefix,
                                                  "label": "ci pipeline", "expires_at": audit.format_time(
                                                      token.expires_at)}
    assert services.authenticate_token(issued.raw) == token


@pytest.mark.django_db
def test_tokens_are_unique_and_random(admin_user, account):
    raws = {services.issue_token(account.pk, actor=admin_user).raw for _ in range(20)}
    assert len(raws) == 20 and len({raw[:12] for raw in raws}) == 20


@pytest.mark.django_db
def test_issue_refusals_change_nothing(admin_user, approver, account):
    with refused("forbidden"):
        services.issue_token(account.pk, actor=approver)
    with refused("not_found"):
        services.issue_token(999_999, actor=admin_user)
    account.active = False
    account.save(update_fields=["active"])
    with refused("invalid"):
        services.issue_token(account.pk, actor=admin_user)


@pytest.mark.django_db
def test_revoking_a_token_is_audited_with_the_reason(admin_user, account):
    issued = services.issue_token(account.pk, actor=admin_user)
    start = head_seq()
    services.revoke_token(issued.token.pk, actor=admin_user, reason="printed in a CI log")
    token = ApiToken.objects.get(pk=issued.token.pk)
    assert token.is_revoked and token.revoked_by == admin_user
    [event] = events_since(start)
    assert (event.action, event.reason) == ("token.revoked", "printed in a CI log")
    assert audit.event_payload(event)["data"] == {"service_account": "refund-bot", "prefix": token.prefix}


@pytest.mark.django_db
def test_revoke_refusals_change_nothing(admin_user, approver, account):
    issued = services.issue_token(account.pk, actor=admin_user)
    with refused("forbidden"):
        services.revoke_token(issued.token.pk, actor=approver)
    services.revoke_token(issued.token.pk, actor=admin_user)
    with refused("conflict"):
        services.revoke_token(issued.token.pk, actor=admin_user)
    with refused("not_found"):
        services.revoke_token(999_999, actor=admin_user)
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("raw", ["", "rf_", "Bearer rf_x", "rf_" + "A" * 200, "xx_" + "A" * 43])
def test_malformed_bearer_values_authenticate_nobody(admin_user, account, raw):
    services.issue_token(account.pk, actor=admin_user)
    assert services.authenticate_token(raw) is None
