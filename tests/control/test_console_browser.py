"""The review console in a real headless Chromium (Debian's chromium + chromium-driver),
driven by Selenium against a real gateway on loopback: log in, search, open a record,
see a record tampered with in the database flagged, run a citizen report, export."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid

import httpx
import orjson
import pytest
from helpers import get_token, wait_for_config
from sqlalchemy import select, update

from lgsp.storage.schema import audit_records

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PURPOSE = "administrative-procedure"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("headless Chromium not available: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    except WebDriverException as exc:
        pytest.skip(f"headless Chromium does not start here: {exc.msg}")
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def world(gateway):
    """An auditor, and a clerk that looked up two citizens (so there is something to review)."""
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "2"],
                         capture_output=True, text=True, check=True).stdout
    citizens = re.findall(r"^(\d{12})\t", out, re.M)[:2]
    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    clerk, auditor = f"desk-{suffix}", f"soc-{suffix}"
    clerk_secret = admin.create_client(clerk, "Bộ phận một cửa", "000.00.31.H30")
    auditor_secret = admin.create_client(auditor, "Security operations", roles=["auditor"])
    admin.add_grant(clerk, "population.citizen.get", ["personal_id", "full_name", "birth_date"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    token = get_token(gateway, clerk, clerk_secret)
    request_ids = []
    for pid in (citizens[0], citizens[1], citizens[0]):
        r = httpx.get(f"{gateway.url}/api/population/v1/citizens/{pid}", timeout=15, headers={
            "Authorization": f"Bearer {token}", "X-Purpose": PURPOSE, "X-On-Behalf-Of": f"officer-{suffix}"})
        assert r.status_code == 200, r.text
        request_ids.append(r.headers["x-request-id"])
    return {"clerk": clerk, "clerk_secret": clerk_secret, "auditor": (auditor, auditor_secret), "citizens": citizens, "request_ids": request_ids,
            "officer": f"officer-{suffix}"}


def wait(driver, selector: str, timeout: float = 10):
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))


def login(driver, gateway, client_id: str, secret: str) -> None:
    driver.get(f"{gateway.url}/console/login")
    driver.find_element(By.ID, "client_id").send_keys(client_id)
    driver.find_element(By.ID, "client_secret").send_keys(secret)
    driver.find_element(By.ID, "sign-in").click()


def session_cookie(driver) -> str | None:
    cookie = driver.get_cookie("lgsp_console")
    return cookie["value"] if cookie else None


def signed_in(driver, gateway, world) -> None:
    driver.get(f"{gateway.url}/console/records")
    if driver.current_url.endswith("/console/login"):
        login(driver, gateway, *world["auditor"])
    wait(driver, "#signed-in-as")


def test_wrong_secret_shows_an_error_and_opens_no_session(browser, gateway, world):
    login(browser, gateway, world["auditor"][0], "not-the-secret")
    assert "Client id or secret not accepted" in wait(browser, "#login-error").text
    assert browser.find_elements(By.ID, "signed-in-as") == []
    browser.get(f"{gateway.url}/console/records")
    assert browser.current_url.endswith("/console/login")  # sent back: no session
    cookie = browser.get_cookie("lgsp_console")  # only the login form's CSRF token
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    # A client without the auditor role cannot sign in, even with its right secret.
    login(browser, gateway, world["clerk"], world["clerk_secret"])
    assert "auditor role" in wait(browser, "#login-error").text
    browser.get(f"{gateway.url}/console/records")
    assert browser.current_url.endswith("/console/login")


def test_login_search_and_open_a_record(browser, gateway, world):
    login(browser, gateway, *world["auditor"])
    assert wait(browser, "#signed-in-as").text == world["auditor"][0]
    browser.find_element(By.ID, "f-client_id").send_keys(world["clerk"])
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, 10).until(EC.url_contains("client_id=" + world["clerk"]))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == 3 and all(world["clerk"] in row.text and "OK" in row.text for row in rows)
    assert browser.find_elements(By.CSS_SELECTOR, "#results .tampered") == []

    # By personal ID: the ID goes in a POST and the address holds only its keyed hash.
    browser.find_element(By.ID, "f-client_id").clear()
    browser.find_element(By.ID, "f-personal_id").send_keys(world["citizens"][0])
    browser.find_element(By.ID, "search-button").click()
    WebDriverWait(browser, 10).until(EC.url_contains("subject_hash="))
    assert world["citizens"][0] not in browser.current_url
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")) >= 2

    browser.find_elements(By.CSS_SELECTOR, "#results a.record-link")[0].click()
    status = wait(browser, "#integrity-status")
    assert "Tampered" not in status.text and ("Sealed" in status.text or "Not sealed yet" in status.text)
    assert world["officer"] in browser.find_element(By.ID, "v-officer").text
    assert browser.find_element(By.ID, "v-purpose").text == PURPOSE


def test_tampered_record_is_flagged(browser, gateway, world):
    engine = gateway.extra["engine"]
    with engine.connect() as conn:
        rid, purpose = conn.execute(select(audit_records.c.id, audit_records.c.purpose)
                                    .where(audit_records.c.request_id == world["request_ids"][1])).one()
    signed_in(browser, gateway, world)
    browser.get(f"{gateway.url}/console/records/{rid}")
    assert "Tampered" not in wait(browser, "#integrity-status").text
    with engine.begin() as conn:
        conn.execute(update(audit_records).where(audit_records.c.id == rid).values(purpose="x"))
    try:
        browser.get(f"{gateway.url}/console/records/{rid}")
        status = wait(browser, "#integrity-status")
        assert "tampered" in status.get_attribute("class").split() and "Tampered" in status.text
        assert "does not match its hash" in browser.find_element(By.ID, "findings").text
        assert browser.find_element(By.ID, "v-purpose").text == "x"

        browser.get(f"{gateway.url}/console/records?client_id={world['clerk']}")
        flagged = browser.find_elements(By.CSS_SELECTOR, "#results tr.tampered")
        assert len(flagged) == 1 and flagged[0].find_element(By.CSS_SELECTOR, "a").text == str(rid)
        assert "Tampered" in flagged[0].text

        browser.get(f"{gateway.url}/console/chains")
        assert "Tampered" in wait(browser, "#verify-status", 30).text
        findings = browser.find_element(By.ID, "findings").text
        assert "edited" in findings and str(rid) in findings
    finally:
        with engine.begin() as conn:  # the rest of the session's tests verify the same database
            conn.execute(update(audit_records).where(audit_records.c.id == rid).values(purpose=purpose))
    browser.get(f"{gateway.url}/console/records/{rid}")
    assert "Tampered" not in wait(browser, "#integrity-status").text


def test_citizen_report_and_export(browser, gateway, world):
    signed_in(browser, gateway, world)
    browser.get(f"{gateway.url}/console/report")
    browser.find_element(By.ID, "personal_id").send_keys(world["citizens"][0])
    browser.find_element(By.ID, "report-button").click()
    wait(browser, "#access-report")
    assert browser.find_element(By.ID, "report-personal-id").text == world["citizens"][0]
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#accesses tbody tr") if world["clerk"] in r.text]
    assert len(rows) == 2 and all(world["officer"] in r and PURPOSE in r and "full_name" in r for r in rows)

    # The export is a file download: fetch it with the browser's session cookie.
    browser.get(f"{gateway.url}/console/export")
    assert wait(browser, "#export-form")
    r = httpx.get(f"{gateway.url}/console/export", cookies={"lgsp_console": session_cookie(browser)},
                  params={"from": "2000-01-01T00:00", "to": "2100-01-01T00:00"}, timeout=30)
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    lines = [orjson.loads(line) for line in r.content.splitlines()]
    assert {"record", "key"} <= {item["type"] for item in lines}
    assert set(world["request_ids"]) <= {item.get("request_id") for item in lines}


def test_logout_ends_the_session(browser, gateway, world):
    signed_in(browser, gateway, world)
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait(browser, "#client_id")
    assert browser.current_url.endswith("/console/login")
    browser.get(f"{gateway.url}/console/records")
    assert browser.current_url.endswith("/console/login")


def test_form_without_csrf_token_is_refused(gateway, world):
    with httpx.Client(base_url=gateway.url) as client:
        client.get("/console/login")
        r = client.post("/console/login", data={"client_id": world["auditor"][0], "client_secret": world["auditor"][1]})
        assert r.status_code == 403 and "form has expired" in r.text
        r = client.get("/console/records", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("/console/login")
