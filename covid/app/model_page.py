"""The model page: the model card, a live operating point, test-split charts, map checks.

Everything shown is read from the model's metadata and the evaluation artefacts
beside the model (:func:`covid.evaluation.results.read_evaluation`); the operating
point chosen here applies to this browser session only (:mod:`covid.app.state`).
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from covid.app import state
from covid.app.common import (
    disclaimer_ui,
    fmt,
    load_or_explain,
    markdown_table,
    operating_point_words,
)
from covid.app.navigation import MODEL, SCREENING, go_to
from covid.evaluation.comparison import comparison_rows, with_previous_sent_home
from covid.evaluation.map_checks import (
    localisation_rows,
    localisation_verdict,
    lung_evidence_rows,
)
from covid.evaluation.metrics import operating_point
from covid.evaluation.plots import (
    class_roc_figure,
    confusion_figure,
    lung_share_figure,
    reliability_figure,
    trade_figure,
)
from covid.evaluation.results import (
    ClassScores,
    Evaluation,
    change_from,
    confusion_matrix_at,
    finding_rates,
    finding_roc,
    group_rows,
    read_evaluation,
    roc_marker,
    split_table,
    trade_curve,
    trade_thresholds,
)
from covid.evaluation.segmenters import grade_confusion, opacity_rows
from covid.explain.localisation import CAUTION_SHARE
from covid.model.classes import COVID, NORMAL
from covid.model.decision import finding_name
from covid.model.figure_names import figure_name
from covid.model.metadata import ModelFileError, ModelMetadata, read_metadata_as
from covid.screening.table import by_column
from covid.settings import settings

LOG = logging.getLogger(__name__)

EVALUATE_HOWTO = """\
Evaluate the model to make them (from the project's root):

```bash
python -m covid.evaluate --model {model}
```
"""

INTENDED_USE = """\
**Intended use.** Research and teaching: a demonstration of how a screening-support
tool could sort chest X-rays and show why it scored them as it did.
**Not for clinical use**: it is not a medical device, has not been validated
clinically, and must not be used to diagnose, treat or triage patients.

**Limits.**
- Classes {names} only. Diseases outside them (tuberculosis, tumours, effusions...)
  were not in the training data; the model forces them into one of its classes.
- Public research collections only (the COVID-19 Radiography Database, children's viral
  pneumonias from Kermany et al., COVID-QU-Ex), each class drawn from its own archives and
  hospitals; images downsampled to {size} x {size} pixels. The test split comes from
  the same archives as the training data, so its metrics are optimistic for any other
  hospital, scanner or population.
- Calibration (temperature) and the operating threshold were fitted on the
  validation split of the same collections; PPV and NPV depend on the prevalence
  where it is used.
- Grad-CAM maps are coarse ({cells} x {cells} cells at {size} px, from `{layer}`) and
  show where the evidence lies, not what it is.
"""

def intended_use(meta: ModelMetadata, cells: int) -> str:
    """The intended use and limits, with the model's own classes, size and map grid."""
    return INTENDED_USE.format(names=", ".join(meta.class_names), size=meta.input_size,
                               cells=cells, layer=meta.gradcam_layer)


SHORTCUT_WARNING = """\
**Beware of source shortcuts.** In these data the COVID-19 and Normal X-rays
come from different archives and hospitals. A network can learn to recognise the
*source* (text markers, borders, exposure, patient age, scanner) instead of the
disease, score very well on a test split drawn from the same sources, and fail on
films from a new hospital (DeGrave, Janizek and Lee, "AI for radiographic COVID-19
detection selects shortcuts over signal", *Nature Machine Intelligence*, 2021).
Good numbers here do not show clinical validity.
"""


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
        st.dataframe(split_table(meta.splits, meta.class_names), hide_index=True,
                     width="content")
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
            st.markdown(markdown_table([(k, _value(v)) for k, v in meta.recipe.items()],
                                       head=("Setting", "Value")))
        else:
            st.caption("The training recipe is not recorded in the metadata.")


def model_card_section_ui(meta: ModelMetadata, cells: int) -> None:
    """The model card: identity, data, intended use, limits and the shortcut warning."""
    st.header("Model card", anchor=False)
    st.markdown(
        f"**{meta.name}**, version `{meta.version}`, SHA-256 `{meta.sha256[:12]}` · "
        f"input {meta.input_size} x {meta.input_size} grayscale · classes "
        f"{', '.join(meta.class_names)} · temperature {meta.temperature:.3f} · shipped "
        f"threshold {finding_name(meta.class_names)} ≥ {meta.threshold:.3f}"
    )
    st.warning(SHORTCUT_WARNING, icon=":material/report:")
    data_col, use_col = st.columns(2, gap="large")
    with data_col:
        data_card_ui(meta)
    with use_col:
        st.markdown(intended_use(meta, cells))


def comparison_ui(meta: ModelMetadata) -> None:
    """The headline test figures beside the previous model's and the goals."""
    metrics = meta.metrics or {}
    previous = (metrics.get("comparison") or {}).get("previous")
    rows = comparison_rows(metrics)
    if not isinstance(previous, dict) or not rows:
        return
    st.header("Against the previous model", anchor=False)
    st.dataframe(by_column(rows, list(rows[0])), hide_index=True, width="content")
    st.caption(
        f"Held-out test split ({metrics.get('n', '?')} films), each model at its own "
        "temperature and operating point"
        + (f"; previous: {previous['model']}" if previous.get("model") else "")
        + ". The goals are those set for this version; \"—\": not measured."
    )
    gate = metrics.get("ship_gate")
    if isinstance(gate, dict) and gate.get("ship") and gate.get("shipped"):
        before = gate["shipped"].get("model", "the model before")
        if gate.get("summary"):
            st.caption(f"Ship gate against {before}, on the validation split: {gate['summary']}")
        else:  # recorded by the gate before issue 27, which asked for more than this
            st.caption(f"Shipped because it beat {before} on the validation split in the AUC "
                       "of P(COVID) and all three map figures, sending home few enough of its "
                       "other pneumonias.")


def threshold_ui(meta: ModelMetadata) -> float:
    """The live operating-point slider; the value becomes this session's choice."""
    state.start_threshold_widget(meta)
    threshold = st.slider(
        f"Threshold on calibrated {finding_name(meta.class_names)}", min_value=0.0,
        max_value=1.0, step=0.001, format="%.3f", key=state.THRESHOLD_WIDGET,
        help="A study is admitted, labelled with its likelier finding, when its calibrated "
        "probability of any finding is at least the threshold. Applies to the screening "
        "page, for this browser session only.",
    )
    return state.follow_threshold_widget(meta, threshold)


def _metric_ui(column, title: str, value: float | None, reference: float | None,
               lower_is_better: bool = False) -> None:
    """One rate, with its change from the shipped point (none shown when it rounds to none)."""
    delta, same = change_from(value, reference)
    column.metric(title, fmt(value, "{:.1%}"), delta=delta, border=True,
                  delta_color="off" if same else "inverse" if lower_is_better else "normal",
                  delta_arrow="off" if same else "auto")


POINT_FIGURES = (("admitted_findings", "sensitivity"), ("specificity", "specificity"),
                 ("ppv", "ppv"), ("npv", "npv"))
"""The live point's figures: each one's name (:func:`figure_name`), then its key in
:func:`covid.evaluation.metrics.operating_point`, whose positive class is any finding."""


def metrics_ui(point: dict[str, Any], shipped: dict[str, Any] | None) -> None:
    """Findings admitted, specificity, PPV and NPV, with the change from the shipped point."""
    for column, (name, key) in zip(st.columns(4), POINT_FIGURES, strict=True):
        _metric_ui(column, figure_name(name), point.get(key),
                   None if shipped is None else shipped.get(key))


def sent_home_ui(scores: ClassScores, threshold: float, shipped: float | None) -> None:
    """Each finding's share of films sent home at the point, beside the shipped point's."""
    rates = finding_rates(confusion_matrix_at(scores, threshold)).sent_home
    before = None if shipped is None else finding_rates(
        confusion_matrix_at(scores, shipped)).sent_home
    for column, (name, value) in zip(st.columns(4), rates.items(), strict=False):
        _metric_ui(column, f"{name} sent home", value,
                   None if before is None else before.get(name), lower_is_better=True)


def operating_point_ui(meta: ModelMetadata, evaluation: Evaluation) -> dict[str, Any] | None:
    """The live operating point on the stored test scores; returns its statistics."""
    st.header("Operating point", anchor=False)
    if evaluation.scores is None:
        st.info("The operating point cannot be explored without the per-image test scores.",
                icon=":material/info:")
        return None
    scores, truth = evaluation.scores
    sample = evaluation.test_prevalence
    slider_col, prevalence_col, buttons_col = st.columns([3, 1.2, 1.3], gap="medium",
                                                         vertical_alignment="bottom")
    with slider_col:
        threshold = threshold_ui(meta)
    with prevalence_col:
        prevalence = st.number_input(
            "Prevalence (%)", min_value=0.1, max_value=99.9, value=round(100 * sample, 1),
            step=0.5, format="%.1f", key=state.PREVALENCE_WIDGET, persist_state="session",
            help="Share of the screened population with the disease: PPV and NPV depend on "
            f"it. The test split's is {sample:.1%}.",
        )
    with buttons_col, st.container(horizontal=True):
        st.button("Reset", key="op_reset_model", on_click=state.reset_operating_point,
                  disabled=state.is_shipped(meta, threshold), icon=":material/restart_alt:",
                  help="Back to the shipped operating point.")
        if st.button("Screening", key="op_back", icon=":material/arrow_back:",
                     help="Back to the screening page, at this operating point."):
            go_to(SCREENING)
    point = operating_point(scores, truth, threshold, prevalence=prevalence / 100.0)
    shipped = None
    if not state.is_shipped(meta, threshold):
        shipped = operating_point(scores, truth, meta.threshold, prevalence=prevalence / 100.0)
    st.markdown(f"**In force on the screening page (this session):** "
                f"{operating_point_words(meta, threshold)}.")
    metrics_ui(point, shipped)
    sent_home_ui(evaluation.classes, threshold, None if shipped is None else meta.threshold)
    st.caption(
        f"On the held-out test split ({len(scores)} images; positive: any finding, negative: "
        f"{NORMAL}): TP {point['tp']} · FN {point['fn']} · FP {point['fp']} · TN "
        f"{point['tn']}. PPV and NPV at a prevalence of {prevalence:.1f}%."
    )
    trade_ui(meta, evaluation.classes, threshold)
    return point


def trade_ui(meta: ModelMetadata, scores: ClassScores, threshold: float) -> None:
    """What the operating point costs: normals labelled Normal against findings sent home."""
    st.subheader("What the operating point costs", anchor=False)
    marks = {"shipped": trade_curve(scores, [meta.threshold])}
    if not state.is_shipped(meta, threshold):
        marks["this session"] = trade_curve(scores, [threshold])
    st.pyplot(trade_figure(trade_curve(scores, trade_thresholds(scores)), marks),
              alt="Normal films labelled Normal, by age group, against the share of each "
              "finding sent home, as the threshold moves")
    shipped = marks["shipped"]
    kept = ", ".join(f"{group} {values[0]:.1%}" for group, values in shipped.specificity.items())
    lost = ", ".join(f"{name} {values[0]:.1%}" for name, values in shipped.sent_home.items())
    st.caption(
        f"Each point is one threshold on {finding_name(meta.class_names)}, on the test split: "
        "moving right sends more films with a finding home, moving up labels more normal "
        f"films Normal. At the shipped point (≥ {meta.threshold:.3f}) the normals labelled "
        f"Normal are {kept}; sent home: {lost}. The axis stops at 25% sent home."
    )


def _reliability(meta: ModelMetadata, summary: dict[str, Any], event: str):
    """The reliability diagram before and after temperature scaling."""
    curves = summary["curves"]
    temperature = float(summary.get("temperature", meta.temperature))
    return reliability_figure({
        "before scaling": curves["reliability_before"],
        f"after scaling (T = {temperature:.2f})": curves["reliability_after"],
    }, event)


def _json_error_ui(err: Exception) -> None:
    LOG.warning("evaluation JSON not as expected: %r", err)
    st.error(f"The evaluation JSON is not as expected ({err!r}); re-run the evaluation.",
             icon=":material/error:")


def _auc_words(name: str, auc: dict[str, Any] | None) -> str:
    """E.g. "COVID 0.981 (95% CI 0.970-0.990)", or "COVID n/a"."""
    if not auc:
        return f"{name} n/a"
    return f"{name} {auc['auc']:.3f} (95% CI {auc['ci95'][0]:.3f}-{auc['ci95'][1]:.3f})"


def confusion_ui(meta: ModelMetadata, scores: ClassScores, threshold: float) -> None:
    """Every true class against the label the rule gives at the point: chart and table."""
    confusion = confusion_matrix_at(scores, threshold)
    st.pyplot(confusion_figure(confusion.matrix, confusion.labels, confusion.true_names),
              alt="Confusion matrix of every class at the operating point")
    st.dataframe(confusion.columns(), hide_index=True, width="content")
    st.caption(f"At {finding_name(meta.class_names)} ≥ {threshold:.3f}, the likelier finding "
               "as the label; rows: truth, columns: label.")


def charts_ui(meta: ModelMetadata, evaluation: Evaluation, point: dict[str, Any] | None) -> None:
    """Per-class ROC, the class-by-class confusion matrix at the point, and reliability."""
    st.header("Test-split charts", anchor=False)
    summary, scores = evaluation.summary, evaluation.classes
    if summary is None:
        st.info("The ROC and reliability charts need the evaluation JSON.",
                icon=":material/info:")
        return
    try:
        aucs = summary["metrics"].get("auc_per_class") or {}
        finding, _, _ = finding_roc(summary)
        roc = class_roc_figure(summary["curves"]["roc_per_class"], aucs, finding,
                               roc_marker(point))
        reliability = _reliability(meta, summary, "any finding")
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        _json_error_ui(err)
        return
    roc_col, confusion_col, reliability_col = st.columns(3, gap="medium")
    with roc_col:
        st.pyplot(roc, alt="One-vs-rest ROC curve of each class on the test split")
        st.caption("One-vs-rest AUC: " + "; ".join(_auc_words(n, aucs.get(n))
                                                    for n in meta.class_names)
                   + f". Dashed: any finding against {NORMAL}; red dot: the operating point "
                   "in force.")
    with confusion_col:
        if scores is None or point is None:
            st.caption("The confusion matrix needs the per-image test scores.")
        else:
            confusion_ui(meta, scores, point["threshold"])
    with reliability_col:
        st.pyplot(reliability, alt="Reliability diagram before and after temperature scaling")
        st.caption("Observed rate of any finding against predicted P(any finding), before and "
                   "after temperature scaling (fitted on the validation split).")


GROUPS = (("by_source", "By source"), ("by_age", "By age group"))
"""The evaluation's group breakdowns (keys of its metrics) and their titles."""


def groups_ui(meta: ModelMetadata, evaluation: Evaluation) -> None:
    """The evaluation's figures per source and per age group, at the shipped point."""
    st.header("By source and age", anchor=False)
    metrics = (evaluation.summary or {}).get("metrics") or {}
    percent = st.column_config.NumberColumn(format="%.0f%%")
    for column, (key, title) in zip(st.columns(2, gap="large"), GROUPS, strict=True):
        with column:
            st.subheader(title, anchor=False)
            groups = metrics.get(key)
            if not isinstance(groups, dict) or not groups:
                st.info(f"The evaluation JSON holds no figures {title.lower()}.",
                        icon=":material/info:")
                continue
            rows = with_previous_sent_home(group_rows(groups, meta.class_names), metrics, key)
            rates = [k for k in rows[0] if k.endswith("sent home") or k.startswith("labelled ")]
            st.dataframe(by_column(rows, list(rows[0])), hide_index=True, width="content",
                         placeholder="", column_config=dict.fromkeys(rates, percent))
    threshold = (evaluation.summary or {}).get("threshold", meta.threshold)
    st.caption(f"Test split, at the evaluation's operating point ({finding_name(meta.class_names)}"
               f" ≥ {float(threshold):.3f}): the share of each group's films sent home, and "
               "labelled with each finding; where a previous model was compared, the share it "
               "sent home at its own operating point.")


def _localisation(meta: ModelMetadata, evaluation: Evaluation) -> dict[str, Any] | None:
    """The localisation figures: from the metadata, else from the evaluation JSON."""
    found = (meta.metrics or {}).get("localisation")
    if not isinstance(found, dict):
        found = ((evaluation.summary or {}).get("metrics") or {}).get("localisation")
    return found if isinstance(found, dict) else None


def lung_localisation_ui(meta: ModelMetadata, evaluation: Evaluation) -> None:
    """Where the evidence lies against the lungs: the figures, and the share per class."""
    st.header("Evidence inside the lungs", anchor=False)
    figures_col, share_col = st.columns(2, gap="large")
    with figures_col:
        st.subheader("Against radiologists' masks", anchor=False)
        loc = _localisation(meta, evaluation)
        rows = localisation_rows(loc)
        if not rows:
            st.info("Not measured yet for this model: how its Grad-CAM maps sit against "
                    "radiologists' lung and infection masks. Re-run "
                    "`python -m covid.evaluate` with the COVID-QU-Ex masks to "
                    "measure it.", icon=":material/info:")
        else:
            st.markdown(f"**{localisation_verdict(loc)}**")
            percent = st.column_config.NumberColumn(format="%.0f%%")
            st.dataframe(by_column(rows, list(rows[0])), hide_index=True,
                         width="content", placeholder="",
                         column_config={"model": percent, "constant map": percent,
                                        "uniform map": percent})
            n, infected = loc.get("n"), loc.get("n_with_infection")
            st.caption(
                f"{loc.get('split') or 'Test split'}: {n if n is not None else '?'} "
                f"{COVID} films"
                + (f" ({infected} with an infection mask)" if infected is not None else "")
                + f"; {loc.get('map') or 'Grad-CAM of ' + COVID}. The constant "
                "map is the same for every film (the average infection mask): it knows where "
                "infections usually are and nothing of the film. A uniform map spreads its "
                "evidence evenly: it scores the masks' share of the film. Another film's "
                "infection: the peak placed on each other film. The busiest sixteenth: the "
                "cell of a 4 x 4 grid over the film that holds the most peaks. Empty: not "
                "measured."
            )
    with share_col:
        st.subheader("Share per film, by class", anchor=False)
        groups = evaluation.lung_evidence
        if not groups:
            st.info("Not measured yet for this model: the per-image test scores hold no "
                    "`lung_evidence` column (the share of each film's evidence inside the "
                    "segmented lungs). Re-run `python -m covid.evaluate` with the "
                    "lung segmenter to measure it.", icon=":material/info:")
            return
        st.pyplot(lung_share_figure(groups, CAUTION_SHARE),
                  alt="Histograms of the share of each test film's evidence inside the lungs")
        percent = st.column_config.NumberColumn(format="%.0f%%")
        st.dataframe(
            by_column(lung_evidence_rows(groups, CAUTION_SHARE),
                      ("class", "films", "median", "mean", "below caution")),
            hide_index=True, width="content", placeholder="",
            column_config={"median": percent, "mean": percent, "below caution": percent},
        )
        st.caption(
            "The number the screening page shows beside each study: the share of the predicted "
            "class's Grad-CAM energy inside the segmented lung fields. Below "
            f"{CAUTION_SHARE:.0%} the page cautions the reader; the last column says how "
            "often that happens on the test split."
        )


def opacity_card_ui() -> None:
    """The opacity segmenter's post-processing and held-out figures, from its metadata."""
    from covid.model.opacity import OpacityModelMetadata

    st.subheader("Opacity segmenter", anchor=False)
    path = settings().opacity_model_path
    try:
        meta = read_metadata_as(OpacityModelMetadata, path)
    except ModelFileError as err:
        st.info(f"No opacity segmenter: the outline and extent grade are off ({err}).")
        return
    st.markdown(
        f"A separate U-Net ({meta.input_size} px over the lungs' box) outlines opacities "
        f"inside the lung fields; it never changes the Grad-CAM map. Trained on "
        f"{meta.trained_on}. A pixel is opacity above {meta.threshold:g}, and outlines "
        f"smaller than {meta.min_component:.1%} of the lungs are dropped (chosen on validation)."
    )
    rows = opacity_rows(meta.metrics)
    if not rows:
        st.info("Its metadata records no test figures.")
        return
    st.markdown(markdown_table(rows, ("test split, segmented as served", "value")))
    matrix = grade_confusion(meta.metrics)
    if matrix is not None:
        names = [str(score) for score in range(len(matrix))]
        st.pyplot(confusion_figure(matrix, names),
                  alt="The 0-8 opacity score of each test film: the radiologists' masks' "
                  "(rows) against the segmenter's (columns)")


def page() -> None:
    """The model page: model card, charts, live operating point and Grad-CAM check."""
    state.visit(MODEL)
    st.title("Model", anchor=False)
    disclaimer_ui()
    path = settings().model_path
    loaded = load_or_explain(path)
    if loaded is None:
        return
    meta = loaded[0].metadata
    model_card_section_ui(meta, loaded[0].map_cells)
    comparison_ui(meta)
    evaluation = read_evaluation(path, meta.class_names)
    if evaluation.problems:
        st.warning(
            "**Evaluation artefacts missing.** Beside the model "
            f"(`{path.parent}`):\n\n" + "\n".join(f"- {p}" for p in evaluation.problems)
            + "\n\n" + EVALUATE_HOWTO.format(model=path),
            icon=":material/folder_off:",
        )
    point = operating_point_ui(meta, evaluation)
    charts_ui(meta, evaluation, point)
    if evaluation.summary is not None:
        groups_ui(meta, evaluation)
    lung_localisation_ui(meta, evaluation)
    opacity_card_ui()
