"""The chest X-ray screening dashboard (Streamlit): a screening page and a model page.

Run with ``streamlit run streamlit_app.py``. This file is the front door: page
configuration, navigation and :func:`main`. The pages live in :mod:`covid.app`
(layout only); decoding, scoring, calibration, Grad-CAM, metrics, plots, table
rows and PDF reports live in the stages below it.

* **Screening** (:mod:`covid.app.screening`): uploads, the batch triage table and
  one study's X-ray, Grad-CAM, probabilities, triage and PDF report.
* **Model** (:mod:`covid.app.model_page`): the model card, a live operating point
  for this browser session and the test-split charts.

``streamlit run`` finds :data:`app` here and serves this file through it, so that
the server starts loading the models as it starts (:func:`lifespan`). The pages
are imported when the file runs as the page script (they import TensorFlow, which
the server's start must not wait for); the model page only when first shown.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one.

Research tool, not a medical device.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import streamlit as st


def show_model_page() -> None:
    """The model page, imported on its first visit: not on the way to the first film."""
    from covid.app import model_page

    model_page.page()


def pages() -> dict[str, st.Page]:
    """The dashboard's pages, keyed by URL path."""
    from covid.app import screening
    from covid.app.navigation import MODEL, SCREENING

    return {
        SCREENING: st.Page(screening.page, title="Screening", icon=":material/radiology:",
                           url_path=SCREENING, default=True),
        MODEL: st.Page(show_model_page, title="Model", icon=":material/monitoring:",
                       url_path=MODEL),
    }


def main() -> None:
    """Builds the dashboard: the navigation and the current page."""
    from covid.app import navigation

    st.set_page_config(page_title="Chest X-ray screening", page_icon="🩻", layout="wide")
    st.navigation(navigation.register(pages()), position="top").run()


@contextlib.asynccontextmanager
async def lifespan(_app: st.App) -> AsyncIterator[None]:
    """Server start: the models start loading in a thread; the server does not wait.

    A visitor who comes before they are loaded sees the uploader at once, and the
    results as soon as the models are there (:func:`covid.app.resources.preload`).
    """
    from covid.app.resources import start_preload

    start_preload()
    yield


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run`'s server: this file, served with the preload
    app = st.App("streamlit_app.py", lifespan=lifespan)
