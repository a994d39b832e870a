"""What the identity provider answers is checked before anyone is signed in, with ID tokens minted by a real
OpenID provider (tests/support/identity_provider.py) and the backend the callback uses: a token issued for
another client, for another sign-in's nonce, altered after signing, or expired is refused; a provider Ringfence
cannot read is said on the page; its discovery document is read once and kept."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
import requests
import time_machine
from django.core.exceptions import SuspiciousOperation

from governance import oidc
from governance.oidc import IdentityProviderBackend
from tests.support.identity_provider import identity_provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider(settings):
    with identity_provider(settings, name="Okta") as provider:
        provider.person("00u-alice", preferred_username="alice", groups=["payments-approvers"])
        yield provider


def id_token(provider, *, client_id: str = "ringfence", nonce: str = "n1") -> str:
    code = provider.authorize("00u-alice", client_id=client_id, nonce=nonce)
    return provider.tokens(code, client_id=client_id)["id_token"]


def test_a_token_issued_for_this_client_and_sign_in_is_accepted_with_its_claims(provider):
    payload = IdentityProviderBackend().verify_token(id_token(provider), nonce="n1")
    assert (payload["sub"], payload["iss"]) == ("00u-alice", provider.issuer)
    assert payload["aud"] in ("ringfence", ["ringfence"])
    assert payload["groups"] == ["payments-approvers"]


def test_an_id_token_issued_for_another_client_is_refused(provider, settings):
    token = id_token(provider, client_id="another-app")
    with pytest.raises(SuspiciousOperation, match="another client"):
        IdentityProviderBackend().verify_token(token, nonce="n1")
    settings.OIDC_CLIENT_ID = "another-app"  # the same token, at the client it was issued to
    assert IdentityProviderBackend().verify_token(token, nonce="n1")["sub"] == "00u-alice"


def test_an_id_token_minted_for_another_sign_ins_nonce_is_refused(provider):
    with pytest.raises(SuspiciousOperation, match="Nonce"):
        IdentityProviderBackend().verify_token(id_token(provider, nonce="n1"), nonce="n2")


def test_an_id_token_altered_after_signing_is_refused(provider):
    header, payload, signature = id_token(provider).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "00u-ada"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(SuspiciousOperation, match="verification failed"):
        IdentityProviderBackend().verify_token(f"{header}.{forged}.{signature}", nonce="n1")


def test_an_expired_id_token_is_refused(provider):
    token = id_token(provider)
    with time_machine.travel(datetime.now(UTC) + timedelta(hours=2), tick=False):
        with pytest.raises(SuspiciousOperation, match="expired"):
            IdentityProviderBackend().verify_token(token, nonce="n1")


def test_a_provider_ringfence_cannot_read_is_said_on_the_page(client, provider, settings):
    settings.OIDC_ISSUER = f"{provider.issuer}/no-such-tenant"
    oidc.forget_discovery()
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 503 and "cannot reach Okta" in response.text
    assert "oidc_states" not in client.session


def test_the_discovery_document_is_read_once_and_kept(client, provider, monkeypatch):
    fetched = []
    real_get = requests.get

    def counting_get(url, *args, **kwargs):
        fetched.append(url)
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(oidc.requests, "get", counting_get)
    for _ in range(3):
        response = client.get("/oidc/authenticate/?next=/approvals/")
        assert response.status_code == 302 and response.url.startswith(f"{provider.issuer}/oauth2/authorize?")
    assert fetched == [f"{provider.issuer}/.well-known/openid-configuration"]
    assert len(client.session["oidc_states"]) == 3  # one state, nonce and PKCE verifier per sign-in started
