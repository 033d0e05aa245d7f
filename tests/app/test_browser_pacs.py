"""Sign-in and the PACS in the browser: a real OpenID Connect provider, Orthanc and Streamlit.

Three real servers on loopback ports, driven by headless Chromium through Playwright:

* Orthanc holding real chest films from ``../shared`` wrapped as DX studies
  (``tests/pacs_server.py``);
* ``oidc-provider`` (a certified OpenID Connect implementation) run by Node.js
  (``tests/oidc/provider.mjs``), with the dashboard as its client and three
  accounts: a radiologist whose e-mail the administrator allows, a nurse in an
  allowed group (the ID token's ``groups`` claim), and a clerk in another group;
* ``streamlit run`` with a secrets file of its own (``--secrets.files``), holding
  ``[auth]`` and the PACS settings, so that the repository's ``.streamlit``
  folder is never written. It serves the tiny test model: what is checked is
  the sign-in and the PACS round trip, not the model.

A visitor sees "Sign in" and no PACS; the radiologist signs in at the provider's
login form, comes back signed in, searches the PACS, picks a study and sees its
map and probability bars; the nurse signs in, sees the PACS through her group,
and signs out again; the clerk signs in and still sees no PACS. The tests
fail (never skip) when Node.js, the npm packages, Orthanc or Chromium are
missing (``scripts/test.sh`` installs them); they skip only without the shared
films. Run with ``pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STUDY_SHOWN,
    ServerError,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.pacs_server import (
    ACCESSIONS,
    PASSWORD,
    PATIENT_NAME,
    USER,
    chest_pixels,
    free_port,
    load_studies,
    start_orthanc,
)
from tests.servers import server_missing

ROOT = Path(__file__).resolve().parents[2]
OIDC_DIR = ROOT / "tests" / "oidc"
ARTIFACTS = ROOT / "test-artifacts"
PROVIDER_START_S = 60
SERVER_START_S = 180
RESULT_S = 300

CLIENT_ID = "covid-dashboard"
ALLOWED_EMAIL = "radiologist@hospital.test"
ALLOWED_GROUP = "radiology"
ACCOUNTS = {
    "radiologist": {"email": ALLOWED_EMAIL, "name": "Test Radiologist"},
    "nurse": {"email": "nurse@hospital.test", "name": "Test Nurse",
              "groups": ["ward-7", ALLOWED_GROUP]},
    "clerk": {"email": "clerk@hospital.test", "name": "Test Clerk", "groups": ["finance"]},
}
"""The provider's accounts (login -> claims): the radiologist is allowed by e-mail, the
nurse by group, the clerk not at all."""
CHOSEN = "ACC003"
"""The study the radiologist picks (one native DX film)."""

pytestmark = pytest.mark.browser


# ------------------------------------------------------------------ the provider


@dataclass(frozen=True)
class Provider:
    """A running OpenID Connect provider.

    Attributes:
        issuer: Its issuer URL (loopback).
        client_secret: The dashboard's client secret.
    """

    issuer: str
    client_secret: str

    @property
    def metadata_url(self) -> str:
        """Its discovery document, as ``[auth] server_metadata_url`` names it."""
        return f"{self.issuer}/.well-known/openid-configuration"


def node_binary() -> str:
    """Node.js and the provider's packages; skips without them (fails under scripts/test.sh)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        server_missing("Node.js", "run `apt-get install nodejs npm`")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        server_missing("The OpenID Connect provider (oidc-provider)", f"run `npm ci` in {OIDC_DIR}")
    return node


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminates a server, killing it when it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def provider(tmp_path_factory, streamlit_port: int) -> Iterator[Provider]:
    """``tests/oidc/provider.mjs`` on a free loopback port; stopped afterwards."""
    node = node_binary()
    port = free_port()
    found = Provider(f"http://127.0.0.1:{port}", secrets.token_urlsafe(24))
    env = {**os.environ, "OIDC_PORT": str(port), "OIDC_CLIENT_ID": CLIENT_ID,
           "OIDC_CLIENT_SECRET": found.client_secret,
           "OIDC_REDIRECT_URI": f"http://127.0.0.1:{streamlit_port}/oauth2callback",
           "OIDC_ACCOUNTS": json.dumps(ACCOUNTS), "OIDC_COOKIE_KEY": secrets.token_hex(16)}
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    with log.open("wb") as out:  # the child keeps its own copy of the handle
        process = subprocess.Popen([node, "provider.mjs"], cwd=OIDC_DIR, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PROVIDER_START_S
        while not _answers(found.metadata_url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the OpenID Connect provider did not start:\n"
                            f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield found
    finally:
        _stop(process)


# ------------------------------------------------------------------ the PACS and the page


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, shared_data_dir):
    """An Orthanc holding real chest films as DX studies (and a CT study)."""
    films = chest_pixels(Path(shared_data_dir), len(ACCESSIONS))
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        load_studies(server, films)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def streamlit_port() -> int:
    """The page's port, known before the provider starts (it is in the redirect URI)."""
    return free_port()


def _toml(value: object) -> str:
    """A TOML value: JSON's strings and arrays of strings are TOML's too."""
    return json.dumps(value)


def write_secrets(path: Path, port: int, provider: Provider, pacs_url: str) -> None:
    """The page's secrets: the PACS settings and ``[auth]`` (Streamlit's OpenID Connect login).

    The provider offers no ``select_account`` prompt, so the login asks for ``login``.
    """
    values = {"COVID_PACS_URL": pacs_url, "COVID_PACS_USER": USER,
              "COVID_PACS_PASSWORD": PASSWORD, "COVID_PACS_ALLOWED_EMAILS": [ALLOWED_EMAIL],
              "COVID_PACS_ALLOWED_GROUPS": [ALLOWED_GROUP]}
    auth = {"redirect_uri": f"http://127.0.0.1:{port}/oauth2callback",
            "cookie_secret": secrets.token_urlsafe(32), "client_id": CLIENT_ID,
            "client_secret": provider.client_secret,
            "server_metadata_url": provider.metadata_url}
    lines = [f"{key} = {_toml(value)}" for key, value in values.items()]
    lines += ["", "[auth]", *(f"{key} = {_toml(value)}" for key, value in auth.items()),
              'client_kwargs = { prompt = "login" }']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@pytest.fixture(scope="module")
def server(tiny_model_file, tmp_path_factory, streamlit_port, provider, pacs):
    """``streamlit run`` with its own secrets file, serving the tiny model; always stopped.

    Yields:
        (the page's URL, its log file).
    """
    folder = tmp_path_factory.mktemp("streamlit")
    secrets_file = folder / "secrets.toml"
    write_secrets(secrets_file, streamlit_port, provider, pacs.url)
    log = folder / "server.log"
    env = {"COVID_MODEL_PATH": str(tiny_model_file),
           "COVID_LUNG_MODEL_PATH": str(folder / "absent.keras"),  # no segmenter: less CPU
           # Only the secrets file decides who sees the PACS, whatever this shell holds.
           "COVID_PACS_ALLOW_ANONYMOUS": "0", "COVID_PACS_ALLOWED_EMAILS": "",
           "COVID_PACS_ALLOWED_GROUPS": ""}
    proc = start_server(streamlit_port, log, env, (
        "--secrets.files", str(secrets_file), "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none"))
    try:
        url = f"http://127.0.0.1:{streamlit_port}"
        try:
            wait_healthy(url, proc, log, SERVER_START_S, poll_s=0.5)
        except ServerError as err:
            pytest.fail(str(err))
        yield url, log
    finally:
        stop_server(proc)


# ------------------------------------------------------------------ the browser


def _launch(playwright):
    """Launches headless Chromium: skips when it is not installed, fails when it cannot start."""
    if not Path(CHROMIUM).is_file():
        server_missing(f"Chromium ({CHROMIUM})", "run `apt-get install chromium`")
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=CHROMIUM_ARGS)
    except Exception as err:  # any launch failure is a test failure
        pytest.fail(f"headless Chromium could not be launched from {CHROMIUM}: {err}")


def _open_page(browser, url: str):
    """A fresh browser context (no cookies) on the page, once the uploader shows."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1440, "height": 1400}).new_page()
    page.goto(url, wait_until="domcontentloaded")
    expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_be_visible(
        timeout=SERVER_START_S * 1000)
    return page


def _pacs_panel(page):
    """The PACS expander."""
    return page.locator('[data-testid="stExpander"]').filter(has_text="PACS")


def _sign_in(page, url: str, login: str) -> None:
    """Clicks "Sign in", signs in at the provider's login form, and waits for the page."""
    from playwright.sync_api import expect

    sign_in = page.get_by_role("button", name="Sign in")
    expect(sign_in).to_be_visible(timeout=RESULT_S * 1000)
    sign_in.click()
    form = page.locator('form:has(input[name="login"])')
    expect(form).to_be_visible(timeout=RESULT_S * 1000)
    form.locator('input[name="login"]').fill(login)
    form.locator('input[name="password"]').fill(secrets.token_urlsafe(12))
    form.get_by_role("button", name="Sign-in").click()
    # The provider redirects to Streamlit's callback, which redirects to the page.
    page.wait_for_url(lambda at: at.startswith(f"{url}/") and "oauth2callback" not in at,
                      timeout=RESULT_S * 1000)
    expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_be_visible(
        timeout=RESULT_S * 1000)


def _sign_out(page, url: str) -> None:
    """Clicks "Sign out", confirms at the provider, and waits for the page."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Sign out").click()
    # Streamlit ends the provider's session too (its end_session_endpoint), which
    # asks for a confirmation before sending the browser back.
    page.wait_for_url(lambda at: "/session/end" in at, timeout=RESULT_S * 1000)
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(lambda at: at.startswith(f"{url}/") and "oauth2callback" not in at,
                      timeout=RESULT_S * 1000)
    expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_be_visible(
        timeout=RESULT_S * 1000)


def _no_secret_shown(page, log: Path, provider: Provider) -> None:
    """No credential, patient name or traceback on the page or in the server's log."""
    text = page.locator("body").inner_text()
    logged = log.read_text(errors="replace")
    for secret in (PASSWORD, provider.client_secret, *PATIENT_NAME.split("^")):
        assert secret not in text and secret not in logged
    assert "Traceback" not in text
    assert not page.locator('[data-testid="stException"]').count()


def test_a_signed_in_radiologist_picks_a_study_from_the_pacs_and_sees_its_map(server, provider,
                                                                             pacs):
    from playwright.sync_api import expect, sync_playwright

    url, log = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = _open_page(browser, url)
            expect(page.get_by_text("Sign in to search the hospital PACS.")).to_be_visible(
                timeout=RESULT_S * 1000)
            expect(_pacs_panel(page)).to_have_count(0)  # a visitor: no PACS

            _sign_in(page, url, "radiologist")
            panel = _pacs_panel(page)
            expect(panel).to_be_visible(timeout=RESULT_S * 1000)
            expect(page.get_by_role("button", name="Sign in")).to_have_count(0)

            panel.get_by_label("Accession number").fill(CHOSEN)
            panel.get_by_role("button", name="Search").click()
            panel.locator('[data-testid="stMultiSelect"]').click()
            option = page.get_by_role("option").filter(has_text=CHOSEN)
            expect(option).to_have_count(1, timeout=RESULT_S * 1000)
            option.click()
            page.keyboard.press("Escape")  # close the list
            panel.get_by_role("button", name="Retrieve and score").click()

            name = f"{CHOSEN}-PA-1.dcm"
            shown = page.wait_for_function(STUDY_SHOWN, arg=name, timeout=RESULT_S * 1000)
            assert shown.json_value() == "map"
            before = pacs.instance_count()
            page.get_by_role("button", name="Send to PACS").click()
            expect(page.get_by_text("the report and the map were stored")).to_be_visible(
                timeout=RESULT_S * 1000)
            assert pacs.instance_count() == before + 2  # its SR and its map
            page.get_by_role("button", name="Send to PACS").click()  # again: nothing new
            expect(page.get_by_text("nothing new was stored")).to_be_visible(
                timeout=RESULT_S * 1000)
            assert pacs.instance_count() == before + 2
            page.wait_for_timeout(500)  # let the images paint for the screenshot
            page.screenshot(path=str(ARTIFACTS / "browser_pacs.png"), full_page=True)
            _no_secret_shown(page, log, provider)
        finally:
            browser.close()


def test_a_user_allowed_by_group_sees_the_pacs_and_signs_out(server, provider):
    from playwright.sync_api import expect, sync_playwright

    url, log = server
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = _open_page(browser, url)
            _sign_in(page, url, "nurse")
            panel = _pacs_panel(page)
            expect(panel).to_be_visible(timeout=RESULT_S * 1000)
            panel.get_by_label("Accession number").fill(CHOSEN)
            panel.get_by_role("button", name="Search").click()
            panel.locator('[data-testid="stMultiSelect"]').click()
            expect(page.get_by_role("option").filter(has_text=CHOSEN)).to_have_count(
                1, timeout=RESULT_S * 1000)
            page.keyboard.press("Escape")

            _sign_out(page, url)
            expect(page.get_by_text("Sign in to search the hospital PACS.")).to_be_visible(
                timeout=RESULT_S * 1000)
            expect(page.get_by_role("button", name="Sign in")).to_have_count(1)
            expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
            expect(_pacs_panel(page)).to_have_count(0)
            page.reload(wait_until="domcontentloaded")  # the sign-out outlives a reload
            expect(page.get_by_text("Sign in to search the hospital PACS.")).to_be_visible(
                timeout=RESULT_S * 1000)
            expect(_pacs_panel(page)).to_have_count(0)
            _no_secret_shown(page, log, provider)
        finally:
            browser.close()


def test_a_signed_in_user_who_is_not_allowed_sees_no_pacs(server, provider):
    from playwright.sync_api import expect, sync_playwright

    url, log = server
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = _open_page(browser, url)
            _sign_in(page, url, "clerk")
            expect(page.get_by_text("Your account is not allowed to use the PACS.")).to_be_visible(
                timeout=RESULT_S * 1000)
            expect(_pacs_panel(page)).to_have_count(0)
            expect(page.get_by_role("button", name="Sign in")).to_have_count(0)
            expect(page.get_by_role("button", name="Sign out")).to_have_count(1)  # to switch
            _no_secret_shown(page, log, provider)
        finally:
            browser.close()
