"""The training batches' sampling: strata of (age, class) that leave no age prior."""

from pathlib import Path

import numpy as np
import pytest

from covid.training.catalogue import Catalogue
from covid.training.inputs import balanced_batches, sampling_weights

# (source, label, age, films): adults have all three classes, children no COVID,
# and COVID-QU-Ex's pneumonias are of mixed age.
FILMS = [("radiography-covid", 0, "adult", 5), ("radiography-normal", 2, "adult", 10),
         ("radiography-normal", 2, "child", 3), ("kermany-viral", 1, "child", 20),
         ("quex-non-covid", 1, "mixed", 4), ("quex-test-non-covid", 1, "mixed", 2)]


def _catalogue() -> Catalogue:
    names, labels, sources, ages = [], [], [], []
    for source, label, age, n in FILMS:
        for i in range(n):
            names.append(f"{source}/{age}-{i}.png")
            labels.append(label)
            sources.append(source)
            ages.append(age)
    return Catalogue(Path("."), tuple(names), np.asarray(labels), tuple(sources), tuple(ages))


def _mass(films: Catalogue, weights: np.ndarray, source: str, age: str) -> float:
    pick = [s == source and a == age for s, a in zip(films.sources, films.ages, strict=True)]
    return float(weights[np.asarray(pick)].sum())


def test_normal_takes_the_same_share_of_every_age_group():
    films = _catalogue()
    weights = sampling_weights(films, adult_share=0.6)
    assert weights.sum() == pytest.approx(1.0)
    adult_normal = _mass(films, weights, "radiography-normal", "adult")
    child_normal = _mass(films, weights, "radiography-normal", "child")
    assert adult_normal / 0.6 == pytest.approx(1 / 3)  # P(Normal | adult)
    assert child_normal / 0.4 == pytest.approx(1 / 3)  # P(Normal | child)
    assert _mass(films, weights, "radiography-covid", "adult") == pytest.approx(0.6 / 3)
    # children's pneumonia stratum: two thirds of 0.4, over its 26 films (20 theirs, 6 mixed)
    assert _mass(films, weights, "kermany-viral", "child") == pytest.approx(0.4 * 2 / 3 * 20 / 26)
    # mixed-age pneumonias serve both age groups' pneumonia strata (the adults' alone)
    mixed = (_mass(films, weights, "quex-non-covid", "mixed")
             + _mass(films, weights, "quex-test-non-covid", "mixed"))
    assert mixed == pytest.approx(0.6 / 3 + 0.4 * 2 / 3 * 6 / 26)
    # within a stratum every film alike
    kermany = weights[np.asarray(films.sources) == "kermany-viral"]
    assert np.allclose(kermany, kermany[0])


def test_batches_follow_the_weights():
    films = _catalogue()
    weights = sampling_weights(films)
    stack = np.arange(len(films.names), dtype=np.uint8)[:, None, None, None]
    drawn = np.concatenate([b[:, 0, 0, 0] for b, _ in balanced_batches(
        stack, films.labels, weights, batch_size=64, steps=300, seed=0)])
    seen = np.bincount(drawn, minlength=len(films.names)) / len(drawn)
    normal_child = np.asarray([a == "child" and y == 2
                               for a, y in zip(films.ages, films.labels, strict=True)])
    assert seen[normal_child].sum() == pytest.approx(1 / 3 * (1 / 3), abs=0.01)
    assert np.abs(seen - weights).max() < 0.01


def test_one_age_group_alone_takes_every_draw():
    films = _catalogue()
    adults = films.subset(np.flatnonzero(np.asarray(films.ages) != "child"))
    weights = sampling_weights(adults)
    normal = weights[adults.labels == 2].sum()
    assert normal == pytest.approx(1 / 3) and weights.sum() == pytest.approx(1.0)
