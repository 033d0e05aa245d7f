from types import SimpleNamespace

import numpy as np

from covid.training.metrics import validation_record


def test_validation_record_counts_maps_with_nothing_to_show():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    cams = np.full((4, 2, 2, 3), -1.0)
    cams[0, 0, 0, 0] = 2.0  # film 0: its COVID map has one positive cell, in the lungs
    cams[3, 1, 1, 0] = 1.0  # film 3: positive outside the lungs
    cams[1, :, :, 0] = 5.0  # film 1 is labelled Other pneumonia, whose map is all negative
    shares = np.zeros((4, 2, 2, 2))
    shares[:, 0, 0, 0] = 1.0
    record = validation_record(probs, cams, shares, SimpleNamespace(labels=[0, 1, 2, 0]))
    assert record["val_maps_empty"] == 0.5  # films 1 and 2
    assert record["val_lung_share"] == 0.25  # film 0 all inside; the rest nothing inside
    assert record["val_peak_in_lungs"] == 0.25  # film 0's peak; film 3 peaks outside
