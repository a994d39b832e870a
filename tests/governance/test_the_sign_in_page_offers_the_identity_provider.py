"""The sign-in page offers the identity provider by name; LOCAL_LOGIN=false takes the password form away and
refuses a password POST to the site's and the admin's sign-in alike (the browser walk is in tests/e2e)."""

from __future__ import annotations

import pytest
from django.test import Client

from tests import factories
from tests.e2e.conftest import FACTORY_PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def okta(settings):
    settings.OIDC_ISSUER = "https://login.example.com"
    settings.OIDC_CLIENT_ID = "ringfence"
    settings.OIDC_CLIENT_SECRET = "s3cret-for-the-tests"
    settings.OIDC_PROVIDER_NAME = "Okta"
    return settings


def signed_in(client: Client) -> bool:
    return client.get("/workflows/").status_code == 200


def test_without_a_provider_the_page_is_the_password_form_and_the_provider_urls_do_not_exist(client):
    page = client.get("/accounts/login/").text
    assert 'id="id_password"' in page and "Sign in with" not in page
    assert client.get("/oidc/authenticate/").status_code == 404
    assert client.get("/oidc/callback/?code=x&state=y").status_code == 404


def test_the_page_offers_the_provider_by_name_beside_the_password_form(client, okta):
    page = client.get("/accounts/login/?next=/approvals/").text
    assert 'href="/oidc/authenticate/?next=/approvals/"' in page and "Sign in with Okta" in page
    assert 'id="id_password"' in page
    factories.make_user("alice")
    response = client.post("/accounts/login/", {"username": "alice", "password": FACTORY_PASSWORD})
    assert response.status_code == 302 and signed_in(client)


def test_local_login_off_removes_the_form_and_refuses_password_posts_everywhere(client, okta):
    okta.LOCAL_LOGIN = False
    factories.make_admin("ada")
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and "Sign in with Okta" in page.text
    assert 'id="id_password"' not in page.text and 'name="password"' not in page.text

    refused = client.post("/accounts/login/", {"username": "ada", "password": FACTORY_PASSWORD})
    assert refused.status_code == 403 and "Password sign-in is turned off" in refused.text
    assert not signed_in(client)

    admin_page = client.get("/admin/login/?next=/admin/")
    assert admin_page.status_code == 302 and admin_page.url == "/accounts/login/?next=%2Fadmin%2F"
    refused = client.post("/admin/login/?next=/admin/", {"username": "ada", "password": FACTORY_PASSWORD})
    assert refused.status_code == 403
    assert client.get("/admin/").status_code == 302  # still not signed in


def test_a_deactivated_person_signed_in_through_the_provider_loses_the_session(client, okta, admin_user):
    from governance import services

    user = services.sign_in_with_identity(issuer="https://login.example.com", groups_claim="groups",
                                          claims={"sub": "00u-bo", "preferred_username": "bo"})
    client.force_login(user, backend="governance.oidc.IdentityProviderBackend")
    assert client.get("/workflows/").status_code == 200
    services.set_user_flags(user.pk, actor=admin_user, is_active=False)
    assert client.get("/workflows/").status_code == 302
