"""ACL-06: tokens are stored as digests; random and revoked tokens get 401; last use on success only."""

from __future__ import annotations

import hashlib
import random
import secrets
import string
import time

import pytest
from django.db import connection
from django.test import Client

from audit.models import AuditEvent
from governance import services
from governance.models import ApiToken
from tests import factories
from tests.api.conftest import assert_problem

pytestmark = pytest.mark.django_db

RANDOM_TRIES = 2_000  # 400 of each of the five shapes; each try is a full request


@pytest.fixture
def hundred_tokens(workflow, agent_owner, admin_user) -> list[str]:
    account = factories.make_service_account("fleet-bot", owner=agent_owner, workflows=[workflow])
    return [services.issue_token(account.pk, actor=admin_user, label=f"node {i}").raw for i in range(100)]


def table_dump(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t::text FROM {table} AS t")
        return "\n".join(row[0] for row in cursor.fetchall())


def test_only_digests_and_prefixes_are_stored(hundred_tokens):
    dump = table_dump("governance_apitoken") + table_dump("governance_auditevent")
    leaked = [raw for raw in hundred_tokens if raw in dump or raw[12:] in dump]
    print(f"\nACL-06 plaintext tokens found in the token table and audit trail: {len(leaked)} of 100")
    assert leaked == []
    for raw in hundred_tokens:
        token = ApiToken.objects.get(prefix=raw[:12], digest=hashlib.sha256(raw.encode()).hexdigest())
        assert len(token.digest) == 64
    assert AuditEvent.objects.filter(action="token.issued").count() == 100


def random_tries(real: list[str]) -> list[str]:
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "-_"
    tries = []
    for i in range(RANDOM_TRIES):
        shape = i % 5
        if shape == 0:  # well-formed but unknown
            tries.append("rf_" + secrets.token_urlsafe(32))
        elif shape == 1:  # a real token's prefix with a different tail
            tries.append(rng.choice(real)[:12] + "".join(rng.choices(alphabet, k=31)))
        elif shape == 2:  # a real token with one character changed
            raw = rng.choice(real)
            at = rng.randrange(3, len(raw))
            tries.append(raw[:at] + ("A" if raw[at] != "A" else "B") + raw[at + 1:])
        elif shape == 3:  # a real token truncated or extended
            raw = rng.choice(real)
            tries.append(raw[:-1] if i % 2 else raw + "x")
        else:  # garbage of any length
            tries.append("".join(rng.choices(alphabet + "+/=.", k=rng.randrange(1, 200))))
    return tries


def test_random_and_revoked_tokens_are_refused_and_last_use_is_recorded_on_success_only(
        hundred_tokens, admin_user, settings):
    settings.API_RATE_LIMIT_REQUESTS = 1_000_000
    tries = random_tries(hundred_tokens)
    assert not set(tries) & set(hundred_tokens)
    client = Client()
    started = time.monotonic()
    statuses = [client.get("/api/v1/approvals/1", headers={"Authorization": f"Bearer {raw}"}).status_code
                for raw in tries]
    elapsed = time.monotonic() - started
    refused = statuses.count(401)
    print(f"\nACL-06 random tokens refused: {refused}/{RANDOM_TRIES} ({100 * refused / RANDOM_TRIES:.1f} %) "
          f"in {elapsed:.1f} s")
    assert refused == RANDOM_TRIES
    assert_problem(client.get("/api/v1/approvals/1", headers={"Authorization": f"Bearer {tries[1]}"}), 401,
                   "unauthenticated")
    assert ApiToken.objects.exclude(last_used_at=None).count() == 0

    good, revoked = hundred_tokens[0], hundred_tokens[1]
    assert client.get("/api/v1/approvals/1", headers={"Authorization": f"Bearer {good}"}).status_code == 404
    services.revoke_token(ApiToken.objects.get(prefix=revoked[:12]).pk, actor=admin_user)
    assert_problem(client.get("/api/v1/approvals/1", headers={"Authorization": f"Bearer {revoked}"}), 401)
    used = list(ApiToken.objects.exclude(last_used_at=None).values_list("prefix", flat=True))
    assert used == [good[:12]]
