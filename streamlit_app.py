"""The chest X-ray screening dashboard (Streamlit): a screening page and a model page.

Run with ``streamlit run streamlit_app.py``. This file is the front door: page
configuration, navigation and :func:`main`. The pages live in :mod:`covid.app`
(layout only); decoding, scoring, calibration, Grad-CAM, metrics, plots, table
rows and PDF reports live in the stages below it.

* **Screening** (:mod:`covid.app.screening`): uploads, the batch triage table and
  one study's X-ray, Grad-CAM, probabilities, triage and PDF report.
* **Model** (:mod:`covid.app.model_page`): the model card, a live operating point
  for this browser session, the test-split charts and the Grad-CAM energy check.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one.

Research tool, not a medical device.
"""

from __future__ import annotations

import streamlit as st

from covid.app import model_page, navigation, screening
from covid.app.navigation import MODEL, SCREENING


def pages() -> dict[str, st.Page]:
    """The dashboard's pages, keyed by URL path."""
    return {
        SCREENING: st.Page(screening.page, title="Screening", icon=":material/radiology:",
                           url_path=SCREENING, default=True),
        MODEL: st.Page(model_page.page, title="Model", icon=":material/monitoring:",
                       url_path=MODEL),
    }


def main() -> None:
    """Builds the dashboard: the navigation and the current page."""
    st.set_page_config(page_title="Chest X-ray screening", page_icon="🩻", layout="wide")
    st.navigation(navigation.register(pages()), position="top").run()


if __name__ == "__main__":
    main()
