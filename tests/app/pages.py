"""What the page tests share: the app's path, the run timeout, synthetic films, reading a run.

Uploads are synthetic PNGs held in memory. A row of the batch table is chosen by
writing its selection state, as a click would.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "streamlit_app.py"
"""The front door that every AppTest runs."""
TIMEOUT = 120
"""Seconds an AppTest run may take (a loaded CI machine is slow)."""


def open_model_page(at: AppTest) -> AppTest:
    """Goes from the screening page to the model page through its Change button."""
    at.button(key="op_change").click().run()
    assert not at.exception
    assert at.title[0].value == "Model"
    return at


def chest_png(seed: int = 0, size: int = 128) -> bytes:
    """A smooth grayscale image big enough for the decoder, as PNG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = 128 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0) + rng.normal(0, 8, xx.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_png(seed: int = 0, size: int = 128) -> bytes:
    """A colour photograph-like image: the pixel checks refuse it as not a chest X-ray."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def page_text(at: AppTest) -> str:
    """Every markdown, alert and caption of the last run, one per line."""
    parts = [m.value for m in at.markdown] + [a.value for a in (*at.warning, *at.info)]
    parts += [a.value for a in (*at.error, *at.success)] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def bar_percentages(at: AppTest, class_names: list[str]) -> dict[str, float]:
    """The percentage each probability bar shows, by class."""
    found = {}
    for bar in at.progress:
        text = bar.text.replace("*", "")
        for name in class_names:
            if text.startswith(f"{name} "):
                found[name] = float(text.removeprefix(f"{name} ").split()[0].rstrip("%"))
    return found


def network_passes(at: AppTest) -> int:
    """Films the pipeline sent to the network: each once, and again where its label at the
    operating point is not its most probable class (it is explained again for its label)."""
    results = [r for r in at.session_state["_covid_studies"].values() if r.probs is not None]
    return sum(1 + (r.cam_target != int(np.argmax(r.probs))) for r in results)


def select_row(at: AppTest, row: int | None) -> AppTest:
    """Ticks one row of the batch table (as a click would), or clears the choice."""
    table = at.dataframe[0]
    rows = [] if row is None else [row]
    at.session_state[table.key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return at.run()


def table_rows(at: AppTest) -> list[dict]:
    """The batch table's rows, in the order shown."""
    return at.dataframe[0].value.to_dict("records")


def image_captions(at: AppTest) -> list[str]:
    """Every image's caption, in the order drawn."""
    return [c for img in at.image for c in img.captions]
