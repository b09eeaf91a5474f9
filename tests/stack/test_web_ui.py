"""The Web UI of the embedded dev server, read in a real browser (Debian's chromium, driven by
Playwright), as a person reads it after `bill`: the period's list tells the declined payment
from the paid one and shows the billing run, a payment's page says what it charges and what
each step did, and the run's page how the period ended.

Screenshots go to .data/screenshots/web-ui/ (not committed). Skipped only without chromium.
"""

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
from playwright.async_api import Page, async_playwright, expect
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from billing.constants import billing_run_id, workflow_id
from billing.ledger import Ledger
from billing.settings import Settings
from billing.stripe_client import make_stripe_client
from local_stack.temporal import NAMESPACE, EmbeddedTemporal
from starter import execute
from tests.support import ROOT, add_customer, running_worker

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

PERIOD = "2026-11"
SCREENSHOTS = ROOT / ".data" / "screenshots" / "web-ui"
# Each wait for the page; the dev server's UI answers in well under a second when idle.
UI_TIMEOUT_MS = 30_000


@pytest.fixture
async def temporal_with_ui(scratch_dir: Path) -> AsyncIterator[EmbeddedTemporal]:
    """The dev server as `make up` runs it, Web UI included."""
    server = EmbeddedTemporal(scratch_dir / "temporal")
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def visible(client: Client, query: str, expected: int) -> None:
    """Visibility lags the workflow a little; the UI reads visibility."""
    count = -1
    for _ in range(100):
        count = (await client.count_workflows(query)).count
        if count == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query}: {count} workflows, expected {expected}")


async def show_payment_status_column(page: Page) -> None:
    """What a person does once per browser: add PaymentStatus to the list's columns, next to
    Status. The UI keeps the columns in the browser's local storage, per namespace."""
    await page.get_by_role("button", name="Configure Columns").click()
    await page.get_by_role("button", name="Add PaymentStatus column").click()
    move_up = page.get_by_role("button", name="Move PaymentStatus column up")
    while await move_up.is_enabled():
        await move_up.click()
        if await page.get_by_test_id("orderable-list-item-PaymentStatus").evaluate(
            "item => item.previousElementSibling?.textContent?.trim() === 'Status'"
        ):
            break
    await page.get_by_role("button", name=re.compile(r"^Close .* configuration$")).click()


async def test_the_web_ui_tells_a_declined_payment_from_a_paid_one(
    temporal_with_ui: EmbeddedTemporal,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    started = time.monotonic()
    client = await Client.connect(
        temporal_with_ui.address, namespace=NAMESPACE, data_converter=pydantic_data_converter
    )
    ledger = Ledger(pool)
    stripe = make_stripe_client(settings)
    await add_customer(ledger, stripe, "pm_card_visa", amount=1200)
    await add_customer(ledger, stripe, "pm_card_chargeDeclined", amount=900)  # a hard decline
    async with running_worker(settings, client):
        bill = ["bill", PERIOD, "--wait", "--capture-after", "1s"]
        assert await execute(bill, settings, client) == 0
    by_amount = {p.amount: p for p in await ledger.period_payments(PERIOD)}
    paid, declined = by_amount[1200], by_amount[900]
    stripe_customer = await pool.fetchval(
        "SELECT stripe_customer_id FROM customers WHERE id = $1::uuid", declined.customer_id
    )
    period_query = f'BillingPeriod = "{PERIOD}"'
    await visible(client, f'{period_query} AND PaymentStatus = "failed"', 1)
    await visible(client, f'{period_query} AND PaymentStatus = "succeeded"', 1)
    billed = time.monotonic()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    ui = f"{temporal_with_ui.ui_url}/namespaces/{NAMESPACE}/workflows"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # The period's list: the declined payment reads "failed" in its own column.
            await page.goto(f"{ui}?query={quote(period_query)}")
            rows = page.get_by_test_id("workflows-summary-configurable-table-row")
            await expect(rows).to_have_count(3)  # the two payments and their billing run
            await show_payment_status_column(page)
            headers = page.get_by_test_id("workflows-summary-table-header-cell-PaymentStatus")
            await expect(headers).to_be_visible()
            declined_row = rows.filter(has_text=workflow_id(declined.id))
            paid_row = rows.filter(has_text=workflow_id(paid.id))
            await expect(declined_row).to_contain_text("failed")
            await expect(paid_row).to_contain_text("succeeded")
            # Both ran to their end: the Status column alone does not tell them apart.
            await expect(declined_row.get_by_test_id("execution-status")).to_have_text(
                "Completed", ignore_case=True
            )
            await page.reload()  # the browser keeps the column
            await expect(headers).to_be_visible()
            await expect(declined_row).to_contain_text("failed")
            await page.screenshot(path=SCREENSHOTS / "period-list.png")

            # The declined payment's page: its summary, and why it ended.
            await declined_row.get_by_role("link", name=workflow_id(declined.id)).click()
            await expect(page.get_by_text('"failure_code": "generic_decline"')).to_be_visible()
            await page.screenshot(path=SCREENSHOTS / "declined-payment.png", full_page=True)
            await page.get_by_text("User Metadata", exact=True).click()
            summary = page.frame_locator("#user-metadata-summary").locator("body")
            await expect(summary).to_contain_text(f"Charge {stripe_customer} 9.00 USD for {PERIOD}")
            details = page.frame_locator("#user-metadata-details").locator("body")
            await expect(details).to_contain_text(f"Payment {declined.id}")
            await page.screenshot(path=SCREENSHOTS / "declined-payment-summary.png")

            # The paid payment's timeline names each step and the capture window's timer.
            await page.goto(f"{ui}/{workflow_id(paid.id)}")
            await expect(
                page.get_by_text("authorize 12.00 USD on pm_", exact=False)
            ).to_be_visible()
            await expect(page.get_by_text("capture window 1s, until ")).to_be_visible()
            await expect(
                page.get_by_text(f"capture {paid.stripe_payment_intent_id}")
            ).to_be_visible()
            await page.screenshot(path=SCREENSHOTS / "paid-payment.png", full_page=True)

            # The billing run is listed with its period; its page says what it did.
            await page.goto(f"{ui}?query={quote(period_query)}")
            run_row = rows.filter(has_text=billing_run_id(PERIOD))
            await expect(run_row).to_contain_text("BillingRunWorkflow")
            await run_row.get_by_role("link", name=billing_run_id(PERIOD)).click()
            await expect(page.get_by_text('"failed": 1').first).to_be_visible()
            await expect(page.get_by_text('"succeeded": 1').first).to_be_visible()
            await page.get_by_text("User Metadata", exact=True).click()
            summary = page.frame_locator("#user-metadata-summary").locator("body")
            await expect(summary).to_contain_text(f"Bill every active customer for {PERIOD}")
            await page.screenshot(path=SCREENSHOTS / "billing-run.png", full_page=True)
        finally:
            await browser.close()
    done = time.monotonic()
    print(
        f"screenshots in {SCREENSHOTS}; billing {billed - started:.1f} s, "
        f"browser {done - billed:.1f} s"
    )
