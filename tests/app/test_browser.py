"""End to end: a real Streamlit server, driven by headless Chromium through Playwright.

* One real chest X-ray from ``../shared`` and one broken file: what a user sees is
  both class percentages as text (summing to 100), the Grad-CAM overlay image,
  and a clear error naming the broken file.
* Five real X-rays dropped at once: the triage table (most suspicious first),
  a row clicked opens its study, and the study's PDF report and the table's CSV
  download; then the model page.
* Four sessions dropping different films at the same time: each sees its own
  study (or table) and nothing of the others', and no page shows a traceback.
* With the shipped lung segmenter: a study shows the share of its evidence
  inside the lungs, and the "Lung outline" switch draws the outline (counted as
  cyan pixels in the image the browser shows) and takes it away again.

Screenshots are saved to ``test-artifacts/``. The server is the shipped model
when it exists, else the tiny test model. The tests fail (never skip) when
Chromium cannot be launched; they skip only when the shared X-rays are absent.

Run with ``pytest -m browser``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from benchmarks.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STUDY_SHOWN,
    ServerError,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)
from covid.model.lungs import DEFAULT_LUNG_MODEL_PATH
from covid.model.metadata import read_metadata
from covid.model.network import DEFAULT_MODEL_PATH
from covid.screening.table import finding_columns, table_columns
from tests.servers import server_missing

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SERVER_START_S = 180
RESULT_S = 300

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served_model(tiny_model_file) -> Path:
    """The shipped model when present, else the tiny test model."""
    shipped = ROOT / DEFAULT_MODEL_PATH
    if shipped.is_file() and shipped.with_suffix(".json").is_file():
        return shipped
    return Path(tiny_model_file)


@pytest.fixture(scope="module")
def served_lungs(tmp_path_factory) -> Path | None:
    """The shipped lung segmenter when present, else None (no outline, no share)."""
    shipped = ROOT / DEFAULT_LUNG_MODEL_PATH
    return shipped if shipped.is_file() and shipped.with_suffix(".json").is_file() else None


@pytest.fixture(scope="module")
def server(served_model, served_lungs, tmp_path_factory):
    """A ``streamlit run`` subprocess on a free port; always killed afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    lungs = served_lungs or tmp_path_factory.mktemp("nolungs") / "absent.keras"
    env = {"COVID_MODEL_PATH": str(served_model), "COVID_LUNG_MODEL_PATH": str(lungs)}
    proc = start_server(port, log, env, ("--browser.gatherUsageStats", "false",
                                         "--server.fileWatcherType", "none"))
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, log, SERVER_START_S, poll_s=0.5)
        except ServerError as err:
            pytest.fail(str(err))
        yield url
    finally:
        stop_server(proc)


def _launch(playwright):
    """Launches headless Chromium: skips when it is not installed, fails when it cannot start."""
    if not Path(CHROMIUM).is_file():
        server_missing(f"Chromium ({CHROMIUM})", "run `apt-get install chromium`")
    try:
        return playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
    except Exception as err:  # any launch failure is a test failure
        pytest.fail(f"headless Chromium could not be launched from {CHROMIUM}: {err}")


def _real_xrays(shared_data_dir: Path, label: str = "COVID", n: int = 1) -> list[Path]:
    folder = Path(shared_data_dir) / label
    if not folder.is_dir():  # shared_data_dir may be the dataset's parent
        folder = Path(shared_data_dir) / "covid19-radiography" / label
    return sorted(folder.glob("*.jpg"))[:n]


def _real_xray(shared_data_dir: Path) -> Path:
    return _real_xrays(shared_data_dir)[0]


def test_upload_real_xray_and_broken_file(shared_data_dir, served_model, server):
    from playwright.sync_api import expect, sync_playwright

    xray = _real_xray(shared_data_dir)
    class_names = read_metadata(served_model).class_names
    ARTIFACTS.mkdir(exist_ok=True)
    junk = bytes(range(256)) * 16

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(server, wait_until="domcontentloaded")
            expect(page.get_by_text("Research tool, not a medical device.")).to_be_visible(
                timeout=SERVER_START_S * 1000
            )
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([
                {"name": xray.name, "mimeType": "image/jpeg", "buffer": xray.read_bytes()},
                {"name": "broken.png", "mimeType": "image/png", "buffer": junk},
            ])

            alert = page.locator('[data-testid="stAlert"]').filter(has_text="broken.png")
            expect(alert).to_be_visible(timeout=RESULT_S * 1000)
            overlay = page.locator(f'img[alt="Grad-CAM overlay for {xray.name}"]')
            expect(overlay).to_be_visible(timeout=RESULT_S * 1000)
            assert overlay.evaluate("img => img.complete && img.naturalWidth > 0")

            percentages = {}
            for name in class_names:
                label = page.get_by_text(re.compile(rf"^{re.escape(name)} \d+\.\d%"))
                expect(label.first).to_be_visible()
                percentages[name] = float(
                    re.search(r"(\d+\.\d)%", label.first.inner_text()).group(1)
                )
            assert round(sum(percentages.values()), 6) == 100.0
            assert "not a PNG, JPEG or DICOM" in alert.first.inner_text()
            page.wait_for_timeout(500)  # let images finish painting for the screenshot
            page.screenshot(path=str(ARTIFACTS / "browser_upload.png"), full_page=True)
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            browser.close()


ROW_PX = 35
"""Height of a header or body row of ``st.dataframe`` (Streamlit's default)."""


def _table_cell(page, column: int, row: int):
    """A body cell of the batch table's accessible twin (column 0 is the row marker)."""
    return page.locator(f'[data-testid="stDataFrame"] [data-testid="glide-cell-{column}-{row}"]')


def _download(page, button_text: str) -> tuple[str, bytes]:
    """Clicks a download button; returns the suggested file name and the bytes."""
    button = page.locator('[data-testid="stDownloadButton"]').get_by_role(
        "button", name=button_text, exact=True
    )
    with page.expect_download(timeout=RESULT_S * 1000) as info:
        button.click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


def test_batch_of_real_xrays_table_detail_pdf_and_model_page(shared_data_dir, served_model,
                                                             server):
    from playwright.sync_api import expect, sync_playwright

    xrays = _real_xrays(shared_data_dir, "COVID", 3) + _real_xrays(shared_data_dir, "Normal", 2)
    assert len(xrays) == 5
    class_names = read_metadata(served_model).class_names
    findings = len(finding_columns(class_names))
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2600}, accept_downloads=True)
            page.goto(server, wait_until="domcontentloaded")
            expect(page.get_by_text("Research tool, not a medical device.").first).to_be_visible(
                timeout=SERVER_START_S * 1000
            )
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([
                {"name": x.name, "mimeType": "image/jpeg", "buffer": x.read_bytes()}
                for x in xrays
            ])

            # the table: five rows, most suspicious first, and no study open yet
            expect(page.get_by_text("Batch triage")).to_be_visible(timeout=RESULT_S * 1000)
            expect(_table_cell(page, 1, 4)).to_be_attached(timeout=RESULT_S * 1000)
            names = [_table_cell(page, 1, i).inner_text() for i in range(5)]
            assert sorted(names) == sorted(x.name for x in xrays)
            # most suspicious = highest P(any finding), the sum of the finding columns,
            # each shown to 0.1%
            any_finding = [sum(float(_table_cell(page, 2 + k, i).inner_text())
                               for k in range(findings)) for i in range(5)]
            assert all(a >= b - 0.1 * findings
                       for a, b in itertools.pairwise(any_finding)), any_finding
            expect(page.get_by_text("Choose a row to open")).to_be_visible()
            assert not page.locator('img[alt^="Grad-CAM"]').count()

            # clicking the second row's marker opens that study
            canvas = page.locator('[data-testid="stDataFrame"] canvas').first.bounding_box()
            page.mouse.click(canvas["x"] + 16, canvas["y"] + ROW_PX * 2 + ROW_PX / 2)
            chosen = names[1]
            overlay = page.locator(f'img[alt="Grad-CAM overlay for {chosen}"]')
            expect(overlay).to_be_visible(timeout=RESULT_S * 1000)
            assert overlay.evaluate("img => img.complete && img.naturalWidth > 0")
            expect(page.get_by_role("heading", name=chosen)).to_be_visible()
            expect(page.get_by_text("Prediction: ")).to_be_visible()

            # the study's PDF report and the table's CSV
            name, pdf = _download(page, "PDF report")
            assert pdf.startswith(b"%PDF") and name == f"{Path(chosen).stem}-report.pdf"
            name, table = _download(page, "Download the table (CSV)")
            lines = table.decode("utf-8").splitlines()
            assert lines[0] == ",".join(table_columns(class_names))
            assert lines[0].startswith("file,COVID %,")
            assert [line.split(",")[0] for line in lines[1:]] == names

            page.wait_for_timeout(500)  # let images finish painting for the screenshot
            page.screenshot(path=str(ARTIFACTS / "browser_batch.png"), full_page=True)
            assert not page.locator('[data-testid="stException"]').count()

            # the model page
            page.get_by_role("link", name="Model").click()
            expect(page.get_by_role("heading", name="Model card")).to_be_visible(
                timeout=RESULT_S * 1000
            )
            expect(page.get_by_text("DeGrave")).to_be_visible()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "browser_model.png"), full_page=True)
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            browser.close()


CYAN_PIXELS_JS = """img => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let cyan = 0;
    for (let i = 0; i < data.length; i += 4) {
        if (data[i + 1] - data[i] > 40 && data[i + 2] - data[i] > 40) cyan += 1;
    }
    return cyan;
}"""
"""Counts cyan-ish pixels (green and blue well above red) in an image as the browser
decoded it: the outline, blurred a little by the page's JPEG encoding, while a grey
film has none."""


def test_a_study_shows_the_lung_share_and_the_outline_switch_works(
    shared_data_dir, served_lungs, server
):
    from playwright.sync_api import expect, sync_playwright

    if served_lungs is None:
        pytest.skip(f"no shipped lung segmenter at {ROOT / DEFAULT_LUNG_MODEL_PATH}")
    xray = _real_xrays(shared_data_dir, "Normal", 1)[0]
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(server, wait_until="domcontentloaded")
            expect(page.get_by_text("Research tool, not a medical device.").first).to_be_visible(
                timeout=SERVER_START_S * 1000
            )
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([
                {"name": xray.name, "mimeType": "image/jpeg", "buffer": xray.read_bytes()},
            ])

            share = page.get_by_text(re.compile(r"^\d{1,3}% of the evidence lies inside the "
                                                r"lung fields$"))
            expect(share).to_be_visible(timeout=RESULT_S * 1000)
            percent = int(share.inner_text().split("%")[0])
            assert 0 <= percent <= 100
            caution = page.get_by_text("the model's evidence lies mostly outside the lungs")
            expect(caution).to_have_count(1 if percent < 50 else 0)

            plain = page.locator(f'img[alt="X-ray {xray.name}"]')
            expect(plain).to_be_visible()
            assert plain.evaluate(CYAN_PIXELS_JS) == 0  # a grey film has no cyan at all

            switch = page.locator('[data-testid="stSidebar"]').get_by_text("Lung outline")
            switch.click()
            outlined = page.locator(f'img[alt="X-ray {xray.name} with the lung outline"]')
            expect(outlined).to_be_visible(timeout=RESULT_S * 1000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=outlined.element_handle())
            assert outlined.evaluate(CYAN_PIXELS_JS) > 100  # the outline is drawn
            overlay = page.locator(
                f'img[alt="Grad-CAM overlay for {xray.name} with the lung outline"]')
            expect(overlay).to_be_visible()
            expect(share).to_have_text(f"{percent}% of the evidence lies inside the lung fields")
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "browser_lungs.png"), full_page=True)

            switch.click()  # and off again
            expect(page.locator(f'img[alt="X-ray {xray.name}"]')).to_be_visible(
                timeout=RESULT_S * 1000)
            expect(outlined).to_have_count(0)
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            browser.close()


def test_concurrent_sessions_see_only_their_own_films(shared_data_dir, server):
    from playwright.sync_api import expect, sync_playwright

    covid = _real_xrays(shared_data_dir, "COVID", 8)[5:8]
    normal = _real_xrays(shared_data_dir, "Normal", 5)[2:4]
    drops = [[covid[0]], [covid[1]], [normal[0]], [covid[2], normal[1]]]  # the last: a batch
    everyone = {x.name for films in drops for x in films}
    assert len(everyone) == 5
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = _launch(playwright)
        try:
            pages = []
            for _ in drops:  # one browser context each: separate Streamlit sessions
                page = browser.new_context(viewport={"width": 1440, "height": 1600}).new_page()
                page.goto(server, wait_until="domcontentloaded")
                expect(page.locator('[data-testid="stFileUploaderDropzone"]')).to_be_visible(
                    timeout=SERVER_START_S * 1000)
                pages.append(page)
            for page, films in zip(pages, drops, strict=True):  # all dropped at once
                page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
                    [{"name": x.name, "mimeType": "image/jpeg", "buffer": x.read_bytes()}
                     for x in films])

            for i, (page, films) in enumerate(zip(pages, drops, strict=True)):
                if len(films) == 1:
                    page.wait_for_function(STUDY_SHOWN, arg=films[0].name,
                                           timeout=RESULT_S * 1000)
                    headings = page.locator("h3").all_inner_texts()
                    assert [h for h in headings if h.endswith(".jpg")] == [films[0].name]
                else:
                    expect(_table_cell(page, 1, len(films) - 1)).to_be_attached(
                        timeout=RESULT_S * 1000)
                    rows = [_table_cell(page, 1, r).inner_text() for r in range(len(films))]
                    assert sorted(rows) == sorted(x.name for x in films)
                    assert not _table_cell(page, 1, len(films)).count()
                page.wait_for_timeout(300)
                page.screenshot(path=str(ARTIFACTS / f"browser_session_{i + 1}.png"),
                                full_page=True)
                mine = {x.name for x in films}
                text = page.locator("body").inner_text()
                leaked = sorted(n for n in everyone - mine if n in text)
                assert not leaked, f"session {i + 1} shows another session's files {leaked}"
                alts = page.locator("img").evaluate_all("imgs => imgs.map(i => i.alt || '')")
                assert not [a for a in alts if any(n in a for n in everyone - mine)]
                assert not page.locator('[data-testid="stException"]').count()
                assert "Traceback" not in text
        finally:
            browser.close()
