"""ACL-05: revocation is immediate. Removing a person's object permissions, or revoking a token (or
disabling its service account), denies the very next request: nothing is cached across requests."""

from __future__ import annotations

import pytest
from django.urls import reverse

from governance import services
from governance.models import ApiToken
from tests import factories


@pytest.mark.django_db
def test_removed_object_permission_denies_the_next_page_request(client, admin_user, workflow, containment_owner,
                                                                figures):
    client.force_login(containment_owner)
    assert client.get(workflow.get_absolute_url()).status_code == 200
    assert workflow.slug in client.get(reverse("governance:workflow_list")).content.decode()

    services.revoke_scope(workflow.pk, actor=admin_user, user=containment_owner)

    # Same browser session, no new sign-in.
    after = [
        client.get(workflow.get_absolute_url()).status_code,
        client.post(reverse("governance:pause", args=[workflow.slug]), {"reason": "still allowed?"}).status_code,
    ]
    listed = workflow.slug in client.get(reverse("governance:workflow_list")).content.decode()
    figures(f"ACL-05 requests allowed after scope removal: {sum(code < 400 for code in after) + listed} "
            f"(detail, pause → {after}; listed={listed})")
    assert after == [404, 404]
    assert not listed
    workflow.refresh_from_db()
    assert not workflow.paused


def _refusal(raw: str) -> str:
    """Why the token is refused (its 401 code), or "allowed"."""
    try:
        return "allowed" if services.authenticate_token(raw) is not None else "unknown"
    except services.TokenRefused as refused:
        return refused.code


@pytest.mark.django_db
def test_revoked_token_is_refused_on_its_next_use(admin_user, workflow, figures):
    account = factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])
    issued = services.issue_token(account.pk, actor=admin_user, label="ci")
    other = services.issue_token(account.pk, actor=admin_user, label="other")

    assert services.authenticate_token(issued.raw) == issued.token
    services.revoke_token(issued.token.pk, actor=admin_user, reason="leaked in a log")
    attempts = [_refusal(issued.raw) for _ in range(3)]
    figures(f"ACL-05 token uses allowed after revocation: {attempts.count('allowed')}/{len(attempts)}")

    assert attempts == ["token_revoked"] * 3
    assert services.authenticate_token(other.raw) == other.token  # only that token is affected


@pytest.mark.django_db
def test_disabling_a_service_account_refuses_all_its_tokens_at_once(admin_user, workflow):
    account = factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])
    issued = services.issue_token(account.pk, actor=admin_user)
    assert services.authenticate_token(issued.raw) is not None
    account.active = False
    account.save(update_fields=["active"])
    assert _refusal(issued.raw) == "service_account_disabled"


@pytest.mark.django_db
def test_last_use_is_recorded_only_for_accepted_tokens(admin_user, workflow):
    account = factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])
    issued = services.issue_token(account.pk, actor=admin_user)
    forged = issued.raw[:-4] + ("AAAA" if not issued.raw.endswith("AAAA") else "BBBB")
    assert services.authenticate_token(forged) is None  # same prefix, wrong secret
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at is None
    assert services.authenticate_token(issued.raw) is not None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at is not None


@pytest.mark.django_db
def test_last_use_is_recorded_to_the_minute(admin_user, workflow, time_machine):
    account = factories.make_service_account("refund-bot", owner=admin_user, workflows=[workflow])
    issued = services.issue_token(account.pk, actor=admin_user)
    time_machine.move_to("2026-11-23 10:00:00+00:00", tick=False)
    services.authenticate_token(issued.raw)
    first = ApiToken.objects.get(pk=issued.token.pk).last_used_at
    assert first.isoformat() == "2026-11-23T10:00:00+00:00"

    time_machine.move_to("2026-11-23 10:00:45+00:00", tick=False)
    assert services.authenticate_token(issued.raw) is not None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at == first  # within the minute: not rewritten

    time_machine.move_to("2026-11-23 10:01:05+00:00", tick=False)
    assert services.authenticate_token(issued.raw) is not None
    assert ApiToken.objects.get(pk=issued.token.pk).last_used_at.isoformat() == "2026-11-23T10:01:05+00:00"
