"""Evaluation charts as matplotlib figures (the CLI saves them, the page shows them).

Built with the object-oriented API (``Figure``), so no global backend or pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure

from covid.model.classes import NORMAL


class TradeLike(Protocol):
    """A trade curve: :class:`covid.evaluation.results.TradeCurve`.

    A protocol rather than an import: that module imports this module's caller.
    """

    thresholds: np.ndarray
    specificity: Mapping[str, np.ndarray]
    sent_home: Mapping[str, np.ndarray]


def _finish_roc(fig: Figure, ax, operating: tuple[float, float] | None, title: str,
                fontsize: int) -> Figure:
    """The operating point, axes, title and legend every ROC chart shares."""
    if operating is not None:
        ax.plot(*operating, "o", color="tab:red", label="operating point")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=fontsize)
    fig.tight_layout()
    return fig


def roc_figure(
    roc: dict[str, list[float]],
    auc: float,
    ci: tuple[float, float],
    operating: tuple[float, float] | None = None,
) -> Figure:
    """The ROC curve with its AUC, CI and (optionally) the operating point.

    Args:
        roc: ``{"fpr", "tpr"}`` lists.
        auc: Area under the curve.
        ci: (lower, upper) bounds of its confidence interval.
        operating: (1 - specificity, sensitivity) of the operating point.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue",
            label=f"AUC {auc:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    return _finish_roc(fig, ax, operating, "ROC, test split", 8)


def reliability_figure(curves: dict[str, dict[str, list[float]]], event: str) -> Figure:
    """Reliability diagram: observed rate of an event against its predicted probability.

    Args:
        curves: Named curves, each ``{"predicted", "observed"}`` (e.g. before
            and after temperature scaling).
        event: What is predicted (``any finding``).

    Returns:
        The figure.
    """
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    for name, curve in curves.items():
        ax.plot(curve["predicted"], curve["observed"], marker="o", label=name)
    ax.set(xlabel=f"predicted P({event})", ylabel=f"observed {event} rate",
           title="Reliability, test split", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str],
                     true_names: Sequence[str] | None = None) -> Figure:
    """A confusion matrix with counts (rows: truth, columns: prediction).

    Args:
        matrix: (R, C) counts.
        class_names: The C predicted class names.
        true_names: The R true class names (None: ``class_names``).

    Returns:
        The figure.
    """
    rows = list(class_names if true_names is None else true_names)
    many = max(len(rows), len(class_names)) > 2
    fig = Figure(figsize=(4.4, 3.9) if many else (3.6, 3.2))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=color)
    ax.set_xticks(range(len(class_names)), list(class_names), rotation=20 if many else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion, test split")
    fig.tight_layout()
    return fig


def class_roc_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    aucs: Mapping[str, Any],
    finding: Mapping[str, Sequence[float]] | None = None,
    operating: tuple[float, float] | None = None,
) -> Figure:
    """One-vs-rest ROC curves, one per class, with the operating point on P(any finding).

    Args:
        curves: Per class, ``{"fpr", "tpr"}`` (K,) sequences.
        aucs: Per class, ``{"auc", "ci95"}`` or None (a class without one shows none).
        finding: The ROC of P(any finding) against Normal, drawn dashed, or None.
        operating: (1 - specificity, sensitivity) of the operating point on
            ``finding``, or None.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, curve in curves.items():
        auc = (aucs.get(name) or {}).get("auc")
        ax.plot(curve["fpr"], curve["tpr"],
                label=name if auc is None else f"{name} vs rest, AUC {auc:.3f}")
    if finding is not None:
        ax.plot(finding["fpr"], finding["tpr"], color="black", linestyle="--", linewidth=1,
                label=f"any finding vs {NORMAL}")
    return _finish_roc(fig, ax, operating, "ROC per class, test split", 7)


def lung_share_figure(groups: dict[str, np.ndarray], caution: float = 0.5) -> Figure:
    """Histograms of the share of each film's evidence inside the lungs, one per class.

    Args:
        groups: Per true class, (N,) shares in [0, 1].
        caution: The share below which the page cautions the reader (a dashed line).

    Returns:
        The figure.
    """
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 21)
    for name, values in groups.items():
        values = np.asarray(values, dtype=np.float64)
        weights = np.full(len(values), 100.0 / max(len(values), 1))
        ax.hist(values, bins=bins, weights=weights, histtype="stepfilled", alpha=0.45,
                label=f"true {name} (n = {len(values)})")
    ax.axvline(caution, color="black", linestyle="--", linewidth=1,
               label=f"caution below {caution:.0%}")
    ax.set(xlabel="share of the Grad-CAM energy inside the lungs",
           ylabel="% of the class's films", title="Evidence inside the lungs, test split",
           xlim=(0, 1))
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def trade_figure(curve: TradeLike, marks: Mapping[str, TradeLike], max_home: float = 0.25
                 ) -> Figure:
    """Specificity against the share of each finding sent home, as the threshold moves.

    One panel per finding: its share sent home across, and the share of Normal
    films labelled Normal up (the first group, all normals, dashed; then each age
    group), each point one threshold. A reader sees what sending fewer findings
    home costs the normals.

    Args:
        curve: :func:`covid.evaluation.results.trade_curve` over many thresholds.
        marks: Named operating points to mark (e.g. ``"shipped"``), each a curve at
            one threshold; the first is drawn in red.
        max_home: The right end of the share-sent-home axis.

    Returns:
        The figure.
    """
    findings = list(curve.sent_home)
    fig = Figure(figsize=(4.2 * max(len(findings), 1), 3.9))
    axes = np.atleast_1d(fig.subplots(1, max(len(findings), 1), sharey=True))
    colours = dict(zip(curve.specificity, ("black", "tab:blue", "tab:orange", "tab:green",
                                           "tab:purple"), strict=False))
    for ax, finding in zip(axes, findings, strict=False):
        home = curve.sent_home[finding]
        # the age groups first, so that the dashed overall curve stays visible over them
        for k, (group, specificity) in reversed(list(enumerate(curve.specificity.items()))):
            ax.plot(home, specificity, color=colours.get(group, "grey"), zorder=2 + (k == 0),
                    linestyle="--" if k == 0 else "-", label=f"{group} normals")
        for (name, mark), colour in zip(marks.items(), ("tab:red", "tab:olive"), strict=False):
            threshold = float(mark.thresholds[0])
            for k, (group, specificity) in enumerate(mark.specificity.items()):
                ax.plot(mark.sent_home[finding][0], specificity[0], "o", color=colour,
                        markeredgecolor=colours.get(group, "grey"),
                        label=f"{name} (≥ {threshold:.3f})" if k == 0 else None)
        ax.set(xlabel=f"{finding} films sent home", xlim=(0, max_home), ylim=(0, 1.01),
               title=finding)
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{NORMAL} films labelled {NORMAL}")
    axes[0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
