"""Every page a demo person of each role can reach, on a laptop (1,366 px) and a phone (390 px): nothing is
wider than the screen (wide tables scroll inside their card), every input has a label, the menu
marks one page as current, Sign out is on the screen and a skip link leads to the content. Pages
that are not there, or not theirs, are the site's own pages.

One browser and one sign-in per person; a page is loaded once and measured at both widths (the
layout follows the window's width, as on a turned tablet). Pages of one shape (/approvals/<n>/)
are visited once per person, so the walk stays short."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlparse

import pytest
from django.core.management import call_command

from governance.demo import PEOPLE
from tests.e2e.conftest import login

pytestmark = pytest.mark.browser

LAPTOP, PHONE, HEIGHT = 1366, 390, 900
NOT_A_PAGE = re.compile(r"^/(admin|api|static)/|/accounts/logout|/export|\.csv|\.json")
MEASURE = """() => {
  const unlabeled = [];
  for (const el of document.querySelectorAll("main input, main select, main textarea")) {
    if (["hidden", "submit", "button", "reset"].includes(el.type) || el.closest("template")) continue;
    if (!(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
      unlabeled.push(el.name || el.id || el.outerHTML.slice(0, 80));
  }
  const overflow = document.documentElement.scrollWidth - window.innerWidth;
  const wide = overflow <= 0 ? [] : [...document.querySelectorAll("body *")]
    .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1 && !el.closest(".card, .table-scroll"))
    .slice(0, 3).map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + "." + el.className);
  const signOut = document.querySelector("header .who button");
  const box = signOut && signOut.getBoundingClientRect();
  return {
    overflow, wide, unlabeled,
    current: document.querySelectorAll("nav[aria-label=Main] a[aria-current=page]").length,
    signOutShown: !box || (box.width > 0 && box.left >= 0 && box.right <= window.innerWidth),
    skipLink: !!document.querySelector("a.skip-link[href='#main']") && !!document.getElementById("main"),
  };
}"""


def shape(path: str) -> str:
    """/approvals/12/?page=2 and /approvals/7/ are one shape of page."""
    url = urlparse(path)
    keys = "&".join(sorted(part.split("=")[0] for part in url.query.split("&") if part))
    return re.sub(r"\d+", "N", url.path) + ("?" + keys if keys else "")


def problems_of(page, width: int) -> list[str]:
    page.set_viewport_size({"width": width, "height": HEIGHT})
    found = page.evaluate(MEASURE)
    problems = []
    if found["overflow"] > 0:
        problems.append(f"{found['overflow']} px wider than the screen ({', '.join(found['wide']) or 'a card'})")
    if found["unlabeled"]:
        problems.append(f"inputs without a label: {found['unlabeled']}")
    if found["current"] > 1:
        problems.append(f"{found['current']} menu entries marked current")
    if not found["signOutShown"]:
        problems.append("Sign out is off the screen")
    if not found["skipLink"]:
        problems.append("no skip link to the content")
    return [f"{width} px: {p}" for p in problems]


def walk(page) -> tuple[int, dict[str, list[str]]]:
    """Every page reachable from the start page by links, one per shape; what is wrong on each."""
    todo, seen, shapes, wrong = ["/"], set(), set(), {}
    while todo:
        path = todo.pop(0)
        page.set_viewport_size({"width": LAPTOP, "height": HEIGHT})
        response = page.goto(path)
        assert response.status < 400 or response.status in (403, 404), f"{path}: {response.status}"
        seen.add(path)
        problems = problems_of(page, LAPTOP) + problems_of(page, PHONE)
        if problems:
            wrong[path] = problems
        for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
            url = urlparse(href)
            target = url.path + (f"?{url.query}" if url.query else "")
            if url.netloc != urlparse(page.url).netloc or NOT_A_PAGE.search(target) or shape(target) in shapes:
                continue
            shapes.add(shape(target))
            todo.append(target)
    return len(seen), wrong


def open_an_override_window() -> None:
    """A live demo rollout breaches its critical trigger at tier 2: its page and the request have
    an override window and evidence to show."""
    from core import clock
    from rollouts import evaluator, signals
    from rollouts.models import RolloutAction, RolloutPlan

    plan = (RolloutPlan.objects.filter(state="active").exclude(actions__state__in=RolloutAction.OPEN_STATES)
            .order_by("pk").first())
    workflow = plan.workflow
    workflow.autonomy_tier, workflow.off_hours_tier = 2, None
    workflow.save(update_fields=["autonomy_tier", "off_hours_tier"])
    trigger = plan.triggers.filter(severity="critical").first()
    value = float(trigger.threshold) * (2 if trigger.operator in ("gt", "gte") else 0.2)
    now = clock.now()
    rows = [(trigger.metric_id, plan.current_ring, "", now - timedelta(seconds=10 * i), value) for i in range(8)]
    signals.ingest_signals(plan, rows)
    evaluator.evaluate_plan(plan.pk)
    assert plan.actions.filter(state="pending_approval", approval_request__mode="override_window").exists()


def test_every_page_of_every_role_fits_a_laptop_and_a_phone(page):
    call_command("seed_demo", verbosity=0)
    open_an_override_window()
    # plotly.js is 4.6 MB of script to parse on every dashboard: the charts are drawn inside cards
    # that scroll (tests/dashboards draw them), so this walk measures the pages without it.
    page.context.route("**/vendor/plotly/*", lambda route: route.fulfill(body="", content_type="text/javascript"))
    walked, wrong = {}, {}
    one_per_role = {role: username for username, _name, role in reversed(PEOPLE)}
    for role, username in one_per_role.items():
        page.context.clear_cookies()
        login(page, username)
        count, problems = walk(page)
        walked[username] = count
        wrong.update({f"{username} ({role}) {path}": p for path, p in problems.items()})
        assert count >= 5, f"{username} reached only {count} pages"
    assert not wrong, "\n".join(f"{where}: {'; '.join(p)}" for where, p in wrong.items())
    print(f"browser: pages walked per person at {LAPTOP} and {PHONE} px: {walked}")


def test_pages_that_are_missing_or_not_yours_are_the_sites_own(page):
    call_command("seed_demo", verbosity=0)
    login(page, "alice")
    for path, status, heading in (("/rollouts/dashboards/plans/999999/", 404, "Not found"),
                                  ("/approvals/999999/", 404, "Not found"),
                                  ("/no-such-page/", 404, "Not found"),
                                  ("/people/", 403, "You may not open this")):
        response = page.goto(path)
        assert response.status == status, path
        assert page.locator("main h1").inner_text() == heading, path
        assert page.locator("header.topbar nav[aria-label=Main] a").count() >= 1, f"{path} has no menu"
        assert page.locator("link[rel=stylesheet]").count() >= 1
        for width in (LAPTOP, PHONE):
            assert not problems_of(page, width), path
    page.context.clear_cookies()
    page.goto("/rollouts/dashboards/plans/999999/")
    assert "/accounts/login/" in page.url  # signed out: asked to sign in, not told what exists
