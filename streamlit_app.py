"""The chest X-ray screening page (Streamlit).

Run with ``streamlit run streamlit_app.py``. The page is layout only: decoding,
scoring, calibration, Grad-CAM and colour maps all live in :mod:`covid`. The
model is loaded once per process and never mutated; each uploaded file is scored
once (results are kept per session, keyed by the file's content), and Grad-CAM
is recomputed only when the explained class or the method changes, so moving the
opacity slider or switching colour maps never runs the network again.

Set ``COVID_MODEL_PATH`` to serve another ``.keras`` model than the shipped one.

Research tool, not a medical device.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from covid import DISCLAIMER
from covid.model import DEFAULT_MODEL_PATH, ModelFileError, ModelMetadata
from covid.overlay import colormap_names, contour_overlay, heatmap_only, overlay_heatmap
from covid.pipeline import StudyResult, analyse, percentages

if TYPE_CHECKING:
    from covid.inference import Classifier

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
python -m covid.train --run runs/main
python -m covid.evaluate --model runs/main/model.keras --ship models/covid_resnet50.keras
```

Or point the page at another model: `COVID_MODEL_PATH=path/to/model.keras streamlit run \
streamlit_app.py` (its metadata JSON must sit beside it).
"""

_STUDIES_KEY = "_covid_studies"
_CAMS_KEY = "_covid_cams"


@dataclass(frozen=True)
class DisplaySettings:
    """How the explanation is computed and shown.

    Attributes:
        target: ``PREDICTED`` or a class name: the class the map explains.
        method: ``"gradcam"`` or ``"gradcam++"``.
        view: One of :data:`VIEWS`.
        colormap: A name from :func:`covid.overlay.colormap_names`.
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
        The :class:`covid.inference.Classifier`; shared by every session, never mutated.

    Raises:
        ModelFileError: The model or its metadata is missing, or the SHA-256 differs.
    """
    del stamp  # part of the cache key only
    from covid.inference import Classifier  # deferred: imports TensorFlow

    return Classifier.from_file(path)


@st.cache_resource(show_spinner=False, max_entries=2)
def load_ood_detector(path: str, stamp: tuple[int, int]) -> Any | None:
    """Loads the out-of-distribution detector shipped with the model, if any.

    Args:
        path: The ``.keras`` file.
        stamp: The file's (size, mtime_ns).

    Returns:
        The detector from :func:`covid.ood.load_detector`, or None when the
        project has no :mod:`covid.ood` module.
    """
    del stamp
    if importlib.util.find_spec("covid.ood") is None:
        return None
    from covid.ood import load_detector

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


# ------------------------------------------------------------------------- layout


def header_ui() -> None:
    """Title, introduction and the disclaimer."""
    st.title("Chest X-ray screening")
    st.markdown(
        "Upload posterior-anterior chest X-rays to see the model's **COVID-19 / Normal** "
        "probabilities, a Grad-CAM map of the regions that drove the prediction, and the "
        "triage advice at the model's validated operating point."
    )
    st.warning(
        f"**{DISCLAIMER}** Do not use it to make clinical decisions.", icon=":material/warning:"
    )


def model_error_ui(err: Exception, path: Path) -> None:
    """Explains, without a traceback, that no usable model is available."""
    st.error(f"No usable model at `{path}`: {err}", icon=":material/error:")
    st.info(TRAIN_HOWTO, icon=":material/info:")


def controls_ui(class_names: Sequence[str]) -> DisplaySettings:
    """The explanation controls, in the sidebar.

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
        )
        method = st.radio("Method", list(METHODS), key="method", horizontal=True)
        view = st.radio("Display", VIEWS, key="view")
        names = list(colormap_names())
        colormap = st.selectbox(
            "Colour map",
            names,
            index=names.index(DEFAULT_COLORMAP) if DEFAULT_COLORMAP in names else 0,
            key="colormap",
            disabled=view == "Contour lines",
        )
        opacity = st.slider(
            "Heatmap opacity",
            min_value=0.0,
            max_value=1.0,
            value=DEFAULT_OPACITY,
            step=0.05,
            key="opacity",
            disabled=view != "Overlay",
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


def model_card_ui(meta: ModelMetadata) -> None:
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
        else:
            st.caption("No test metrics yet: run `python -m covid.evaluate`.")
        st.markdown(_table([
            (f"Threshold on P({meta.positive_class})", f"{meta.threshold:.3f}"),
            ("Temperature", f"{meta.temperature:.3f}"),
        ], head=("Operating point", "Value")))


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


def triage_ui(result: StudyResult, meta: ModelMetadata, shown: Sequence[float]) -> None:
    """The prediction and its triage advice: red for the pathological class, else green."""
    st.markdown(f"**Prediction: {result.label}**")
    st.caption(
        f"{meta.positive_class} probability {shown[meta.positive_index]:.1f}% against the "
        f"operating threshold of {meta.threshold:.1%}."
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


def study_detail_ui(
    study: Study, classifier: Classifier, settings: DisplaySettings, maps: MutableMapping
) -> None:
    """One scored X-ray: image, Grad-CAM, probabilities and triage, side by side."""
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
            with score_col, st.expander("Raw model scores (not a chest X-ray)"):
                st.warning(
                    "Not a chest X-ray: these scores are not meaningful and are shown for "
                    "transparency only."
                )
                probability_bars_ui(result, meta.class_names, emphasise=False)
                map_ui(study, cam, settings, explained)
            with image_col:
                info_ui(result.info)
            return
        with map_col:
            map_ui(study, cam, settings, explained)
        with score_col:
            shown = probability_bars_ui(result, meta.class_names)
            triage_ui(result, meta, shown)
            info_ui(result.info)


def results_ui(studies: Sequence[Study], classifier: Classifier, settings: DisplaySettings) -> None:
    """Errors first (one per unreadable file), then one panel per X-ray."""
    maps = st.session_state.setdefault(_CAMS_KEY, {})
    prune_maps(maps, {s.key for s in studies})
    for study in studies:
        if study.result.error:
            st.error(study.result.error, icon=":material/error:")
    for study in studies:
        if study.result.error is None:
            try:
                study_detail_ui(study, classifier, settings, maps)
            except Exception:  # one failing panel must not hide the others
                LOG.exception("displaying %s failed", study.result.name)
                st.error(
                    f"{study.result.name}: the result could not be displayed "
                    "(the error was logged on the server).",
                    icon=":material/error:",
                )


def analysis_ui(
    files: Sequence[tuple[str, bytes]], classifier: Classifier, ood: Any | None
) -> list[Study]:
    """Scores the uploads (new files only) behind a progress bar."""
    store = st.session_state.setdefault(_STUDIES_KEY, {})
    bar = st.empty()

    def progress(fraction: float) -> None:
        bar.progress(fraction, text="Scoring the new X-rays…")

    try:
        return score_files(files, classifier, store, ood=ood, progress=progress)
    finally:
        bar.empty()


def main() -> None:
    """Builds the page."""
    st.set_page_config(page_title="Chest X-ray screening", page_icon="🩻", layout="wide")
    header_ui()
    path = model_path()
    try:
        classifier = load_classifier(str(path), file_stamp(path))
        ood = load_ood_detector(str(path), file_stamp(path))
    except ModelFileError as err:
        model_error_ui(err, path)
        return
    meta = classifier.metadata
    settings = controls_ui(meta.class_names)
    model_card_ui(meta)
    files = upload_ui()
    if not files:
        st.info("Upload one or more chest X-rays to begin.", icon=":material/upload_file:")
        return
    try:
        studies = analysis_ui(files, classifier, ood)
        results_ui(studies, classifier, settings)
    except Exception:  # a bug must not leave a traceback on a clinician's screen
        LOG.exception("analysis failed")
        st.error("The analysis failed unexpectedly; the error was logged on the server.")


if __name__ == "__main__":
    main()
