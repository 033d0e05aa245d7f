"""The chest X-ray screening dashboard (Streamlit): a screening page and a model page.

Run with ``streamlit run streamlit_app.py``. The pages are layout only: decoding,
scoring, calibration, Grad-CAM, colour maps, metrics, plots, table rows and PDF
reports all live in :mod:`covid`. The model is loaded once per process and never
mutated; each uploaded file is scored once (results are kept per session, keyed
by the file's content), and Grad-CAM is recomputed only when the explained class
or the method changes, so moving the opacity slider or switching colour maps
never runs the network again.

* **Screening**: one upload shows its study directly; several show a triage
  table first (most suspicious first, downloadable as CSV), and choosing a row
  opens that study. Each study has a one-page PDF report.
* **Model**: the model card, the test-split charts, a live operating point
  (threshold and prevalence) and the Grad-CAM energy check, read from the
  evaluation artefacts beside the model.

The operating point chosen on the model page applies to this browser session
only (``st.session_state``): results are cached at the shipped threshold and
their labels and triage advice are re-derived at the threshold in force.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one.

Research tool, not a medical device.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from covid import DISCLAIMER
from covid.explain.overlay import colormap_names, contour_overlay, heatmap_only, overlay_heatmap
from covid.model.classifier import DEFAULT_MODEL_PATH, ModelFileError, ModelMetadata
from covid.screening.pipeline import StudyResult, analyse, percentages
from covid.screening.report import build_report
from covid.screening.table import (
    ERROR,
    FILE,
    LABEL,
    OOD,
    TRIAGE,
    csv_bytes,
    probability_column,
    relabel,
    suspicion_order,
    table_columns,
    table_rows,
)
from covid.training.evaluate import artefact_paths
from covid.training.metrics import operating_point
from covid.training.plots import confusion_figure, reliability_figure, roc_figure
from covid.training.results import (
    cam_energy_rows,
    cam_energy_verdict,
    confusion_at,
    scores_from_csv,
)

if TYPE_CHECKING:
    from covid.explain.inference import Classifier

LOG = logging.getLogger("covid.app")

MODEL_ENV = "COVID_MODEL_PATH"
"""Environment variable naming the model to serve."""

UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]
PREDICTED = "Predicted class"
METHODS = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++"}
VIEWS = ("Overlay", "Heatmap alone", "Contour lines")
DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.4
CONTOUR_LEVELS = (0.5, 0.75)
"""Iso-lines drawn in the contour view (gold, then red), as fractions of the map's peak."""

TRAIN_HOWTO = """\
Train a model, then evaluate and ship it, from the project's root:

```bash
python -m covid.training.train --run runs/main
python -m covid.training.evaluate --model runs/main/model.keras --ship models/covid_resnet50.keras
```

Or point the page at another model: `COVID_MODEL_PATH=path/to/model.keras streamlit run \
streamlit_app.py` (its metadata JSON must sit beside it).
"""

EVALUATE_HOWTO = """\
Evaluate the model to make them (from the project's root):

```bash
python -m covid.training.evaluate --model {model}
```
"""

INTENDED_USE = """\
**Intended use.** Research and teaching: a demonstration of how a screening-support
tool could sort chest X-rays and show why it scored them as it did.
**Not for clinical use**: it is not a medical device, has not been validated
clinically, and must not be used to diagnose, treat or triage patients.

**Limits.**
- Two classes only: every film is forced into COVID-19 or Normal. Other diseases
  (bacterial or viral pneumonia, lung opacities, tuberculosis...) were not in the
  training data, and the model cannot say "something else".
- One public database, images downsampled to 224 x 224 pixels. The test split
  comes from the same archives as the training data, so its metrics are optimistic
  for any other hospital, scanner or population.
- Calibration (temperature) and the operating threshold were fitted on the
  validation split of the same database; PPV and NPV depend on the prevalence
  where it is used.
- Grad-CAM maps are coarse (7 x 7 cells at 224 px) and show where the evidence
  lies, not what it is.
"""

SHORTCUT_WARNING = """\
**Beware of source shortcuts.** In this database the COVID-19 and Normal X-rays
come from different archives and hospitals. A network can learn to recognise the
*source* (text markers, borders, exposure, patient age, scanner) instead of the
disease, score very well on a test split drawn from the same sources, and fail on
films from a new hospital (DeGrave, Janizek and Lee, "AI for radiographic COVID-19
detection selects shortcuts over signal", *Nature Machine Intelligence*, 2021).
Good numbers here do not show clinical validity.
"""

_STUDIES_KEY = "_covid_studies"
_CAMS_KEY = "_covid_cams"
_OPERATING_POINT_KEY = "_covid_operating_point"
"""Per-session operating point: ``{"model": SHA-256, "threshold": float}``."""
_BATCH_KEY = "_covid_batch"
"""The last uploads, (name, bytes) pairs, kept to survive a visit to the model page."""
_RESTORED_KEY = "_covid_batch_restored"
_CHOSEN_KEY = "_covid_chosen"
"""The key of the study opened from the batch table."""
_PAGE_KEY = "_covid_page"
THRESHOLD_WIDGET = "op_threshold"
PREVALENCE_WIDGET = "op_prevalence"
SCREENING, MODEL = "screening", "model"
"""The pages' URL paths."""


@dataclass(frozen=True)
class DisplaySettings:
    """How the explanation is computed and shown.

    Attributes:
        target: ``PREDICTED`` or a class name: the class the map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        view: One of :data:`VIEWS`.
        colormap: A name from :func:`covid.explain.overlay.colormap_names`.
        opacity: Heatmap opacity over the X-ray, 0 to 1.
    """

    target: str = PREDICTED
    method: str = "gradcam"
    view: str = VIEWS[0]
    colormap: str = DEFAULT_COLORMAP
    opacity: float = DEFAULT_OPACITY


@dataclass
class Study:
    """One uploaded file with its result and the key its cached work lives under.

    Attributes:
        key: Content digest plus file name (unique per upload).
        digest: SHA-256 of the file's bytes.
        result: The pipeline's result.
    """

    key: str
    digest: str
    result: StudyResult


# --------------------------------------------------------------------------- model


def model_path() -> Path:
    """The model to serve: ``$COVID_MODEL_PATH``, else the shipped model."""
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_MODEL_PATH)


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def load_classifier(path: str, stamp: tuple[int, int]) -> Classifier:
    """Loads and verifies the classifier once per process (per file version).

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns), so that a re-shipped model is reloaded.

    Returns:
        The :class:`covid.explain.inference.Classifier`; shared by every session, never mutated.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.explain.inference import Classifier  # deferred: imports TensorFlow

    return Classifier.from_file(path)


@st.cache_resource(show_spinner=False, max_entries=2)
def load_ood_detector(path: str, stamp: tuple[int, int]) -> Any | None:
    """Loads the out-of-distribution detector shipped with the model, if any.

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns).

    Returns:
        The detector from :func:`covid.screening.ood.load_detector` (cheap checks only
        when the model ships no out-of-distribution statistics).
    """
    del stamp
    from covid.screening.ood import load_detector  # deferred: imports scikit-learn

    return load_detector(path)


def file_stamp(path: Path) -> tuple[int, int]:
    """A model file's (size, mtime_ns), or (0, 0) when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_size, stat.st_mtime_ns)


# ------------------------------------------------------------------ cached compute


def content_digest(data: bytes) -> str:
    """SHA-256 of a file's bytes, as hex."""
    return hashlib.sha256(data).hexdigest()


def score_files(
    files: Sequence[tuple[str, bytes]],
    classifier: Classifier,
    store: MutableMapping[str, StudyResult],
    ood: Any | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[Study]:
    """Scores uploads, running the network only for files not scored before.

    Args:
        files: (name, bytes) pairs in upload order.
        classifier: The loaded classifier.
        store: Per-session results keyed by model, content and name; pruned to
            the current uploads so that it never outgrows them.
        ood: The out-of-distribution detector, or None.
        progress: Called with the fraction done while new files are scored.

    Returns:
        One :class:`Study` per file, in upload order.
    """
    model_sha = classifier.metadata.sha256
    digests = [content_digest(data) for _, data in files]
    keys = [f"{model_sha[:16]}:{d}:{name}" for (name, _), d in zip(files, digests, strict=True)]
    missing = [i for i, key in enumerate(keys) if key not in store]
    if missing:
        fresh = analyse([files[i] for i in missing], classifier, ood=ood, progress=progress)
        for i, result in zip(missing, fresh, strict=True):
            store[keys[i]] = result
    for stale in set(store) - set(keys):
        del store[stale]
    return [Study(k, d, store[k]) for k, d in zip(keys, digests, strict=True)]


def at_threshold(studies: Sequence[Study], classifier: Classifier, threshold: float) -> list[Study]:
    """The studies with labels and triage re-derived at an operating point.

    Args:
        studies: Scored studies (their results were made at the shipped threshold).
        classifier: The loaded classifier (its ``label_for`` applies the threshold).
        threshold: The operating point in force on P(positive class).

    Returns:
        New studies (same keys) whose results carry the label and triage advice
        at ``threshold``; the cached results are not modified.
    """
    label_for = functools.partial(classifier.label_for, threshold=threshold)
    positive = classifier.metadata.positive_class
    return [Study(s.key, s.digest, relabel(s.result, label_for, positive)) for s in studies]


def target_index(result: StudyResult, target: str, class_names: Sequence[str]) -> int:
    """The class index a map explains: the shown label for ``PREDICTED``."""
    name = result.label if target == PREDICTED else target
    return list(class_names).index(name)


def class_map(
    study: Study,
    classifier: Classifier,
    target: int,
    method: str,
    store: MutableMapping[tuple[str, int, str], np.ndarray],
) -> np.ndarray:
    """The study's (S, S) class-activation map, computed once per class and method.

    Args:
        study: A successfully scored study.
        classifier: The loaded classifier.
        target: Index of the class to explain.
        method: ``"gradcam"`` or ``"gradcam++"``.
        store: Per-session maps keyed by (study key, target, method).

    Returns:
        The map, in [0, 1].
    """
    key = (study.key, target, method)
    if key not in store:
        x = study.result.model_input.astype(np.float32)
        store[key] = classifier.explain(x, target=target, method=method).cam
    return store[key]


def prune_maps(store: MutableMapping[tuple[str, int, str], np.ndarray], keys: set[str]) -> None:
    """Drops maps of studies that are no longer uploaded."""
    for stale in [k for k in store if k[0] not in keys]:
        del store[stale]


def render_map(pixels: np.ndarray, cam: np.ndarray, settings: DisplaySettings) -> np.ndarray:
    """Draws the map the chosen way (cheap: no network involved).

    Args:
        pixels: (H, W) uint8 X-ray.
        cam: (S, S) map in [0, 1].
        settings: The display settings.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    if settings.view == "Heatmap alone":
        return heatmap_only(cam, settings.colormap, pixels.shape[:2])
    if settings.view == "Contour lines":
        return contour_overlay(pixels, cam, levels=CONTOUR_LEVELS)
    return overlay_heatmap(pixels, cam, colormap=settings.colormap, opacity=settings.opacity)


# ---------------------------------------------------------------- operating point


def threshold_in_force(meta: ModelMetadata) -> float:
    """The session's operating point on P(positive class), else the shipped one.

    A choice made for another model (a re-shipped file) is ignored.
    """
    chosen = st.session_state.get(_OPERATING_POINT_KEY)
    if isinstance(chosen, dict) and chosen.get("model") == meta.sha256:
        return float(chosen["threshold"])
    return float(meta.threshold)


def is_shipped(meta: ModelMetadata, threshold: float) -> bool:
    """Whether a threshold is the model's shipped operating point."""
    return math.isclose(threshold, meta.threshold, rel_tol=0.0, abs_tol=1e-9)


def choose_threshold(meta: ModelMetadata, threshold: float) -> None:
    """Makes ``threshold`` this session's operating point (never shared between sessions)."""
    if is_shipped(meta, threshold):
        st.session_state.pop(_OPERATING_POINT_KEY, None)
    else:
        st.session_state[_OPERATING_POINT_KEY] = {"model": meta.sha256, "threshold": threshold}


def reset_operating_point() -> None:
    """Button callback: back to the shipped operating point (this session only)."""
    st.session_state.pop(_OPERATING_POINT_KEY, None)
    st.session_state.pop(THRESHOLD_WIDGET, None)


def operating_point_words(meta: ModelMetadata, threshold: float) -> str:
    """E.g. "P(COVID) ≥ 0.312, the shipped operating point"."""
    rule = f"P({meta.positive_class}) ≥ {threshold:.3f}"
    if is_shipped(meta, threshold):
        return f"{rule}, the shipped operating point"
    return f"{rule}, chosen for this session (shipped {meta.threshold:.3f})"


# --------------------------------------------------------------------- navigation


def pages() -> dict[str, st.Page]:
    """The dashboard's pages, keyed by URL path."""
    return {
        SCREENING: st.Page(screening_page, title="Screening", icon=":material/radiology:",
                           url_path=SCREENING, default=True),
        MODEL: st.Page(model_page, title="Model", icon=":material/monitoring:", url_path=MODEL),
    }


def go_to(page: str) -> None:
    """Switches to another page (for buttons)."""
    st.switch_page(pages()[page])


# ------------------------------------------------------------------------- layout


def header_ui() -> None:
    """Title, introduction and the disclaimer."""
    st.title("Chest X-ray screening")
    st.markdown(
        "Upload posterior-anterior chest X-rays to see the model's **COVID-19 / Normal** "
        "probabilities, a Grad-CAM map of the regions that drove the prediction, and the "
        "triage advice at the operating point in force. Several X-rays at once give a "
        "triage table, most suspicious first."
    )
    disclaimer_ui()


def disclaimer_ui() -> None:
    """The research-tool disclaimer."""
    st.warning(
        f"**{DISCLAIMER}** Do not use it to make clinical decisions.", icon=":material/warning:"
    )


def model_error_ui(err: Exception, path: Path) -> None:
    """Explains, without a traceback, that no usable model is available."""
    st.error(f"No usable model at `{path}`: {err}", icon=":material/error:")
    st.info(TRAIN_HOWTO, icon=":material/info:")


def load_or_explain(path: Path) -> tuple[Classifier, Any] | None:
    """The cached classifier and detector, or None after explaining why not."""
    try:
        classifier = load_classifier(str(path), file_stamp(path))
        ood = load_ood_detector(str(path), file_stamp(path))
    except ModelFileError as err:
        model_error_ui(err, path)
        return None
    return classifier, ood


def controls_ui(class_names: Sequence[str]) -> DisplaySettings:
    """The explanation controls, in the sidebar (kept across page switches).

    Args:
        class_names: The model's classes.

    Returns:
        The chosen settings.
    """
    with st.sidebar:
        st.header("Explanation")
        target = st.selectbox(
            "Class to explain",
            [PREDICTED, *class_names],
            key="target",
            help="Grad-CAM shows which regions raise the chosen class's score.",
            persist_state="session",
        )
        method = st.radio(
            "Method", list(METHODS), key="method", horizontal=True, persist_state="session"
        )
        view = st.radio("Display", VIEWS, key="view", persist_state="session")
        names = list(colormap_names())
        colormap = st.selectbox(
            "Colour map",
            names,
            index=names.index(DEFAULT_COLORMAP) if DEFAULT_COLORMAP in names else 0,
            key="colormap",
            disabled=view == "Contour lines",
            persist_state="session",
        )
        opacity = st.slider(
            "Heatmap opacity",
            min_value=0.0,
            max_value=1.0,
            value=DEFAULT_OPACITY,
            step=0.05,
            key="opacity",
            disabled=view != "Overlay",
            persist_state="session",
        )
    return DisplaySettings(
        target=target, method=METHODS[method], view=view, colormap=colormap, opacity=opacity
    )


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    """Formats a metric, or "n/a" when it is missing."""
    if value is None:
        return "n/a"
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def _table(rows: Sequence[tuple[str, str]], head: tuple[str, str]) -> str:
    """A two-column Markdown table."""
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| {head[0]} | {head[1]} |\n|:--|--:|\n{body}"


def model_card_ui(meta: ModelMetadata, threshold: float) -> None:
    """The model's identity, test metrics and operating point, in the sidebar."""
    with st.sidebar:
        st.divider()
        st.header("Model")
        st.markdown(
            f"**{meta.name}**  \nVersion `{meta.version}`  \nSHA-256 `{meta.sha256[:12]}`"
        )
        if meta.trained_on:
            st.caption(f"Trained on {meta.trained_on}")
        m = meta.metrics or {}
        if m:
            ci = m.get("auc_ci95") or [None, None]
            st.markdown(f"**Held-out {m.get('split', 'test')} split** (n = {m.get('n', '?')})")
            st.markdown(_table([
                ("ROC AUC", _fmt(m.get("auc"))),
                ("AUC 95% CI", f"{_fmt(ci[0])}-{_fmt(ci[1])}"),
                ("Sensitivity", _fmt(m.get("sensitivity"), "{:.1%}")),
                ("Specificity", _fmt(m.get("specificity"), "{:.1%}")),
                ("PPV", _fmt(m.get("ppv"), "{:.1%}")),
                ("NPV", _fmt(m.get("npv"), "{:.1%}")),
                ("ECE (calibrated)", _fmt(m.get("ece_after_scaling"))),
            ], head=("Metric", "Value")))
            st.caption("At the shipped operating point.")
        else:
            st.caption("No test metrics yet: run `python -m covid.training.evaluate`.")
        rows = [(f"Shipped threshold on P({meta.positive_class})", f"{meta.threshold:.3f}")]
        if not is_shipped(meta, threshold):
            rows.append(("This session's threshold", f"{threshold:.3f}"))
        rows.append(("Temperature", f"{meta.temperature:.3f}"))
        st.markdown(_table(rows, head=("Operating point", "Value")))


def operating_point_notice_ui(meta: ModelMetadata, threshold: float) -> None:
    """Which operating point labels the studies, with reset and change buttons."""
    shipped = is_shipped(meta, threshold)
    with st.container(horizontal=True, vertical_alignment="center", key="op_notice"):
        st.markdown(f"**Operating point:** {operating_point_words(meta, threshold)}.",
                    width="content")
        st.button(
            "Reset to shipped", key="op_reset", on_click=reset_operating_point,
            disabled=shipped, icon=":material/restart_alt:",
            help="Go back to the threshold validated with the model. A choice made on the "
            "model page applies to this browser session only.",
        )
        if st.button("Change", key="op_change", icon=":material/tune:",
                     help="Choose another operating point on the model page."):
            go_to(MODEL)


def upload_ui() -> list[tuple[str, bytes]]:
    """The uploader; returns (name, bytes) pairs held in memory only."""
    uploaded = st.file_uploader(
        "Chest X-rays (PNG, JPEG or DICOM)",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="uploads",
        help="Files stay in memory for this session and are never written to disk.",
    )
    return [(f.name, f.getvalue()) for f in uploaded or []]


def clear_batch() -> None:
    """Button callback: forgets the uploads kept across a visit to the model page."""
    st.session_state.pop(_BATCH_KEY, None)
    st.session_state[_RESTORED_KEY] = False


def current_batch(uploaded: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The files to show: the uploads, or the last ones after a visit to the model page.

    Streamlit empties the uploader when the user switches pages, so the last
    uploads are kept in this session's memory and shown again on the way back,
    until new files are uploaded or the user clears them.

    Args:
        uploaded: What the uploader holds now.

    Returns:
        (name, bytes) pairs.
    """
    state = st.session_state
    came_back = state.get(_PAGE_KEY, SCREENING) != SCREENING
    state[_PAGE_KEY] = SCREENING
    if uploaded:
        state[_BATCH_KEY], state[_RESTORED_KEY] = uploaded, False
        return uploaded
    if came_back and state.get(_BATCH_KEY):
        state[_RESTORED_KEY] = True
    if state.get(_RESTORED_KEY) and state.get(_BATCH_KEY):
        kept = state[_BATCH_KEY]
        with st.container(horizontal=True, vertical_alignment="center"):
            st.info(
                f"Showing the {len(kept)} file(s) uploaded before you opened the model page. "
                "Upload files to replace them.", icon=":material/history:",
            )
            st.button("Clear", key="clear_batch", on_click=clear_batch,
                      icon=":material/delete:")
        return kept
    state.pop(_BATCH_KEY, None)
    state[_RESTORED_KEY] = False
    return []


def probability_bars_ui(
    result: StudyResult, class_names: Sequence[str], emphasise: bool = True
) -> list[float]:
    """One bar per class with its percentage; the predicted label in bold.

    The percentages are rounded so that they sum to exactly 100.

    Args:
        result: A scored study.
        class_names: The model's classes, in output order.
        emphasise: Whether to mark the predicted class (not for rejected images).

    Returns:
        The percentages shown, in class order.
    """
    shown = percentages(result.probs, decimals=1)
    st.caption("Calibrated probabilities")
    for name, pct in zip(class_names, shown, strict=True):
        text = f"{name} {pct:.1f}%"
        if emphasise and name == result.label:
            text = f"**{text}** · prediction"
        st.progress(min(max(pct / 100.0, 0.0), 1.0), text=text)
    return shown


def triage_ui(
    result: StudyResult, meta: ModelMetadata, shown: Sequence[float], threshold: float
) -> None:
    """The prediction and its triage advice: red for the pathological class, else green."""
    st.markdown(f"**Prediction: {result.label}**")
    which = "shipped" if is_shipped(meta, threshold) else "this session's choice"
    st.caption(
        f"{meta.positive_class} probability {shown[meta.positive_index]:.1f}% against the "
        f"operating threshold of {threshold:.1%} ({which})."
    )
    if result.label == meta.positive_class:
        st.error(result.triage, icon=":material/flag:")
    else:
        st.success(result.triage, icon=":material/check_circle:")


def info_ui(info: dict[str, str]) -> None:
    """The safe DICOM fields (modality, body part, view), if any."""
    if info:
        st.caption(" · ".join(f"{k}: {v}" for k, v in info.items()))


def map_ui(study: Study, cam: np.ndarray, settings: DisplaySettings, explained: str) -> None:
    """The Grad-CAM image with its caption."""
    method = next(k for k, v in METHODS.items() if v == settings.method)
    legend = ""
    if settings.view == "Contour lines":
        low, high = (f"{level:.0%}" for level in CONTOUR_LEVELS)
        legend = f" (gold {low}, red {high} of the peak)"
    st.image(
        render_map(study.result.pixels, cam, settings),
        caption=f"{method} · {settings.view.lower()}{legend} · explains {explained}",
        width="stretch",
        alt=f"{method} {settings.view.lower()} for {study.result.name}",
    )


def report_name(file_name: str) -> str:
    """The PDF's file name for a study, e.g. ``COVID-1-report.pdf``."""
    stem = Path(file_name).stem.strip() or "study"
    return f"{stem}-report.pdf"


def report_pdf(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    threshold: float,
    cam: np.ndarray | None = None,
) -> bytes:
    """The study's one-page PDF report, in memory.

    Args:
        study: A scored study, re-labelled at ``threshold`` (:func:`at_threshold`).
        classifier: The loaded classifier.
        settings: The display settings: the map is drawn with their method,
            display, colour map and opacity.
        threshold: The operating point in force (shipped or this session's).
        cam: The map of the evidence for the study's label, when already computed.

    Returns:
        The PDF's bytes (see :func:`covid.screening.report.build_report`).
    """
    meta, result = classifier.metadata, study.result
    if cam is None:
        target = meta.class_names.index(result.label)
        x = result.model_input.astype(np.float32)
        cam = classifier.explain(x, target=target, method=settings.method).cam
    overlay = render_map(result.pixels, cam, settings)
    return build_report(result, overlay, meta, threshold)


def report_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """The study's PDF report, built in memory only when the button is clicked.

    The report shows the label and triage at the operating point in force and
    the map, drawn with the current method, display, colour map and opacity,
    of the evidence for the reported label.
    """
    target = classifier.metadata.class_names.index(study.result.label)
    cam = maps.get((study.key, target, settings.method))  # read here, never written later
    st.download_button(
        "PDF report",
        data=functools.partial(report_pdf, study, classifier, settings, threshold, cam),
        file_name=report_name(study.result.name), mime="application/pdf",
        key=f"pdf:{study.key}", on_click="ignore", icon=":material/picture_as_pdf:",
        help="One page: the X-ray, the map of the evidence for the reported label (current "
        "display settings), the probabilities, the triage at the operating point in force, "
        "the model's identity and the disclaimer. Built in memory, never stored.",
    )


def study_detail_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """One scored X-ray: image, Grad-CAM, probabilities, triage and its PDF, side by side."""
    result, meta = study.result, classifier.metadata
    target = target_index(result, settings.target, meta.class_names)
    cam = class_map(study, classifier, target, settings.method, maps)
    explained = meta.class_names[target]
    with st.container(border=True):
        st.subheader(result.name, anchor=False)
        image_col, map_col, score_col = st.columns([1, 1, 1.15], gap="medium")
        with image_col:
            st.image(
                result.pixels, caption="X-ray", width="stretch", alt=f"X-ray {result.name}"
            )
        if result.ood:
            with map_col:
                reason = f"Flagged: {result.ood_reason}\n\n" if result.ood_reason else ""
                st.warning(f"{reason}{result.triage}", icon=":material/warning:")
            with score_col:
                with st.expander("Raw model scores (not a chest X-ray)"):
                    st.warning(
                        "Not a chest X-ray: these scores are not meaningful and are shown "
                        "for transparency only."
                    )
                    probability_bars_ui(result, meta.class_names, emphasise=False)
                    map_ui(study, cam, settings, explained)
                report_ui(study, classifier, settings, maps, threshold)
            with image_col:
                info_ui(result.info)
            return
        with map_col:
            map_ui(study, cam, settings, explained)
        with score_col:
            shown = probability_bars_ui(result, meta.class_names)
            triage_ui(result, meta, shown, threshold)
            info_ui(result.info)
            report_ui(study, classifier, settings, maps, threshold)


def safe_detail_ui(
    study: Study,
    classifier: Classifier,
    settings: DisplaySettings,
    maps: MutableMapping,
    threshold: float,
) -> None:
    """:func:`study_detail_ui`, with a failure shown as a message instead of a traceback."""
    try:
        study_detail_ui(study, classifier, settings, maps, threshold)
    except Exception:  # one failing panel must not take the page down
        LOG.exception("displaying %s failed", study.result.name)
        st.error(
            f"{study.result.name}: the result could not be displayed "
            "(the error was logged on the server).",
            icon=":material/error:",
        )


def table_key(studies: Sequence[Study]) -> str:
    """The table's widget key: a new set of uploads starts with no row chosen."""
    digest = hashlib.sha256("\n".join(s.key for s in studies).encode()).hexdigest()
    return f"batch_table_{digest[:16]}"


def batch_table_ui(studies: Sequence[Study], meta: ModelMetadata) -> Study | None:
    """The triage table (most suspicious first), its CSV download and the chosen row.

    Args:
        studies: Every upload, re-labelled at the operating point in force.
        meta: The model's metadata.

    Returns:
        The study whose row is selected, or None.
    """
    ranked = [studies[i] for i in suspicion_order([s.result for s in studies])]
    columns = table_columns(meta.positive_class)
    results = [s.result for s in ranked]
    shown = table_rows(results, meta.class_names, meta.positive_class, disclaimer=False)
    exported = table_rows(results, meta.class_names, meta.positive_class)
    probability = probability_column(meta.positive_class)
    st.subheader("Batch triage", anchor=False)
    st.caption(
        f"{len(studies)} files, most suspicious first (highest {probability}; files that "
        "could not be read last). Click a column header to sort by it; tick a row to open "
        f"its study. All triage advice: {DISCLAIMER}"
    )
    keys = [s.key for s in ranked]
    kept = st.session_state.get(_CHOSEN_KEY)
    event = st.dataframe(
        {column: [row[column] for row in shown] for column in columns},
        key=table_key(studies),
        on_select="rerun",
        selection_mode="single-row",
        selection_default={"selection": {"rows": [keys.index(kept)]}} if kept in keys else None,
        hide_index=True,
        width="stretch",
        placeholder="",
        column_config={
            FILE: st.column_config.TextColumn(FILE, width=170),
            probability: st.column_config.ProgressColumn(
                probability, format="%.1f%%", min_value=0.0, max_value=100.0, width=120,
                help=f"Calibrated probability of {meta.positive_class}.",
            ),
            LABEL: st.column_config.TextColumn(LABEL, width=70),
            OOD: st.column_config.TextColumn(
                OOD, width=125,
                help="Flagged as not looking like a chest X-ray (then no triage advice).",
            ),
            TRIAGE: st.column_config.TextColumn(TRIAGE, width=320),
            ERROR: st.column_config.TextColumn(ERROR, width=150),
        },
    )
    st.download_button(
        "Download the table (CSV)", data=csv_bytes(exported, columns),
        file_name="xray-triage.csv",
        mime="text/csv", key="batch_csv", on_click="ignore", icon=":material/download:",
    )
    chosen = list(event.selection.rows) if event is not None else []
    if chosen and 0 <= chosen[0] < len(ranked):
        st.session_state[_CHOSEN_KEY] = keys[chosen[0]]  # reopened after a page switch
        return ranked[chosen[0]]
    st.session_state.pop(_CHOSEN_KEY, None)
    return None


def results_ui(
    studies: Sequence[Study],
    classifier: Classifier,
    settings: DisplaySettings,
    threshold: float,
) -> None:
    """Errors first (one per unreadable file), then the X-ray, or the batch table.

    One readable X-ray opens directly; several give the triage table first, and
    the row chosen there opens below it.
    """
    maps = st.session_state.setdefault(_CAMS_KEY, {})
    prune_maps(maps, {s.key for s in studies})
    for study in studies:
        if study.result.error:
            st.error(study.result.error, icon=":material/error:")
    readable = [s for s in studies if s.result.error is None]
    if len(readable) == 1:
        safe_detail_ui(readable[0], classifier, settings, maps, threshold)
        return
    if not readable:
        return
    chosen = batch_table_ui(studies, classifier.metadata)
    if chosen is None:
        st.info("Choose a row to open its X-ray, Grad-CAM map, probabilities and triage.",
                icon=":material/touch_app:")
    elif chosen.result.error:
        st.error(chosen.result.error, icon=":material/error:")
    else:
        safe_detail_ui(chosen, classifier, settings, maps, threshold)


def analysis_ui(
    files: Sequence[tuple[str, bytes]], classifier: Classifier, ood: Any | None
) -> list[Study]:
    """Scores the uploads (new files only) behind a progress bar."""
    store = st.session_state.setdefault(_STUDIES_KEY, {})
    bar = st.empty()
    text = f"Scoring {len(files)} X-ray(s)…" if len(files) > 1 else "Scoring the X-ray…"

    def progress(fraction: float) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=text)

    try:
        return score_files(files, classifier, store, ood=ood, progress=progress)
    finally:
        bar.empty()


def screening_page() -> None:
    """The screening page: uploads, the batch table and one study's detail."""
    header_ui()
    path = model_path()
    loaded = load_or_explain(path)
    if loaded is None:
        return
    classifier, ood = loaded
    meta = classifier.metadata
    threshold = threshold_in_force(meta)
    settings = controls_ui(meta.class_names)
    model_card_ui(meta, threshold)
    operating_point_notice_ui(meta, threshold)
    files = current_batch(upload_ui())
    if not files:
        st.info("Upload one or more chest X-rays to begin.", icon=":material/upload_file:")
        return
    try:
        studies = at_threshold(analysis_ui(files, classifier, ood), classifier, threshold)
        results_ui(studies, classifier, settings, threshold)
    except Exception:  # a bug must not leave a traceback on a clinician's screen
        LOG.exception("analysis failed")
        st.error("The analysis failed unexpectedly; the error was logged on the server.")


# --------------------------------------------------------------------- model page


@dataclass
class Evaluation:
    """The evaluation artefacts beside a model, as far as they could be read.

    Attributes:
        summary: The evaluation JSON (metrics, temperature, threshold, curves,
            optionally ``cam_energy``), or None.
        scores: The test split's calibrated P(positive) and truth, or None.
        problems: Plain-words reasons for what is missing or unreadable.
    """

    summary: dict[str, Any] | None
    scores: tuple[np.ndarray, np.ndarray] | None
    problems: list[str]


def read_evaluation(path: Path, meta: ModelMetadata) -> Evaluation:
    """Reads the evaluation JSON and the test scores CSV beside a model.

    Args:
        path: The ``.keras`` model.
        meta: Its metadata.

    Returns:
        What could be read, and why the rest could not (never raises for a
        missing or malformed file).
    """
    paths = artefact_paths(path)
    problems: list[str] = []
    summary = scores = None
    try:
        summary = json.loads(paths["evaluation"].read_text())
        if not isinstance(summary, dict):
            raise ValueError("it is not a JSON object")
    except FileNotFoundError:
        problems.append(f"`{paths['evaluation'].name}` (metrics and curves) is missing.")
    except (OSError, ValueError) as err:
        summary = None
        problems.append(f"`{paths['evaluation'].name}` cannot be read ({err}).")
    try:
        scores = scores_from_csv(paths["scores"].read_text(), meta.positive_class)
    except FileNotFoundError:
        problems.append(f"`{paths['scores'].name}` (per-image test scores) is missing.")
    except (OSError, ValueError) as err:
        problems.append(f"`{paths['scores'].name}` cannot be read ({err}).")
    return Evaluation(summary=summary, scores=scores, problems=problems)


def _value(value: Any) -> str:
    """A recipe or metadata value in plain text."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def data_card_ui(meta: ModelMetadata) -> None:
    """Where the data came from, how it was split, and how the model was trained."""
    st.markdown(f"**Data.** {meta.trained_on or 'Not recorded in the metadata.'}")
    if meta.splits:
        classes = list(meta.class_names)
        rows = {"split": [], **{name: [] for name in classes}, "total": []}
        known = [side for side in ("train", "val", "test") if side in meta.splits]
        for side in known + [side for side in meta.splits if side not in known]:
            counts = meta.splits[side]
            rows["split"].append(side)
            for name in classes:
                rows[name].append(int((counts or {}).get(name, 0)))
            rows["total"].append(sum(int(v) for v in (counts or {}).values()))
        st.dataframe(rows, hide_index=True, width="content")
    else:
        st.caption("Split sizes are not recorded in the metadata.")
    grouping = (meta.recipe or {}).get("duplicate_grouping")
    if grouping:
        st.markdown(
            f"**Duplicate-aware split.** Near-duplicate films (the same X-ray re-cropped or "
            f"re-contrasted) were grouped ({grouping}), so no film is in two splits."
        )
    else:
        st.caption("Duplicate-aware splitting is not recorded in the metadata.")
    with st.expander("Training recipe"):
        if meta.recipe:
            st.markdown(_table([(k, _value(v)) for k, v in meta.recipe.items()],
                               head=("Setting", "Value")))
        else:
            st.caption("The training recipe is not recorded in the metadata.")


def model_card_section_ui(meta: ModelMetadata) -> None:
    """The model card: identity, data, intended use, limits and the shortcut warning."""
    st.header("Model card", anchor=False)
    st.markdown(
        f"**{meta.name}**, version `{meta.version}`, SHA-256 `{meta.sha256[:12]}` · "
        f"input {meta.input_size} x {meta.input_size} grayscale · classes "
        f"{', '.join(meta.class_names)} · temperature {meta.temperature:.3f} · shipped "
        f"threshold P({meta.positive_class}) ≥ {meta.threshold:.3f}"
    )
    st.warning(SHORTCUT_WARNING, icon=":material/report:")
    data_col, use_col = st.columns(2, gap="large")
    with data_col:
        data_card_ui(meta)
    with use_col:
        st.markdown(INTENDED_USE)


def threshold_ui(meta: ModelMetadata) -> float:
    """The live operating-point slider; the value becomes this session's choice."""
    if THRESHOLD_WIDGET not in st.session_state:
        st.session_state[THRESHOLD_WIDGET] = threshold_in_force(meta)
    threshold = st.slider(
        f"Threshold on calibrated P({meta.positive_class})", min_value=0.0, max_value=1.0,
        step=0.001, format="%.3f", key=THRESHOLD_WIDGET,
        help=f"A study is labelled {meta.positive_class} when its calibrated probability is at "
        "least the threshold. Applies to the screening page, for this browser session only.",
    )
    if not math.isclose(threshold, threshold_in_force(meta), rel_tol=0.0, abs_tol=1e-12):
        choose_threshold(meta, float(threshold))
    return threshold_in_force(meta)


def metrics_ui(point: dict[str, Any], shipped: dict[str, Any] | None) -> None:
    """Sensitivity, specificity, PPV and NPV, with the change from the shipped point."""
    names = (("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("PPV", "ppv"),
             ("NPV", "npv"))
    for column, (title, key) in zip(st.columns(4), names, strict=True):
        value, delta, same = point.get(key), None, True
        if shipped is not None and value is not None and shipped.get(key) is not None:
            change = 100 * (value - shipped[key])
            delta, same = f"{change:+.1f} pp vs shipped", abs(change) < 0.05
        column.metric(title, _fmt(value, "{:.1%}"), delta=delta, border=True,
                      delta_color="off" if same else "normal",
                      delta_arrow="off" if same else "auto")


def operating_point_ui(meta: ModelMetadata, evaluation: Evaluation) -> dict[str, Any] | None:
    """The live operating point on the stored test scores; returns its statistics."""
    st.header("Operating point", anchor=False)
    if evaluation.scores is None:
        st.info("The operating point cannot be explored without the per-image test scores.",
                icon=":material/info:")
        return None
    scores, truth = evaluation.scores
    sample = float(truth.mean())
    slider_col, prevalence_col, buttons_col = st.columns([3, 1.2, 1.3], gap="medium",
                                                         vertical_alignment="bottom")
    with slider_col:
        threshold = threshold_ui(meta)
    with prevalence_col:
        prevalence = st.number_input(
            "Prevalence (%)", min_value=0.1, max_value=99.9, value=round(100 * sample, 1),
            step=0.5, format="%.1f", key=PREVALENCE_WIDGET, persist_state="session",
            help="Share of the screened population with the disease: PPV and NPV depend on "
            f"it. The test split's is {sample:.1%}.",
        )
    with buttons_col, st.container(horizontal=True):
        st.button("Reset", key="op_reset_model", on_click=reset_operating_point,
                  disabled=is_shipped(meta, threshold), icon=":material/restart_alt:",
                  help="Back to the shipped operating point.")
        if st.button("Screening", key="op_back", icon=":material/arrow_back:",
                     help="Back to the screening page, at this operating point."):
            go_to(SCREENING)
    point = operating_point(scores, truth, threshold, prevalence=prevalence / 100.0)
    shipped = None
    if not is_shipped(meta, threshold):
        shipped = operating_point(scores, truth, meta.threshold, prevalence=prevalence / 100.0)
    st.markdown(f"**In force on the screening page (this session):** "
                f"{operating_point_words(meta, threshold)}.")
    metrics_ui(point, shipped)
    st.caption(
        f"On the held-out test split ({len(scores)} images): TP {point['tp']} · FN "
        f"{point['fn']} · FP {point['fp']} · TN {point['tn']}. PPV and NPV at a prevalence "
        f"of {prevalence:.1f}%."
    )
    return point


def charts_ui(meta: ModelMetadata, evaluation: Evaluation, point: dict[str, Any] | None) -> None:
    """ROC with AUC and CI, the confusion matrix at the point, and reliability diagrams."""
    st.header("Test-split charts", anchor=False)
    summary = evaluation.summary
    if summary is None:
        st.info("The ROC and reliability charts need the evaluation JSON.",
                icon=":material/info:")
        return
    try:
        metrics, curves = summary["metrics"], summary["curves"]
        roc = roc_figure(curves["roc"], float(metrics["auc"]), tuple(metrics["auc_ci95"]),
                         None if point is None or point["sensitivity"] is None
                         or point["specificity"] is None
                         else (1 - point["specificity"], point["sensitivity"]))
        temperature = float(summary.get("temperature", meta.temperature))
        reliability = reliability_figure({
            "before scaling": curves["reliability_before"],
            f"after scaling (T = {temperature:.2f})": curves["reliability_after"],
        })
    except (KeyError, TypeError, ValueError) as err:
        LOG.warning("evaluation JSON not as expected: %r", err)
        st.error(f"The evaluation JSON is not as expected ({err!r}); re-run the evaluation.",
                 icon=":material/error:")
        return
    roc_col, confusion_col, reliability_col = st.columns(3, gap="medium")
    with roc_col:
        st.pyplot(roc, alt="ROC curve of the test split with the operating point")
        st.caption(f"AUC {float(metrics['auc']):.3f} (95% CI {metrics['auc_ci95'][0]:.3f}-"
                   f"{metrics['auc_ci95'][1]:.3f}); red dot: the operating point in force.")
    with confusion_col:
        if point is not None:
            matrix = confusion_at(point, meta.class_names, meta.positive_class)
            st.pyplot(confusion_figure(matrix, list(meta.class_names)),
                      alt="Confusion matrix at the operating point")
            st.caption(f"At P({meta.positive_class}) ≥ {point['threshold']:.3f}; rows: truth, "
                       "columns: prediction.")
        else:
            st.caption("The confusion matrix needs the per-image test scores.")
    with reliability_col:
        st.pyplot(reliability, alt="Reliability diagram before and after temperature scaling")
        st.caption("Observed COVID rate against predicted probability, before and after "
                   "temperature scaling (fitted on the validation split).")


def cam_energy_ui(evaluation: Evaluation) -> None:
    """Explanation sanity: where the test split's Grad-CAM maps put their energy."""
    st.header("Explanation sanity", anchor=False)
    energy = (evaluation.summary or {}).get("cam_energy")
    if not isinstance(energy, dict):
        st.info("Not measured yet: where the Grad-CAM maps put their energy (chest centre, "
                "border, corners) has not been measured for this model. Re-run "
                "`python -m covid.training.evaluate` to measure it.", icon=":material/info:")
        return
    st.markdown(f"**{cam_energy_verdict(energy)}**")
    rows = cam_energy_rows(energy)
    percent = st.column_config.NumberColumn(format="%.0f%%")
    st.dataframe(
        {key: [row[key] for row in rows]
         for key in ("group", "images", "central", "border", "corners")},
        hide_index=True, width="content", placeholder="",
        column_config={"central": percent, "border": percent, "corners": percent,
                       "group": st.column_config.TextColumn("maps")},
    )
    st.caption(
        "Share of each map's energy (the sum of its values) in the central chest box (70% of "
        "the width, 80% of the height), the rest of the film (border) and the four 15% "
        "corners (part of the border, where text markers usually are); mean over the test "
        "split, Grad-CAM of the predicted class. A uniform map would give the last row."
    )


def model_page() -> None:
    """The model page: model card, charts, live operating point and Grad-CAM check."""
    st.session_state[_PAGE_KEY] = MODEL
    st.title("Model", anchor=False)
    disclaimer_ui()
    path = model_path()
    loaded = load_or_explain(path)
    if loaded is None:
        return
    meta = loaded[0].metadata
    model_card_section_ui(meta)
    evaluation = read_evaluation(path, meta)
    if evaluation.problems:
        st.warning(
            "**Evaluation artefacts missing.** Beside the model "
            f"(`{path.parent}`):\n\n" + "\n".join(f"- {p}" for p in evaluation.problems)
            + "\n\n" + EVALUATE_HOWTO.format(model=path),
            icon=":material/folder_off:",
        )
    point = operating_point_ui(meta, evaluation)
    charts_ui(meta, evaluation, point)
    cam_energy_ui(evaluation)


def main() -> None:
    """Builds the dashboard: the navigation and the current page."""
    st.set_page_config(page_title="Chest X-ray screening", page_icon="🩻", layout="wide")
    st.navigation(list(pages().values()), position="top").run()


if __name__ == "__main__":
    main()
