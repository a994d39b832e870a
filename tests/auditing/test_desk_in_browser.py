"""The auditor's day in Chromium: search, sign a checkpoint, export, verify the export and a tampered copy
(a worker checks each), verify the chain."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from audit.models import AuditEvent
from tests.e2e.conftest import FACTORY_PASSWORD, browser, login, page  # noqa: F401 (shared fixtures)
from tests.support.celery_processes import celery_processes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_auditor_searches_exports_and_verifies_in_the_browser(page, auditor, decision_log, tmp_path):  # noqa: F811
    login(page, auditor.username, FACTORY_PASSWORD)
    page.goto("/audit/")
    page.fill("#id_words", "policy limit")
    page.click("form[role=search] button.primary")
    rows = page.locator("table[aria-label=Events] tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Amount above the policy limit.")
    rows.first.locator("a").first.click()
    expect(page.locator("h1")).to_contain_text(f"Event #{decision_log[1].seq}")
    expect(page.locator("#chain-heading + dl")).to_contain_text("matches its contents")

    page.goto("/audit/")
    total = AuditEvent.objects.count()
    page.click("#sign-checkpoint-now")  # so that the export reaches the newest event
    expect(page.locator(".messages")).to_contain_text(f"Signed a checkpoint of the log's {total} events")
    with page.expect_download() as download:
        page.click("#export-jsonl")
    export = tmp_path / "export.jsonl"
    download.value.save_as(export)
    expect(page.locator("#export-progress")).to_contain_text(f"Export finished: {total} events")

    with celery_processes(beat=False, concurrency=1):
        page.goto("/audit/verify/")
        page.set_input_files("#id_export", str(export))
        page.click("#verify-upload")
        expect(page.locator("#job")).to_contain_text("intact", timeout=45_000)
        expect(page.locator("#job")).to_contain_text(f"OK: {total} events")

        tampered = tmp_path / "tampered.jsonl"
        tampered.write_text(export.read_text().replace("Abuse confirmed by two reports.", "Abuse suspected."))
        page.goto("/audit/verify/")
        page.set_input_files("#id_export", str(tampered))
        page.click("#verify-upload")
        expect(page.locator("#job")).to_contain_text(f"BROKEN at event #{decision_log[3].seq}", timeout=45_000)
        expect(page.locator("#job a")).to_have_attribute("href", f"/audit/events/{decision_log[3].seq}/")

        page.goto("/audit/verify/")
        page.click("#verify-chain")
        expect(page.locator("#job")).to_contain_text("intact", timeout=45_000)
    expect(page.locator("#job")).to_contain_text(f"{total + 1} events checked")  # and the signing's own record
