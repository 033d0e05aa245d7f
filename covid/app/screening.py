"""The screening page: uploads, the batch triage table, and the study chosen in it.

One upload shows its study directly; several show the triage table first (most
suspicious first, downloadable as CSV), and choosing a row opens that study.
Each file is scored once per session and re-labelled at the operating point in
force (:mod:`covid.screening.studies`); the study view is :mod:`covid.app.study`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import streamlit as st

from covid import DISCLAIMER
from covid import settings as config
from covid.app import state
from covid.app.common import (
    disclaimer_ui,
    fmt,
    load_or_explain,
    markdown_table,
    model_error_ui,
    operating_point_words,
)
from covid.app.navigation import MODEL, SCREENING, go_to
from covid.app.pacs_ui import pacs_source_ui, send_all_ui
from covid.app.resources import opacity_for, segmenter_for, warm_up_when_idle
from covid.app.study import safe_detail_ui
from covid.explain.overlay import colormap_names
from covid.model.decision import finding_name
from covid.model.figure_names import figure_name
from covid.model.metadata import ModelFileError, ModelMetadata
from covid.screening.pipeline import analyse
from covid.screening.studies import (
    DEFAULT_COLORMAP,
    DEFAULT_OPACITY,
    METHODS,
    PREDICTED,
    VIEWS,
    DisplaySettings,
    Study,
    at_threshold,
    measure_relabelled,
    prune_maps,
    score_files,
)
from covid.screening.table import (
    ADVICE,
    ERROR,
    FILE,
    FLAG,
    LABEL,
    LUNGS,
    OPACITY,
    OPACITY_SCORE,
    TRIAGE,
    by_column,
    csv_bytes,
    finding_columns,
    suspicion_order,
    table_columns,
    table_key,
    table_rows,
)

if TYPE_CHECKING:
    from covid.explain.inference import Classifier
    from covid.model.lungs import LungSegmenter
    from covid.model.opacity import OpacitySegmenter
    from covid.screening.ood import OODGate

LOG = logging.getLogger(__name__)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]


def header_ui() -> Any:
    """Title and disclaimer; returns the slot the introduction fills once the model loads."""
    st.title("Chest X-ray screening")
    intro = st.empty()
    disclaimer_ui()
    return intro


def intro_ui(slot: Any, class_names: Sequence[str]) -> None:
    """What the page does, naming the model's classes (from its metadata)."""
    slot.markdown(
        f"Upload posterior-anterior chest X-rays to see the model's **{' / '.join(class_names)}** "
        "probabilities, a Grad-CAM map of the regions that drove the prediction, and the "
        "triage advice at the operating point in force. Several X-rays at once give a "
        "triage table, most suspicious first."
    )


RESULTS = "results"
"""The key of the results fragment (the batch table and the open study)."""


def rerun_results() -> None:
    """Control callback: rerun only the results fragment, not the whole page.

    Only when the fragment is on the page; otherwise the full rerun goes ahead.
    The display radio is left out: it enables and disables other controls,
    which a full rerun redraws.
    """
    if state.results_shown():
        st.rerun(RESULTS)


def settings_in_force(lungs: bool) -> DisplaySettings:
    """The display settings from this session's controls (their defaults before they exist).

    Args:
        lungs: Whether a lung segmenter runs (else no outline).
    """
    values = st.session_state
    return DisplaySettings(
        target=values.get("target", PREDICTED),
        method=METHODS[values.get("method", next(iter(METHODS)))],
        view=values.get("view", VIEWS[0]),
        colormap=values.get("colormap", DEFAULT_COLORMAP),
        opacity=float(values.get("opacity", DEFAULT_OPACITY)),
        outline=bool(values.get("outline", False) and lungs),
    )


def controls_ui(class_names: Sequence[str], lungs: bool = True,
                opacities: bool = False) -> DisplaySettings:
    """The explanation controls, in the sidebar (kept across page switches).

    A change reruns only the results fragment (:func:`results_fragment`), except
    for the display radio, which reruns the page.

    Args:
        class_names: The model's classes.
        lungs: Whether a lung segmenter runs (else the lung outline is unavailable).
        opacities: Whether the opacity segmenter runs (else its outline is unavailable).

    Returns:
        The chosen settings.
    """
    with st.sidebar:
        st.header("Explanation")
        target = st.selectbox(
            "Class to explain",
            [PREDICTED, *class_names],
            key="target",
            on_change=rerun_results,
            help="Grad-CAM shows which regions raise the chosen class's score.",
            persist_state="session",
        )
        method = st.radio(
            "Method", list(METHODS), key="method", horizontal=True, persist_state="session",
            on_change=rerun_results,
        )
        view = st.radio("Display", VIEWS, key="view", persist_state="session")
        names = list(colormap_names())
        colormap = st.selectbox(
            "Colour map",
            names,
            index=names.index(DEFAULT_COLORMAP) if DEFAULT_COLORMAP in names else 0,
            key="colormap",
            on_change=rerun_results,
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
            on_change=rerun_results,
            disabled=view != "Overlay",
            help="The map's opacity at its peak; it follows the map, so the film shows "
            "through where the map is low.",
            persist_state="session",
        )
        outline = st.toggle(
            "Lung outline",
            value=False,
            key="outline",
            on_change=rerun_results,
            disabled=not lungs,
            persist_state="session",
            help="Draw the segmented lung fields' edge over the X-ray and over the map."
            if lungs else
            f"Needs the lung segmenter ({config.settings().lung_model_path}), which is missing.",
        )
        opacity_outline_ui(opacities)
    return DisplaySettings(
        target=target, method=METHODS[method], view=view, colormap=colormap, opacity=opacity,
        outline=bool(outline and lungs),
    )


def opacity_outline_ui(available: bool) -> None:
    """The switch that outlines the opacity segmenter's opacities on the X-ray."""
    st.divider()
    st.toggle(
        "Opacity outline (separate segmentation)",
        value=False,
        key=state.OPACITY_OUTLINE_WIDGET,
        on_change=rerun_results,
        disabled=not available,
        persist_state="session",
        help="Outline, on the X-ray, the opacities found by the opacity segmenter: a separate "
        "network trained on radiologists' infection masks, not the classifier's evidence. The "
        "Grad-CAM map is left as it is." if available else
        f"Needs the opacity segmenter ({config.settings().opacity_model_path}) and the lung "
        "segmenter.",
    )


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
            # a three-class evaluation reports the AUC of any finding (admit against home)
            finding = m.get("auc_finding") or {}
            auc, ci = m.get("auc", finding.get("auc")), m.get("auc_ci95", finding.get("ci95"))
            ci = ci or [None, None]
            st.markdown(f"**Held-out {m.get('split', 'test')} split** (n = {m.get('n', '?')})")
            st.markdown(markdown_table([
                ("ROC AUC" if "auc" in m else "ROC AUC, any finding", fmt(auc)),
                ("AUC 95% CI", f"{fmt(ci[0])}-{fmt(ci[1])}"),
                (figure_name("sensitivity"), fmt(m.get("sensitivity"), "{:.1%}")),
                (figure_name("specificity"), fmt(m.get("specificity"), "{:.1%}")),
                ("PPV", fmt(m.get("ppv"), "{:.1%}")),
                ("NPV", fmt(m.get("npv"), "{:.1%}")),
                ("ECE (calibrated)", fmt(m.get("ece_after_scaling"))),
            ], head=("Metric", "Value")))
            st.caption("At the shipped operating point.")
        else:
            st.caption("No test metrics yet: run `python -m covid.evaluate`.")
        rows = [(f"Shipped threshold on {finding_name(meta.class_names)}", f"{meta.threshold:.3f}")]
        if not state.is_shipped(meta, threshold):
            rows.append(("This session's threshold", f"{threshold:.3f}"))
        rows.append(("Temperature", f"{meta.temperature:.3f}"))
        st.markdown(markdown_table(rows, head=("Operating point", "Value")))


def operating_point_notice_ui(meta: ModelMetadata, threshold: float) -> None:
    """Which operating point labels the studies, with reset and change buttons."""
    shipped = state.is_shipped(meta, threshold)
    with st.container(horizontal=True, vertical_alignment="center", key="op_notice"):
        st.markdown(f"**Operating point:** {operating_point_words(meta, threshold)}.",
                    width="content")
        st.button(
            "Reset to shipped", key="op_reset", on_click=state.reset_operating_point,
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


def current_batch_ui(uploaded: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The files to show; the uploads kept from before a visit to the model page say so."""
    files, restored = state.batch_to_show(uploaded, came_back=state.visit(SCREENING))
    if restored:
        with st.container(horizontal=True, vertical_alignment="center"):
            st.info(
                f"Showing the {len(files)} file(s) uploaded before you opened the model page. "
                "Upload files to replace them.", icon=":material/history:",
            )
            st.button("Clear", key="clear_batch", on_click=state.clear_batch,
                      icon=":material/delete:")
    return files


def batch_table_ui(studies: Sequence[Study], meta: ModelMetadata) -> Study | None:
    """The triage table (most suspicious first), its CSV download and the chosen row.

    Args:
        studies: Every upload, re-labelled at the operating point in force.
        meta: The model's metadata.

    Returns:
        The study whose row is selected, or None.
    """
    ranked = [studies[i] for i in suspicion_order([s.result for s in studies])]
    columns = table_columns(meta.class_names)
    results = [s.result for s in ranked]
    shown = table_rows(results, meta.class_names, disclaimer=False)
    st.subheader("Batch triage", anchor=False)
    st.caption(
        f"{len(studies)} files, most suspicious first (highest probability of any finding; "
        "then images refused as not chest X-rays, then files that could not be read). Click a "
        f"column header to sort by it; tick a row to open its study. All triage advice: "
        f"{DISCLAIMER}"
    )
    keys = [s.key for s in ranked]
    kept = state.chosen_study()
    event = st.dataframe(
        by_column(shown, columns),
        key=table_key([s.key for s in studies]),
        on_select="rerun",
        selection_mode="single-row",
        selection_default={"selection": {"rows": [keys.index(kept)]}} if kept in keys else None,
        hide_index=True,
        width="stretch",
        placeholder="",
        column_config={
            FILE: st.column_config.TextColumn(FILE, width=170),
            **{column: st.column_config.ProgressColumn(
                column, format="%.1f%%", min_value=0.0, max_value=100.0, width=120,
                help=f"Calibrated probability of {column.removesuffix(' %')}.",
            ) for column in finding_columns(meta.class_names)},
            LABEL: st.column_config.TextColumn(LABEL, width=70),
            FLAG: st.column_config.TextColumn(
                FLAG, width=80,
                help="unusual: a chest X-ray unlike the training films, always admitted for a "
                "radiologist to read; not_chest: not a chest X-ray, refused (no label, no "
                "advice); none: neither.",
            ),
            ADVICE: st.column_config.TextColumn(
                ADVICE, width=70, help="admit or home; empty for a refused image.",
            ),
            LUNGS: st.column_config.NumberColumn(
                LUNGS, format="%.0f%%", width=120,
                help="Share of the predicted class's Grad-CAM energy inside the segmented lung "
                "fields; below 50% the model's evidence lies mostly outside the lungs. Click "
                "the header to sort.",
            ),
            OPACITY: st.column_config.NumberColumn(
                OPACITY, format="%.0f%%", width=110,
                help="Share of both lung fields that the opacity segmenter outlines (a separate "
                "segmentation, not the classifier's evidence).",
            ),
            OPACITY_SCORE: st.column_config.NumberColumn(
                OPACITY_SCORE, format="%d", width=100,
                help="Modified RALE score from the opacity segmenter: each lung 0-4 for none, "
                "<25%, 25-50%, 50-75% or >75% involved, the two added.",
            ),
            TRIAGE: st.column_config.TextColumn(TRIAGE, width=320),
            ERROR: st.column_config.TextColumn(ERROR, width=150),
        },
    )
    st.download_button(
        "Download the table (CSV)",
        data=lambda: csv_bytes(table_rows(results, meta.class_names), columns),
        file_name="xray-triage.csv",
        mime="text/csv", key="batch_csv", on_click="ignore", icon=":material/download:",
    )
    chosen = list(event.selection.rows) if event is not None else []
    if chosen and 0 <= chosen[0] < len(ranked):
        state.choose_study(keys[chosen[0]])  # reopened after a page switch
        return ranked[chosen[0]]
    state.choose_study(None)
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
    maps = state.maps_store()
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
    send_all_ui(readable, classifier, maps, threshold)  # the studies from the PACS
    if chosen is None:
        st.info("Choose a row to open its X-ray, Grad-CAM map, probabilities and triage.",
                icon=":material/touch_app:")
    elif chosen.result.error:
        st.error(chosen.result.error, icon=":material/error:")
    else:
        safe_detail_ui(chosen, classifier, settings, maps, threshold)


@st.fragment(key=RESULTS)
def results_fragment(
    studies: Sequence[Study], classifier: Classifier, threshold: float, lungs: bool
) -> None:
    """:func:`results_ui` as a fragment: a control change or a row click reruns only this.

    The display settings are read from the controls on every run, so a
    fragment rerun (called with the last full run's arguments) draws the
    current ones; the network runs only for a map not computed before.
    """
    try:
        results_ui(studies, classifier, settings_in_force(lungs), threshold)
    except Exception:  # a bug must not leave a traceback on a clinician's screen
        LOG.exception("showing the results failed")
        st.error("The results could not be shown; the error was logged on the server.")


def analysis_ui(
    files: Sequence[tuple[str, bytes]], classifier: Classifier, ood: OODGate | None,
    segmenter: LungSegmenter | None = None, opacity: OpacitySegmenter | None = None,
) -> list[Study]:
    """Scores the uploads (new files only) behind a progress bar, opacities too."""
    store = state.studies_store()
    bar = st.empty()
    text = f"Scoring {len(files)} X-ray(s)…" if len(files) > 1 else "Scoring the X-ray…"

    def progress(fraction: float) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=text)

    try:
        return score_files(files, classifier, store, ood=ood, progress=progress,
                           segmenter=segmenter, analyse=analyse, opacity=opacity)
    finally:
        bar.empty()


def load_ui() -> tuple[Classifier, OODGate | None, LungSegmenter | None,
                       OpacitySegmenter | None] | None:
    """The screening models, or None after explaining why they cannot be used.

    After a cold start this waits for the load the server began at start. An
    opacity segmenter that cannot be loaded only costs the opacity figures.
    """
    paths = config.settings()
    loaded = load_or_explain(paths.model_path)
    if loaded is None:
        return None
    classifier, ood = loaded
    try:
        with st.spinner("Loading the lung segmenter…"):
            segmenter = segmenter_for(classifier)
    except ModelFileError as err:
        model_error_ui(err, paths.lung_model_path)
        return None
    try:
        opacity = opacity_for(segmenter)
    except ModelFileError as err:
        st.warning(f"No opacity outlines or figures: {err}", icon=":material/warning:")
        opacity = None
    warm_up_when_idle(classifier)
    return classifier, ood, segmenter, opacity


def page() -> None:
    """The screening page: uploads, the batch table and one study's detail.

    The uploader is drawn before the models are asked for, so that films can be
    dropped while the server is still loading them after a cold start (and taken
    away again if they cannot be loaded).
    """
    intro = header_ui()
    notice, uploader = st.container(), st.empty()
    with uploader:
        uploaded = upload_ui()
    uploaded += pacs_source_ui()  # studies retrieved from the PACS join the uploads
    loaded = load_ui()
    if loaded is None:
        uploader.empty()  # nothing could score the files
        return
    classifier, ood, segmenter, opacity = loaded
    meta = classifier.metadata
    intro_ui(intro, meta.class_names)
    threshold = state.threshold_in_force(meta)
    controls_ui(meta.class_names, lungs=segmenter is not None, opacities=opacity is not None)
    model_card_ui(meta, threshold)
    with notice:
        operating_point_notice_ui(meta, threshold)
    files = current_batch_ui(uploaded)
    state.results_shown(False)
    if not files:
        state.drop_studies()  # removed files take their results and maps with them
        st.info("Upload one or more chest X-rays to begin.", icon=":material/upload_file:")
        return
    try:
        decided = at_threshold(analysis_ui(files, classifier, ood, segmenter, opacity),
                               threshold)
        studies = measure_relabelled(decided, classifier, state.maps_store())
    except Exception:  # a bug must not leave a traceback on a clinician's screen
        LOG.exception("analysis failed")
        st.error("The analysis failed unexpectedly; the error was logged on the server.")
        return
    results_fragment(studies, classifier, threshold, segmenter is not None)  # guards itself
    state.results_shown(True)
