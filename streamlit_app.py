"""The chest X-ray screening dashboard (Streamlit): a screening page and a model page.

Run with ``streamlit run streamlit_app.py``. This file is the front door: page
configuration, navigation and :func:`main`. The pages live in :mod:`covid.app`
(layout only); decoding, scoring, calibration, Grad-CAM, metrics, plots, table
rows and PDF reports live in the stages below it.

* **Screening** (:mod:`covid.app.screening`): uploads, the batch triage table and
  one study's X-ray, Grad-CAM, probabilities, triage and PDF report.
* **Model** (:mod:`covid.app.model_page`): the model card, a live operating point
  for this browser session, the test-split charts and the Grad-CAM energy check.

``streamlit run`` finds :data:`app` here and serves this file through it, so that
the server starts loading the models as it starts (:func:`lifespan`), before
anyone visits. The pages are imported by :func:`main`, when the file runs as the
page script: importing them imports TensorFlow, which the server's start must
not wait for.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one.

Research tool, not a medical device.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator

import streamlit as st


def pages() -> dict[str, st.Page]:
    """The dashboard's pages, keyed by URL path."""
    from covid.app import model_page, screening
    from covid.app.navigation import MODEL, SCREENING

    return {
        SCREENING: st.Page(screening.page, title="Screening", icon=":material/radiology:",
                           url_path=SCREENING, default=True),
        MODEL: st.Page(model_page.page, title="Model", icon=":material/monitoring:",
                       url_path=MODEL),
    }


def main() -> None:
    """Builds the dashboard: the navigation and the current page."""
    from covid.app import navigation

    st.set_page_config(page_title="Chest X-ray screening", page_icon="🩻", layout="wide")
    st.navigation(navigation.register(pages()), position="top").run()


def _preload() -> None:
    """Loads the models (importing TensorFlow) in the calling thread."""
    from covid.app.resources import preload

    preload()


@contextlib.asynccontextmanager
async def lifespan(_app: st.App) -> AsyncIterator[None]:
    """Server start: the models start loading in a thread; the server does not wait.

    A visitor who comes before they are loaded sees the uploader at once, and
    the results as soon as the models are there. Streamlit's Keras reset after
    every run is switched off first, once (a Streamlit without that hook stops
    the server here, saying so).
    """
    from covid.app.resources import keep_keras_between_runs

    keep_keras_between_runs()  # the shared models stay warm between reruns
    # not a daemon: an interpreter exiting mid-load would abort inside TensorFlow
    threading.Thread(target=_preload, name="preload-models", daemon=False).start()
    yield


if __name__ == "__main__":
    main()
else:  # imported by `streamlit run`'s server: this file, served with the preload
    app = st.App("streamlit_app.py", lifespan=lifespan)
