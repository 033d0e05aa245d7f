"""The opacity outline on a synthetic chest phantom, in the real dashboard: a screenshot.

Usage::

    python -m benchmarks.phantom [--out test-artifacts/opacity_outline_phantom.png]

Synthesises a posterior-anterior chest phantom in memory (:func:`chest_phantom`:
pure numpy, nothing from the data: a bright body, two dark lung fields with ribs,
a spine and a heart, and a patchy hazy brighter area low in the patient's right
lung, the image's left), starts ``streamlit run streamlit_app.py`` on the shipped
models (or those ``$COVID_MODEL_PATH``, ``$COVID_LUNG_MODEL_PATH`` and
``$COVID_OPACITY_MODEL_PATH`` name), drops the phantom on the uploader in headless
Chromium (Playwright, as ``benchmarks.browser`` does), switches on "Opacity
outline (separate segmentation)" and saves a screenshot of the study. It prints
what the study view says of the opacities; it is not a test, and what it writes
is not to be committed (``test-artifacts/`` is ignored).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmarks.server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)

NAME = "chest_phantom.png"
OPACITY_SWITCH = "Opacity outline (separate segmentation)"
UPLOADER = '[data-testid="stFileUploader"] input[type="file"]'
OUTLINED = "img[alt$=\"with the opacity segmenter's outline\"]"
"""The X-ray as the study view shows it once the opacity outline is drawn on it."""


def _lung(x: np.ndarray, y: np.ndarray, centre: float, tilt: float) -> np.ndarray:
    """(H, W) bool: one upright lung field, narrow at the apex, cut by its diaphragm dome."""
    half_width = 0.15 + 0.06 * np.clip((y - 0.15) / 0.6, 0.0, 1.0)
    field = ((x - centre) / half_width) ** 2 + ((y - 0.5) / 0.34) ** 2 <= 1
    dome = y < 0.78 - 0.05 * np.cos((x - centre) * np.pi / 0.3) - 0.02 * tilt * (x - centre)
    return field & dome & (y > 0.13)


def chest_phantom(side: int = 512, haze: float = 90.0, spread: float = 0.12,
                  mottle: float = 0.6, seed: int = 0) -> np.ndarray:
    """A synthetic PA chest film with a hazy patch low in the patient's right lung.

    Args:
        side: Its width and height, in pixels.
        haze: The patch's peak brightening, in grey levels.
        spread: The patch's radius, as a share of ``side``.
        mottle: How patchy the haze is (0: a smooth blob).
        seed: The noise's seed.

    Returns:
        (side, side) uint8 film.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:side, :side] / side
    film = np.full((side, side), 15.0)
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.55) ** 2 <= 1
    film[body] = 175.0
    heart = ((x - 0.56) / 0.15) ** 2 + ((y - 0.66) / 0.13) ** 2 <= 1
    right, left = _lung(x, y, 0.31, 1.0), _lung(x, y, 0.69, -1.0)  # the patient's sides
    lungs = right | (left & ~heart)
    film[lungs] = 55.0 + 25.0 * y[lungs]  # air: darkest at the apex
    for k in range(9):  # ribs: bright curved bands across the lung fields
        for centre, side_sign in ((0.31, -1.0), (0.69, 1.0)):
            curve = 0.16 + k * 0.072 + 0.3 * ((x - centre) * side_sign + 0.18) ** 2
            film[(np.abs(y - curve) < 0.011) & (np.abs(x - centre) < 0.2) & lungs] += 35.0
    film[(np.abs(x - 0.5) < 0.045) & body] += 30.0  # the spine
    patch = np.exp(-(((x - 0.27) / spread) ** 2 + ((y - 0.62) / spread) ** 2))
    if mottle:  # patchy, ground-glass texture rather than a smooth blob
        blobs = ndimage.gaussian_filter(rng.normal(0.0, 1.0, film.shape), side / 60)
        patch *= np.clip(1.0 + mottle * blobs / blobs.std(), 0.0, None)
    film += haze * patch * ndimage.gaussian_filter(lungs.astype(float), 6)
    film = ndimage.gaussian_filter(film, side / 170) + rng.normal(0.0, 4.0, film.shape)
    return np.clip(film, 0, 255).astype(np.uint8)


def png_bytes(film: np.ndarray) -> bytes:
    """The film as PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(film).save(out, format="PNG")
    return out.getvalue()


def screenshot(url: str, film: bytes, out: Path, timeout_s: float) -> str:
    """Uploads the film, switches the opacity outline on and saves the screenshot.

    Returns:
        The study view's text about the opacities (its caption and figures).
    """
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1400})
            page.goto(url, wait_until="domcontentloaded")
            page.locator(UPLOADER).set_input_files(
                [{"name": NAME, "mimeType": "image/png", "buffer": film}])
            expect(page.locator(f'img[alt^="Grad-CAM"][alt$=" for {NAME}"]').or_(
                page.locator('[data-testid="stAlert"]').filter(has_text="does not look like")
            ).first).to_be_visible(timeout=timeout_s * 1000)
            switch = page.get_by_text(OPACITY_SWITCH, exact=True)
            switch.click()
            outlined = page.locator(OUTLINED)
            expect(outlined).to_be_visible(timeout=timeout_s * 1000)
            outlined.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)  # let the images finish painting
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            # The study view's lines (paragraphs and the X-ray's caption), not the sidebar's.
            said = page.locator('[data-testid="stMain"]').locator("p, div").filter(
                has_text=re.compile(r"^(X-ray|Opacities)")).all_inner_texts()
        finally:
            browser.close()
    return "\n".join(dict.fromkeys(line.strip() for text in said for line in text.splitlines()
                                    if line.strip().startswith(("X-ray", "Opacities"))))


def main(argv: list[str] | None = None) -> int:
    """Takes the screenshot; prints where it is and what the page said."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "test-artifacts" / "opacity_outline_phantom.png")
    parser.add_argument("--haze", type=float, default=90.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    film = png_bytes(chest_phantom(haze=args.haze))
    with tempfile.TemporaryDirectory() as scratch:
        log, port = Path(scratch) / "server.log", free_port()
        proc = start_server(port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log, args.timeout)
            said = screenshot(url, film, args.out, args.timeout)
        finally:
            stop_server(proc)
    print(f"screenshot: {args.out}\n{said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
