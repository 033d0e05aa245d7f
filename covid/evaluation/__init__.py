"""Evaluation: a trained model scored on its held-out films, the ship gate, and the results.

Between training and screening: it scores a model on a split and writes the figures,
curves and per-film scores that the model page reads (:mod:`~covid.evaluation.evaluate`,
:mod:`~covid.evaluation.results`, :mod:`~covid.evaluation.plots`), judges a candidate
against the shipped model and ships it (:mod:`~covid.evaluation.ship`), and fits the
shipped model's out-of-distribution statistics (:mod:`~covid.evaluation.ood_fit`).
Training never imports it.
"""
