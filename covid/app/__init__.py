"""The Streamlit pages: layout only (``main()`` lives in ``streamlit_app.py``).

* :mod:`~covid.app.screening`: uploads, the batch triage table and the page itself.
* :mod:`~covid.app.study`: one study's view (X-ray, Grad-CAM, bars, triage, PDF).
* :mod:`~covid.app.model_page`: the model card, operating point, charts and CAM check.
* :mod:`~covid.app.common`: what both pages show (disclaimer, model errors, tables).
* :mod:`~covid.app.state`: every ``st.session_state`` key and the session's operating point.
* :mod:`~covid.app.resources`: the ``st.cache_resource`` loaders (classifier, detector,
  segmenter), the preload at server start, the warm-up and no Keras reset between runs.
* :mod:`~covid.app.navigation`: the pages' URL paths and switching between them.

This package is the only one that imports Streamlit; the work it shows is done
in the stages below it.
"""
