"""Training's own figures: what each epoch's validation pass records.

The figures of a finished model (AUCs with their intervals, the operating point,
the screening figures) belong to the evaluation stage (:mod:`covid.evaluation.metrics`):
training never imports it, so that a run resumed later imports only training and the
stages below.
"""

from __future__ import annotations

import numpy as np

from covid.model.classes import CLASS_NAMES, COVID, NORMAL, OTHER_PNEUMONIA, index_of


def validation_record(probs: np.ndarray, cams: np.ndarray, shares: np.ndarray,
                      films) -> dict[str, float]:
    """One epoch's validation figures for a three-class model (COVID, Other pneumonia, Normal).

    Args:
        probs: (N, 3) probabilities, in :data:`covid.model.classes.CLASS_NAMES` order.
        cams: (N, h, w, 3) class activation maps.
        shares: (N, h, w, 2) lung and infection share of each map cell.
        films: The validation films (``labels`` (N,) class indices).

    Returns:
        AUC of COVID against the rest and of any finding against normal, the share
        of other pneumonias and of COVID films whose likeliest class is Normal
        ("sent home"), the share of normal films whose likeliest class is Normal,
        the mean share of the likeliest class's map inside the lungs, the share of
        films whose likeliest class's map peaks in a cell that is mostly lung, and the share
        of films whose likeliest class's map has no positive cell.
    """
    from sklearn.metrics import roc_auc_score

    from covid.training.guided import peak_inside_cells, share_inside

    covid, pneumonia, normal_index = (index_of(CLASS_NAMES, n)
                                      for n in (COVID, OTHER_PNEUMONIA, NORMAL))
    labels = np.asarray(films.labels)
    predicted = probs.argmax(axis=1)
    normal = labels == normal_index

    def _home(label: int) -> float:
        chosen = labels == label
        return float((predicted[chosen] == normal_index).mean()) if chosen.any() else float("nan")

    return {
        "val_auc_covid": float(roc_auc_score(labels == covid, probs[:, covid])),
        "val_auc_finding": float(roc_auc_score(~normal, 1.0 - probs[:, normal_index])),
        "val_pneumonia_home": _home(pneumonia),
        "val_covid_home": _home(covid),
        "val_normal_home": _home(normal_index),
        "val_lung_share": float(share_inside(cams, shares, predicted).mean()),
        "val_peak_in_lungs": float(peak_inside_cells(cams, shares, predicted).mean()),
        # A map with no positive cell leaves Grad-CAM nothing to show (and scores 0 above).
        "val_maps_empty": float((cams[np.arange(len(predicted)), ..., predicted].max(
            axis=(1, 2)) <= 0).mean()),
    }
