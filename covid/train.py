"""``python -m covid.train``: picks the fastest Keras backend, then trains the classifier.

See :mod:`covid.training.train` for the options, and :mod:`covid.training.backend`
for how the backend and precision are chosen (``--backend auto``, the default).
"""

from covid.training.backend import run_trainer

if __name__ == "__main__":
    run_trainer("covid.train", "covid.training.train", "resnet50", 160)
