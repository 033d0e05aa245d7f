"""Makes ``docs/screenshot.png``: the screening page with the shipped model, in Chromium.

Usage (from the project's root, once ``.venv/`` exists)::

    .venv/bin/python scripts/screenshot.py [--out docs/screenshot.png]

The film shown is a synthetic phantom drawn here (body, lung fields, mediastinum,
ribs), never a patient's X-ray: the repository holds no image derived from the
data. The page scores it with the shipped model like any upload; when the gates
flag the drawing as not a chest X-ray, the raw scores and map are opened for the
picture.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.server import (  # noqa: E402 (the project's root is on the path only now)
    CHROMIUM,
    CHROMIUM_ARGS,
    STUDY_SHOWN,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)

NAME = "synthetic-phantom.png"


def phantom(side: int = 512, seed: int = 0) -> np.ndarray:
    """A (side, side) uint8 drawing of a frontal chest film, for screenshots only."""
    image = Image.new("L", (side, side), 18)
    draw = ImageDraw.Draw(image)
    s = side / 512
    draw.ellipse([40 * s, 60 * s, 472 * s, 560 * s], fill=150)  # the body
    for box in ([95 * s, 110 * s, 240 * s, 430 * s], [272 * s, 110 * s, 417 * s, 430 * s]):
        draw.ellipse(box, fill=62)  # lung fields
    draw.rectangle([232 * s, 60 * s, 280 * s, 512 * s], fill=205)  # spine and mediastinum
    draw.ellipse([215 * s, 250 * s, 345 * s, 420 * s], fill=185)  # heart
    for k in range(7):  # ribs, as faint arcs
        y = (130 + 42 * k) * s
        draw.arc([70 * s, y - 40 * s, 250 * s, y + 60 * s], 200, 340, fill=110, width=int(6 * s))
        draw.arc([262 * s, y - 40 * s, 442 * s, y + 60 * s], 200, 340, fill=110, width=int(6 * s))
    image = image.filter(ImageFilter.GaussianBlur(4 * s))
    noise = np.random.default_rng(seed).normal(0, 6, (side, side))
    return np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """A grayscale image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def shoot(url: str, film: Path, out: Path) -> str:
    """Drops the film on the page, waits for its study, and saves a full-page screenshot."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = await browser.new_page(viewport={"width": 1500, "height": 1000})
        await page.goto(url)
        uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        await uploader.wait_for(state="attached", timeout=120_000)
        await uploader.set_input_files(str(film))
        shown = await page.wait_for_function(STUDY_SHOWN, arg=film.name, timeout=120_000)
        what = await shown.json_value()
        if what == "flagged":  # a drawing is not a chest X-ray: open the raw scores and map
            await page.get_by_text("Raw model scores").click()
            await page.locator("img[alt^='Grad-CAM']").first.wait_for(timeout=60_000)
        await page.wait_for_timeout(1500)  # let the images settle
        await page.screenshot(path=str(out), full_page=True)
        await browser.close()
        return what


def main() -> None:
    """Starts the dashboard on a free loopback port, takes the screenshot, stops it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        film = Path(tmp) / NAME
        film.write_bytes(png_bytes(phantom()))
        url, log = f"http://127.0.0.1:{free_port()}", Path(tmp) / "server.log"
        server = start_server(int(url.rsplit(":", 1)[1]), log)
        try:
            wait_healthy(url, server, log, timeout_s=120)
            what = asyncio.run(shoot(url + "/", film, args.out))
        finally:
            stop_server(server)
    print(f"{args.out}: the study shows its {what}")


if __name__ == "__main__":
    main()
