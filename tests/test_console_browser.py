"""The operator's path through the console in a real browser: headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; nothing downloads a browser) against ``pyflows serve`` on the test
database. Each step saves a screenshot under the test's output folder (and, with PYFLOWS_CONSOLE_SCREENSHOTS
set to a folder, there too: docs/console.md shows them). The browser's log must hold no Content-Security-Policy
violation and no error.

Without chromium and chromedriver the test is skipped, unless PYFLOWS_REQUIRE_BROWSER is set (CI sets it)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from pyflows.models import Tenant  # noqa: E402

from .helpers import set_raw_context, write_flow_tree  # noqa: E402
from .test_http import serving, token  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("PYFLOWS_REQUIRE_BROWSER"):
            pytest.fail("PYFLOWS_REQUIRE_BROWSER is set and chromium or chromedriver is missing "
                        "(apt-get install chromium chromium-driver)")
        pytest.skip("no chromium and chromedriver here (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Operator:
    """The browser, the server's base URL, and the screenshots taken so far."""

    def __init__(self, driver: WebDriver, base: str, folder: Path) -> None:
        self.driver, self.base, self.folder, self.shots = driver, base, folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        self.copy_to = os.environ.get("PYFLOWS_CONSOLE_SCREENSHOTS")

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        return WebDriverWait(self.driver, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css: str, then: str) -> None:
        """Click, and wait for the page that follows to show `then`."""
        WebDriverWait(self.driver, 15).until(ec.element_to_be_clickable((By.CSS_SELECTOR, css))).click()
        self.find(then)

    def text(self, css: str = "main") -> str:
        return str(self.find(css).text)

    def shot(self, name: str) -> None:
        self.shots += 1
        path = self.folder / f"{self.shots:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        if self.copy_to:
            Path(self.copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(self.copy_to) / path.name)

    def sign_in(self, jwt: str) -> None:
        self.open("/console/")
        self.find("#token").send_keys(jwt)
        self.click("#sign-in", then="#nav-flows")

    def problems_in_log(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]


def _flow(owner: psycopg.Connection[Any], tenant: Tenant, name: str, status: str, phases: int) -> uuid.UUID:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant, status=status, name=name, records=40, assets=12)
        set_raw_context(owner, tenant)
        owner.execute("update pyflows.discovery_flows set phases_completed = array(select phase from pyflows.phases "
                      "order by position limit %s), current_phase = (select phase from pyflows.phases "
                      "order by position offset %s limit 1), created_by = 'dana', "
                      "last_activity_at = now() - interval '3 hours' where id = %s", (phases, phases, tree.flow_id))
    return tree.flow_id


def test_the_operators_path_in_a_real_browser(browser: WebDriver, owner: psycopg.Connection[Any], tenant_a: Tenant,
                                              tenant_b: Tenant, pyflows_role_dsn: Callable[[str], str],
                                              tmp_path: Path) -> None:
    done = [_flow(owner, tenant_a, f"cmdb-2026-0{m}.csv", "completed", 99) for m in (7, 8)]
    stuck = _flow(owner, tenant_a, "cmdb-2026-09.csv", "failed", 3)
    owner.execute("update pyflows.discovery_flows set error = %s, agent_insights = %s where id = %s",
                  (Jsonb({"phase": "data_cleansing", "message": "37 rows have no hostname"}),
                   Jsonb([{"phase": "field_mapping", "insight": "Mapped 14 of 16 columns; 'Owner' looks like an "
                                                                "e-mail address"}]), stuck))
    _flow(owner, tenant_b, "servers-export.xlsx", "running", 1)
    with serving(pyflows_role_dsn("app"), tmp_path / "serve.log", "--admin-dsn", pyflows_role_dsn("admin")) as base:
        op = Operator(browser, base, tmp_path / "screenshots")
        op.open("/console/")
        op.find("#token")
        op.shot("sign-in")
        op.sign_in(token(tenant_a, sub="dana@example.com"))

        # The gate: a banner names the incomplete flow, the upload panel is disabled.
        banner = op.text("#gate-banner")
        assert "cmdb-2026-09.csv" in banner and "A new import cannot start" in banner
        assert op.find("#upload-disabled").get_attribute("disabled") is not None
        assert not browser.find_elements(By.CSS_SELECTOR, "#upload")
        op.shot("flows-gate-blocked")

        # Continue the blocking flow: its timeline, then Resume.
        op.click("#continue-blocking", then="#timeline")
        assert "failed" in op.text("#flow-status")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline li.completed")) == 3
        assert "data_cleansing: 37 rows have no hostname" in op.text("#errors")
        assert "Mapped 14 of 16 columns" in op.text("#insights")
        op.shot("flow")
        op.click("#resume", then=".notice")
        assert op.text("#flow-status") == "running"
        op.shot("flow-resumed")

        # Delete: the impact first, then a reason and a confirmation; nothing blocks it, so no Force.
        op.click("#delete", then="#impact")
        impact = op.text("#impact")
        assert "raw_import_records 40" in impact and "Blocked:" not in impact
        assert not browser.find_elements(By.CSS_SELECTOR, "#force")
        op.find("#reason").send_keys("duplicate of the August export")
        op.find("#confirm").click()
        op.shot("delete-impact")
        op.click("#confirm-delete", then="#event-link")
        assert "(forced)" not in op.text()
        op.shot("deleted")

        # The audit shows it; its event restores the flow.
        op.click("#nav-audit", then="#audit")
        trail = op.text("#audit")
        assert "flow.delete" in trail and "duplicate of the August export" in trail and "dana@example.com" in trail
        op.shot("audit")
        browser.find_element(By.CSS_SELECTOR, "#audit tbody tr a, #audit tr td a").click()
        op.find("#event-counts")
        assert op.text("#event-reason") == "duplicate of the August export"
        op.shot("audit-event")
        op.click("#restore", then=".notice")
        assert "Restored by audit event" in op.text(".notice") and op.text("#flow-name") == "cmdb-2026-09.csv"
        op.shot("restored")

        # A batch: the restored flow and the two finished ones, their combined impact, one by one; the finished
        # ones are blocked unless forced, and Force is offered.
        op.open("/console/?filter=all")
        for flow_id in (stuck, *done):
            op.find(f"#flow-{flow_id} input[type=checkbox]").click()
        op.click("#batch-delete", then="#batch-confirm")
        assert "raw_import_records 120" in op.text("#impact")
        op.find("#reason").send_keys("quarterly cleanup")
        op.find("#confirm").click()
        op.find("#force").click()
        op.find("#mode-each").click()
        op.shot("batch-impact")
        op.click("#confirm-batch", then="#batch-result")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#batch-result tr.ok")) == 3
        op.shot("batch-result")
        op.click("#nav-audit", then="#audit")
        assert op.text("#audit").count("forced") == 3

        # The gate is open again: start an import from the panel.
        op.click("#nav-flows", then="#upload")
        op.find("#filename").send_keys("cmdb-2026-10.csv")
        op.find("#storage_uri").send_keys("s3://imports/acme/cmdb-2026-10.csv")
        op.find("#byte_size").send_keys("482113")
        op.shot("upload-open")
        op.click("#start-import", then="#timeline")
        assert op.text("#flow-name") == "cmdb-2026-10.csv"

        # Admins: every tenant's incomplete flows, with the idle filter.
        browser.find_element(By.CSS_SELECTOR, "header form button").click()
        op.find("#token")
        op.sign_in(token(tenant_a, sub="ops@example.com", pyflows_admin=True))
        op.click("#nav-admin", then="#admin-flows")
        everyone = op.text("#admin-flows")
        assert "servers-export.xlsx" in everyone and "cmdb-2026-10.csv" in everyone
        op.shot("admin")
        op.click("#idle-1h", then="main")
        assert "servers-export.xlsx" in op.text() and "cmdb-2026-10.csv" not in op.text()
        assert op.problems_in_log() == []
    assert op.shots == 13
