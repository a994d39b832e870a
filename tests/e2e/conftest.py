"""Shared Playwright fixtures for browser tests: Debian's /usr/bin/chromium, headless, never a
downloaded browser.

Use them like this::

    from tests.e2e.conftest import login

    pytestmark = pytest.mark.browser

    def test_something(page):                  # page implies live_server (a transactional test)
        seed()                                  # create data first (e.g. governance.demo.seed())
        login(page, "alice")                    # demo password by default
        page.goto("/workflows/")                # URLs are relative to live_server.url

Fixtures
- ``browser``: one headless Chromium per test module (launched on first use, closed after the
  module).
- ``office``: Alice and Bob (approvers), Sam (senior approver), Rhea (release manager) scoped to
  ``workflow``, and refund-bot, Rhea's service account, asking.
- ``page``: a fresh browser context per test (its own cookies and storage) whose ``base_url`` is
  ``live_server.url``; requesting it makes the test a live-server, transactional test.
  ``page.context`` opens more pages in the same session; call ``browser.new_context(base_url=...)``
  for a second person.

Helper
- ``login(page, username, password=DEMO_PASSWORD)``: signs in through the login form and waits
  until the login page is left; fails with the form's error message if the sign-in is refused.
  People made by tests/factories.py have the password ``FACTORY_PASSWORD``.

While a browser is open, ``DJANGO_ALLOW_ASYNC_UNSAFE`` is set for the test process: Playwright's
sync API keeps an asyncio loop running in the test thread, and Django would otherwise refuse ORM
calls made there. Database connections opened meanwhile are closed after each test, so the
test database can be flushed and dropped.
"""

from __future__ import annotations

import pytest
from django.db import connections

from governance.demo import DEMO_PASSWORD
from governance.permissions import Role
from tests import factories

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FACTORY_PASSWORD = "pw-for-tests-1234"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # expect() keeps its own 5 s default, apart from the context's: a page updated by a worker on a
    # loaded machine gets the same 15 s as any action.
    expect.set_options(timeout=TIMEOUT_MS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        playwright = sync_playwright().start()
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()
        finally:
            playwright.stop()
            connections.close_all()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
        connections.close_all()


@pytest.fixture
def office(admin_user, workflow):
    """Alice and Bob approve, Sam is the senior approver, refund-bot (owned by Rhea) asks."""
    people = {}
    for name, role in (("alice", Role.APPROVER), ("bob", Role.APPROVER), ("sam", Role.SENIOR_APPROVER),
                       ("rhea", Role.RELEASE_MANAGER)):
        people[name] = factories.make_user(name, role=role, first_name=name.capitalize())
        factories.scope(people[name], workflow)
    people["agent"] = factories.make_service_account("refund-bot", owner=people["rhea"], workflows=[workflow])
    return people


def login(page, username: str, password: str = DEMO_PASSWORD) -> None:
    """Sign in through the login form as `username`; the page ends where the app sends people."""
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    if "/accounts/login/" in page.url:
        errors = page.locator(".errors").all_inner_texts()
        raise AssertionError(f"signing in as {username!r} was refused: {' '.join(errors) or 'no message'}")
