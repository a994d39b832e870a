"""Signing in with the company's identity provider, in Chromium, against a real OpenID provider the test starts
(oidc-provider-mock's Flask app on a free 127.0.0.1 port): the person lands with the roles and scope their groups
map to; a group removed takes the access away at the next sign-in; an answer carrying a state this browser did
not start, or an ID token minted for another sign-in's nonce, signs nobody in; LOCAL_LOGIN=false leaves only
the provider's button and refuses a password POST."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from audit.models import AuditEvent
from governance import identity, services
from governance.models import IdentityLink
from governance.permissions import APPROVE, VIEW, Role
from tests import factories
from tests.e2e.conftest import FACTORY_PASSWORD
from tests.support.identity_provider import identity_provider

pytestmark = pytest.mark.browser

AUTHORIZE = re.compile(r"/oauth2/authorize\?")


@pytest.fixture
def provider(settings):
    with identity_provider(settings, name="Okta") as provider:
        yield provider


@pytest.fixture
def browser_page(page):
    # The provider's form links a stylesheet from a CDN; nothing leaves this machine.
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1|localhost)"), lambda route: route.abort())
    return page


@pytest.fixture
def payments(admin_user, workflow):
    services.define_group_mapping(actor=admin_user, group="payments-approvers", roles=[Role.APPROVER],
                                  scope={workflow.slug: [VIEW, APPROVE]})
    return workflow


def authorize(page, subject: str):
    """On the provider's form: authorize as `subject`; returns the callback's response."""
    page.get_by_label("Subject").fill(subject)
    with page.expect_response(lambda response: "/oidc/callback/" in response.url) as callback:
        page.get_by_role("button", name="Authorize", exact=True).click()
    page.wait_for_load_state()
    return callback.value


def sign_in_with_okta(page, subject: str):
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Sign in with Okta").click()
    page.wait_for_url(AUTHORIZE)
    return authorize(page, subject)


def with_query(url: str, **changes: str) -> str:
    parts = urlparse(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return urlunparse(parts._replace(query=urlencode({**query, **changes})))


def test_a_person_signs_in_with_okta_and_lands_with_the_roles_their_groups_map_to(browser_page, provider, payments):
    page = browser_page
    provider.person("00u-alice", preferred_username="alice", email="alice@example.com", email_verified=True,
                    given_name="Alice", groups=["payments-approvers", "everyone"])
    page.goto("/accounts/login/")
    page.get_by_role("link", name="Sign in with Okta").click()
    page.wait_for_url(AUTHORIZE)
    asked = parse_qs(urlparse(page.url).query)
    assert asked["code_challenge_method"] == ["S256"] and len(asked["code_challenge"][0]) == 43  # PKCE
    assert asked["state"][0] and asked["nonce"][0] and asked["scope"] == ["openid email profile"]

    assert authorize(page, "00u-alice").status == 302
    expect(page.locator(".who")).to_contain_text("alice · approver")
    assert page.goto(f"/workflows/{payments.slug}/").status == 200
    assert page.goto("/approvals/").status == 200

    alice = User.objects.get(username="alice")
    link = IdentityLink.objects.get(user=alice)
    assert (link.issuer, link.subject, link.email_verified, alice.email) == (
        provider.issuer, "00u-alice", True, "alice@example.com")
    assert list(AuditEvent.objects.filter(actor_label=identity.IDENTITY_ACTOR).order_by("seq")
                .values_list("action", flat=True)) == ["user.created", "role.granted", "scope.granted"]


def test_a_group_removed_at_the_provider_takes_the_access_away_at_the_next_sign_in(browser_page, provider, payments,
                                                                                   admin_user):
    page = browser_page
    provider.person("00u-alice", preferred_username="alice", groups=["payments-approvers"])
    sign_in_with_okta(page, "00u-alice")
    expect(page.locator(".who")).to_contain_text("alice · approver")
    assert page.goto(f"/workflows/{payments.slug}/").status == 200
    services.set_role(actor=admin_user, user=User.objects.get(username="alice"), role=Role.MANAGER)  # by hand

    page.get_by_role("button", name="Sign out").click()
    provider.person("00u-alice", preferred_username="alice", groups=[])
    sign_in_with_okta(page, "00u-alice")

    expect(page.locator(".who")).to_contain_text("alice · manager")
    expect(page.locator(".who")).not_to_contain_text("approver")
    assert page.goto(f"/workflows/{payments.slug}/").status == 404
    revoked = AuditEvent.objects.filter(actor_label=identity.IDENTITY_ACTOR, action__in=["role.revoked",
                                                                                         "scope.revoked"])
    assert sorted(revoked.values_list("action", flat=True)) == ["role.revoked", "scope.revoked"]


def test_an_answer_with_a_state_this_browser_did_not_start_signs_nobody_in(browser_page, provider, payments, caplog):
    page = browser_page
    provider.person("00u-mallory", preferred_username="mallory", groups=["payments-approvers"])
    page.goto("/oidc/authenticate/")  # a real sign-in is under way in this browser
    page.wait_for_url(AUTHORIZE)
    page.goto(with_query(page.url, state="forged-state"))
    callback = authorize(page, "00u-mallory")  # the provider sends a real code back with the forged state

    assert callback.status == 400
    expect(page.locator("#sign-in-problem")).to_contain_text("Sign-in refused")
    assert page.goto("/oidc/callback/?code=stolen-code&state=forged-state").status == 400  # crafted by hand
    assert "state not found" in caplog.text
    assert not User.objects.filter(username="mallory").exists()
    page.goto("/workflows/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_an_id_token_minted_for_another_sign_ins_nonce_is_refused(browser_page, provider, payments, caplog):
    page = browser_page
    provider.person("00u-mallory", preferred_username="mallory", groups=["payments-approvers"])
    page.goto("/oidc/authenticate/")
    page.wait_for_url(AUTHORIZE)
    first = page.url
    page.goto("/oidc/authenticate/")
    page.wait_for_url(AUTHORIZE)
    second_state = parse_qs(urlparse(page.url).query)["state"][0]
    # The first request's nonce goes into the code; the answer comes back under the second sign-in's state.
    page.goto(with_query(first, state=second_state))
    callback = authorize(page, "00u-mallory")

    assert callback.status == 400
    assert "Nonce verification failed" in caplog.text
    assert not User.objects.filter(username="mallory").exists()


def test_with_local_login_off_only_the_provider_is_offered_and_a_password_post_is_refused(browser_page, provider,
                                                                                          settings):
    page = browser_page
    settings.LOCAL_LOGIN = False
    factories.make_user("alice", role=Role.APPROVER)
    page.goto("/accounts/login/")
    expect(page.get_by_role("link", name="Sign in with Okta")).to_be_visible()
    expect(page.locator("#id_password")).to_have_count(0)
    expect(page.locator("form[action='/accounts/login/']")).to_have_count(0)

    answer = page.request.post("/accounts/login/", form={"username": "alice", "password": FACTORY_PASSWORD})
    assert answer.status == 403 and "Password sign-in is turned off" in answer.text()
    assert page.request.post("/admin/login/", form={"username": "alice", "password": FACTORY_PASSWORD}).status == 403
    page.goto("/admin/login/?next=/admin/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=%2Fadmin%2F$"))
    page.goto("/workflows/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


@pytest.fixture(autouse=True)
def _security_log_for_caplog(caplog):
    caplog.set_level(logging.INFO, logger="ringfence.security")
