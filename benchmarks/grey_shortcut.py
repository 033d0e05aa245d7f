"""How much of a film's class do its grey levels alone tell? ``python -m benchmarks.grey_shortcut``.

Usage::

    python -m benchmarks.grey_shortcut --split RUN/split.json [--per-class 700]

A shortcut detector for the data, not for a model (DeGrave et al. 2021): each film
becomes nine numbers that say nothing of where anything lies (its grey levels'
1st, 5th, 25th, 50th, 75th, 95th and 99th percentiles, mean and standard
deviation), and two scikit-learn classifiers learn the class from them on the
split's training films, then are scored on its validation films. What they reach
is what a network can reach by reading exposure and processing instead of the
lungs; denser lungs move these numbers too, so it is an upper bound on the
shortcut, not a measure of it. It prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from covid.evaluation.scoring import split_side
from covid.inputs.decode import read_image
from covid.model.classes import CLASS_NAMES, COVID, NORMAL, index_of

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
"""The grey-level percentiles each film is reduced to, beside its mean and spread."""


def grey_features(pixels: np.ndarray) -> np.ndarray:
    """(9,) the film's grey-level percentiles (:data:`PERCENTILES`), mean and standard deviation."""
    values = pixels.astype(np.float32)
    return np.r_[np.percentile(values, PERCENTILES), values.mean(), values.std()]


def _sample(record: dict, side: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    films = split_side(record, side)
    labels = np.asarray(films.labels)
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class]
                             for k in range(len(CLASS_NAMES))])
    features = np.stack([grey_features(read_image(films.paths[i]).pixels) for i in picked])
    return features, labels[picked]


def main(argv: list[str] | None = None) -> None:
    """Prints the validation AUCs the grey-level statistics reach."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grey_shortcut",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="a trainer's split.json")
    parser.add_argument("--per-class", type=int, default=700,
                        help="training films per class (validation: all, up to 200 a class)")
    args = parser.parse_args(argv)
    record = json.loads(args.split.read_text())
    train_x, train_y = _sample(record, "train", args.per_class)
    val_x, val_y = _sample(record, "val", 200)
    covid, normal = index_of(CLASS_NAMES, COVID), index_of(CLASS_NAMES, NORMAL)
    pair_train, pair_val = np.isin(train_y, (covid, normal)), np.isin(val_y, (covid, normal))
    print(f"{len(train_y)} training and {len(val_y)} validation films; AUC on validation:")
    for name, make in (("logistic regression", lambda: LogisticRegression(max_iter=2000)),
                       ("gradient-boosted trees", HistGradientBoostingClassifier)):
        pair = make().fit(train_x[pair_train], train_y[pair_train] == covid)
        finding = make().fit(train_x, train_y != normal)
        auc_pair = roc_auc_score(val_y[pair_val] == covid,
                                 pair.predict_proba(val_x[pair_val])[:, 1])
        auc_finding = roc_auc_score(val_y != normal, finding.predict_proba(val_x)[:, 1])
        print(f"  {name}: COVID vs Normal {auc_pair:.3f}, any finding vs Normal {auc_finding:.3f}")


if __name__ == "__main__":
    main()
